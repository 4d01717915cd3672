"""Linux RAPL: the package energy counters of the powercap interface (cumulative µJ, wrapping)."""

from __future__ import annotations

import time
from pathlib import Path

from .base import PowerSensor, Reading, SensorUnavailable, read_int, read_sysfs


def counter_delta(e0: int, e1: int, max_range: int) -> int:
    """Increase of a cumulative counter that wraps to 0 after ``max_range``, between two reads (at most one wrap)."""
    return e1 - e0 if e1 >= e0 else e1 + max_range - e0


class Rapl(PowerSensor):
    """Linux RAPL package energy: ``/sys/class/powercap/intel-rapl:<N>/energy_uj``, cumulative µJ that wraps at
    ``max_energy_range_uj``. One rail per package (sub-zones such as core and dram are inside it); total = sum.

    Reads must come at least once per wrap period (minutes at hundreds of watts); the sampler reads far faster.
    """

    method = "linux-rapl"
    counter = True
    max_rate_hz = 100.0

    def __init__(self, root: str = "/"):
        super().__init__()
        base = Path(root, "sys/class/powercap")
        zones = [z for z in sorted(base.glob("intel-rapl:*")) if z.name.count(":") == 1]
        if not zones:
            raise SensorUnavailable(f"no RAPL zones under {base}")
        self._zones = []  # (name, energy file, max range µJ)
        for zone in zones:
            name = read_sysfs(zone / "name") if (zone / "name").exists() else zone.name
            self._zones.append((name, zone / "energy_uj", read_int(zone / "max_energy_range_uj")))
        try:
            self._last = [read_int(path) for _, path, _ in self._zones]
        except SensorUnavailable as err:
            raise SensorUnavailable(
                f"{err} (RAPL is root-only since Linux 5.10: run as root, or `sudo chmod a+r "
                f"{base}/intel-rapl:*/energy_uj`)") from None
        self._total_uj = [0] * len(self._zones)
        self.rails = tuple(z[0] for z in self._zones)
        self.total_rail = self.rails[0] if len(self.rails) == 1 else "sum"
        self.update_period_s = 0.001  # RAPL counters update about every millisecond
        self.detail = {"zones": [str(z[1].parent) for z in self._zones]}

    def read(self) -> Reading:
        start = time.perf_counter()
        for i, (_, path, max_range) in enumerate(self._zones):
            now = read_int(path)
            self._total_uj[i] += counter_delta(self._last[i], now, max_range)
            self._last[i] = now
        rails = {z[0]: uj / 1e6 for z, uj in zip(self._zones, self._total_uj)}
        return Reading((start + time.perf_counter()) / 2, energy_j=sum(rails.values()), rails_j=rails)
