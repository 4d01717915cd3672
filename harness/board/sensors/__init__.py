"""Power and energy sensors on the device, and the sampler that turns them into energy per inference.

Part of the board package (shipped to the device with the runner): standard library (3.8+: JetPack 5 ships 3.8)
and numpy only. One module per family of hardware; this one picks the sensor a device has (:func:`detect`) and
re-exports the names the runner, the host's log tools and the tests use.

Every backend reads one kind of hardware and says what it measured: ``method``, ``rails``, ``total_rail`` (the rail
that counts as the whole device, or ``"sum"``), ``max_rate_hz``, ``update_period_s`` and ``calibration``. Sysfs
backends take a ``root`` (default ``"/"``) so tests can point them at a fake tree; command backends take the command
(an argv list, or a callable returning the text) for the same reason.

Nothing here estimates: with no sensor, or one that cannot be read, the result is ``"unavailable: <reason>"``.

Units: watts (W) and joules (J) in readings, mJ per inference in results; times are ``time.perf_counter()`` seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from .android import AndroidBattery
from .base import (DEFAULT_RATE_HZ, INPUT_RAILS, NO_SENSOR, Calibration, Command, PowerSensor, Reading,
                   SensorUnavailable)
from .jetson import TEGRA_NO_TEMP_C, TEGRASTATS_COMMAND, JetsonHwmon, JetsonIio, Tegrastats, parse_tegrastats_line
from .meter import MeterCommand
from .pi import PI5_CALIBRATION, PMIC_COMMAND, PiPmic, parse_pmic_adc
from .rapl import Rapl, counter_delta
from .sampling import (MIN_SAMPLES, MIN_UPDATES, Sampler, counter_energy, integrate_power, measure_energy,
                       unavailable)

__all__ = [
    "AndroidBattery", "Calibration", "Command", "DEFAULT_RATE_HZ", "INPUT_RAILS", "JetsonHwmon", "JetsonIio",
    "MIN_SAMPLES", "MIN_UPDATES", "MeterCommand", "NO_SENSOR", "PI5_CALIBRATION", "PMIC_COMMAND", "PiPmic",
    "PowerSensor", "Rapl", "Reading", "Sampler", "SensorUnavailable", "TEGRASTATS_COMMAND", "TEGRA_NO_TEMP_C",
    "Tegrastats", "counter_delta", "counter_energy", "detect", "integrate_power", "measure_energy",
    "parse_pmic_adc", "parse_tegrastats_line", "unavailable",
]


def _board_model(root: Path) -> str:
    try:
        return (root / "proc/device-tree/model").read_text().rstrip("\x00\n ")
    except OSError:
        return ""


def detect(root: str = "/", *, meter_command: Union[str, Command, None] = None,
           pmic_command: Command = PMIC_COMMAND,
           tegrastats_command: Sequence[str] = TEGRASTATS_COMMAND) -> Tuple[Optional[PowerSensor], str]:
    """The best power sensor this device has: ``(sensor, "")``, or ``(None, reason)``.

    Order: the user's meter command (asked for explicitly, so its failure is the answer, not a fallback), Jetson
    INA3221 hwmon, Jetson INA3221 IIO, tegrastats (Jetson without readable sysfs), Pi 5 PMIC, Android battery,
    RAPL. The reason is ``"no power sensor"`` when nothing is there, else why each sensor found cannot be used.
    """
    if meter_command is not None:
        try:
            return MeterCommand(meter_command), ""
        except SensorUnavailable as err:
            return None, f"external meter: {err}"
    base = Path(root)
    model = _board_model(base)
    candidates = [
        ((base / "sys/bus/i2c/drivers/ina3221").is_dir(), "INA3221 hwmon", lambda: JetsonHwmon(root)),
        ((base / "sys/bus/i2c/drivers/ina3221x").is_dir(), "INA3221 IIO", lambda: JetsonIio(root)),
        ((base / "etc/nv_tegra_release").exists(), "tegrastats", lambda: Tegrastats(tegrastats_command)),
        (model.startswith("Raspberry Pi 5"), "Pi 5 PMIC", lambda: PiPmic(pmic_command)),
        ((base / "sys/class/power_supply/battery/current_now").exists(), "Android battery",
         lambda: AndroidBattery(root)),
        (any((base / "sys/class/powercap").glob("intel-rapl:*")), "RAPL", lambda: Rapl(root)),
    ]
    problems = []
    for present, name, make in candidates:
        if present:
            try:
                return make(), ""
            except SensorUnavailable as err:
                problems.append(f"{name}: {err}")
    if problems:
        return None, "; ".join(problems)
    if model.startswith("Raspberry Pi"):
        return None, f"{NO_SENSOR} ({model} has none: measure with an external meter, [measure].meter_command)"
    return None, NO_SENSOR
