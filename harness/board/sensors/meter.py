"""An external power meter: any command that prints watts."""

from __future__ import annotations

import re
import shlex
import time
from typing import Union

from .base import Command, PowerSensor, Reading, SensorUnavailable, command_name, run_command

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class MeterCommand(PowerSensor):
    """A user's command that prints the device's power in watts (the first number it prints), e.g. a USB meter
    read over Bluetooth. The only energy source for boards without a sensor (Pi 4), and the only one that sees the
    carrier board; its update rate is judged from the readings.
    """

    method = "external-meter"

    def __init__(self, command: Union[str, Command], max_rate_hz: float = 10.0):
        super().__init__()
        self._command = shlex.split(command) if isinstance(command, str) else command
        self.max_rate_hz = max_rate_hz
        self.rails = ("meter",)
        self.total_rail = "meter"
        self.detail = {"command": command_name(self._command)}
        self.read()

    def read(self) -> Reading:
        start = time.perf_counter()
        text = run_command(self._command)
        taken = (start + time.perf_counter()) / 2
        match = _NUMBER.search(text)
        if not match:
            raise SensorUnavailable(f"meter command `{command_name(self._command)}` printed no number: {text[:80]!r}")
        watts = float(match.group())
        return Reading(taken, watts, {"meter": watts})
