"""Raspberry Pi 5 power from the PMIC's ADCs (``vcgencmd pmic_read_adc``), with a published calibration."""

from __future__ import annotations

import re
import time
from typing import Optional

from .base import Calibration, Command, PowerSensor, Reading, SensorUnavailable, command_name, run_command

PMIC_COMMAND = ("vcgencmd", "pmic_read_adc")
#: Pi 5: the PMIC rails miss part of the board; one published fit against a USB-C meter. It is per setup.
PI5_CALIBRATION = Calibration(1.1451, 0.5879, "github.com/jfikar/RPi5-power (one setup, USB-C meter fit)")

_PMIC_LINE = re.compile(r"^\s*([A-Za-z0-9_]+)_([AV])\s+(?:current|volt)\(\d+\)=\s*([-+0-9.eE]+)[AV]\s*$")


def parse_pmic_adc(text: str) -> dict:
    """``vcgencmd pmic_read_adc`` output as data; channel numbers are not sequential, so rails pair by name.

    Returns ``rails_w`` (V × A per rail with both readings, W), ``rails_v``, ``rails_a``, ``total_raw_w`` (their
    sum, W: below the board's real draw, see :data:`PI5_CALIBRATION`) and ``unpaired`` (readings with no partner,
    e.g. ``EXT5V_V``, the USB-C input voltage, and ``BATT_V``).
    """
    amps, volts = {}, {}
    for line in text.splitlines():
        match = _PMIC_LINE.match(line)
        if match:
            (amps if match.group(2) == "A" else volts)[match.group(1)] = float(match.group(3))
    paired = [rail for rail in amps if rail in volts]
    rails_w = {rail: volts[rail] * amps[rail] for rail in paired}
    unpaired = {f"{rail}_A": value for rail, value in amps.items() if rail not in volts}
    unpaired.update({f"{rail}_V": value for rail, value in volts.items() if rail not in amps})
    return {
        "rails_w": rails_w,
        "rails_v": {rail: volts[rail] for rail in paired},
        "rails_a": {rail: amps[rail] for rail in paired},
        "total_raw_w": sum(rails_w.values()),
        "unpaired": unpaired,
    }


class PiPmic(PowerSensor):
    """Raspberry Pi 5 PMIC rails from ``vcgencmd pmic_read_adc``: total = Σ V·I (raw) plus a stored calibration."""

    method = "rpi5-pmic"
    max_rate_hz = 10.0  # about 10 vcgencmd calls per second at most

    def __init__(self, command: Command = PMIC_COMMAND, calibration: Optional[Calibration] = PI5_CALIBRATION):
        super().__init__()
        self._command = command
        self.calibration = calibration
        self.rails = tuple(self.read().rails_w)
        self.total_rail = "sum"
        self.detail = {"command": command_name(command)}

    def read(self) -> Reading:
        start = time.perf_counter()
        text = run_command(self._command)
        taken = (start + time.perf_counter()) / 2  # a call takes tens of ms; the middle is the best guess
        parsed = parse_pmic_adc(text)
        if not parsed["rails_w"]:
            raise SensorUnavailable("`vcgencmd pmic_read_adc` printed no rails (not a Pi 5, or firmware too old)")
        return Reading(taken, parsed["total_raw_w"], parsed["rails_w"])
