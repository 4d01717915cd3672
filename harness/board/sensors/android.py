"""Android phones: battery drain from the fuel gauge in sysfs."""

from __future__ import annotations

import time
from pathlib import Path

from .base import PowerSensor, Reading, SensorUnavailable, read_int, read_sysfs


class AndroidBattery(PowerSensor):
    """Android battery drain from ``/sys/class/power_supply/battery`` (``current_now``, ``voltage_now``, ``status``).

    Documented as µA (negative = discharging) and µV, but vendors differ. Units are decided once, from the first
    reading's magnitude; the sign that means "discharging" is the first reading's sign while ``status`` says
    ``Discharging``. Both choices and the raw first reading go into ``detail``. Any other status (Charging, Full,
    Not charging: a cable is in) is refused, at start and mid-run, because the battery then does not carry the load.
    Update rates vary from ~10 ms to tens of seconds, so the update period is judged from the readings.
    """

    method = "android-battery"
    max_rate_hz = 100.0

    #: An awake phone draws 10 mA to 10 A: ≥ 10000 can only be µA, below it only mA.
    UA_THRESHOLD = 10_000
    #: A phone battery sits at 2–6 V: µV and mV land in separate ranges.
    UV_RANGE, MV_RANGE = (2_000_000, 6_000_000), (2_000, 6_000)

    def __init__(self, root: str = "/"):
        super().__init__()
        self._dir = Path(root, "sys/class/power_supply/battery")
        status = self._status()
        current, voltage = read_int(self._dir / "current_now"), read_int(self._dir / "voltage_now")
        if current == 0:
            raise SensorUnavailable(f"{self._dir}/current_now reads 0 while Discharging: the driver reports no current")
        if self.UV_RANGE[0] <= voltage <= self.UV_RANGE[1]:
            self._v_scale, v_unit = 1e-6, "uV"
        elif self.MV_RANGE[0] <= voltage <= self.MV_RANGE[1]:
            self._v_scale, v_unit = 1e-3, "mV"
        else:
            raise SensorUnavailable(f"{self._dir}/voltage_now={voltage} is neither µV nor mV of a 2-6 V battery")
        if abs(current) >= self.UA_THRESHOLD:
            self._i_scale, i_unit = 1e-6, "uA"
        else:
            self._i_scale, i_unit = 1e-3, "mA"
        # Power drawn = sign × I × V > 0 while discharging, whichever sign convention the vendor chose.
        self._sign = -1.0 if current < 0 else 1.0
        self.rails = ("battery",)
        self.total_rail = "battery"
        self.detail = {
            "current_unit": i_unit,
            "voltage_unit": v_unit,
            "discharging_current": "negative (as documented)" if current < 0 else "positive (vendor convention)",
            "first_raw": {"current_now": current, "voltage_now": voltage, "status": status},
        }

    def _status(self) -> str:
        status = read_sysfs(self._dir / "status")
        if status != "Discharging":
            raise SensorUnavailable(
                f"battery is {status}: the battery does not carry the load while a cable is in; unplug USB "
                "(adb over Wi-Fi, or Termux sshd on port 8022) or disable charging")
        return status

    def read(self) -> Reading:
        start = time.perf_counter()
        self._status()
        current, voltage = read_int(self._dir / "current_now"), read_int(self._dir / "voltage_now")
        watts = self._sign * current * self._i_scale * voltage * self._v_scale
        return Reading((start + time.perf_counter()) / 2, watts, {"battery": watts})
