"""Jetson power: the INA3221 through hwmon (JetPack 5+) or NVIDIA's IIO driver (JetPack 4), and tegrastats."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from .base import PowerSensor, Reading, SensorUnavailable, pick_total_rail, read_int, read_sysfs, total_of

TEGRASTATS_COMMAND = ("tegrastats",)


class JetsonHwmon(PowerSensor):
    """Jetson INA3221 through the upstream hwmon driver (JetPack 5+).

    Per channel ``in<N>_input`` (bus voltage, mV) and ``curr<N>_input`` (mA): P = mV × mA / 1000 mW. Channels
    labelled ``NC`` and ``in7`` (the sum of shunt voltages, not a rail) are skipped. ``update_interval`` (ms), when
    the driver exposes it, is the conversion time, i.e. how often the values change.
    """

    method = "jetson-ina3221-hwmon"
    max_rate_hz = 200.0  # each file read is an I2C transaction; polling faster mostly measures the polling

    def __init__(self, root: str = "/"):
        super().__init__()
        base = Path(root, "sys/bus/i2c/drivers/ina3221")
        self._channels = []  # (rail, voltage file, current file)
        periods = []
        for hwmon in sorted(base.glob("*/hwmon/hwmon*")):
            for label_file in sorted(hwmon.glob("in*_label")):
                channel = label_file.name[len("in"):-len("_label")]
                if channel == "7":
                    continue
                label = read_sysfs(label_file)
                voltage, current = hwmon / f"in{channel}_input", hwmon / f"curr{channel}_input"
                if label == "NC" or not current.exists():
                    continue
                if label in (c[0] for c in self._channels):  # the same label on two chips must not merge
                    label = f"{label}@{hwmon.parent.parent.name}"
                self._channels.append((label, voltage, current))
            if (hwmon / "update_interval").exists():
                periods.append(read_int(hwmon / "update_interval") / 1000.0)
        if not self._channels:
            raise SensorUnavailable(f"no INA3221 hwmon channels under {base}")
        self.rails = tuple(c[0] for c in self._channels)
        self.total_rail = pick_total_rail(self.rails)
        self.update_period_s = max(periods) if periods else None
        self.detail = {"hwmon": sorted({str(c[1].parent) for c in self._channels})}
        self.read()

    def read(self) -> Reading:
        start = time.perf_counter()
        rails = {label: read_int(v) * read_int(c) / 1e6 for label, v, c in self._channels}  # mV × mA = µW
        return Reading((start + time.perf_counter()) / 2, total_of(rails, self.total_rail), rails)


class JetsonIio(PowerSensor):
    """Jetson INA3221 through NVIDIA's IIO driver ``ina3221x`` (JetPack 4): ``in_power<c>_input`` in mW."""

    method = "jetson-ina3221-iio"
    max_rate_hz = 200.0  # as for hwmon: I2C reads

    def __init__(self, root: str = "/"):
        super().__init__()
        base = Path(root, "sys/bus/i2c/drivers/ina3221x")
        self._channels = []  # (rail, power file)
        for device in sorted(base.glob("*/iio:device*")):
            for name_file in sorted(device.glob("rail_name_*")):
                label = read_sysfs(name_file)
                power = device / f"in_power{name_file.name[len('rail_name_'):]}_input"
                if label == "NC" or not power.exists():
                    continue
                if label in (c[0] for c in self._channels):
                    label = f"{label}@{device.parent.name}"
                self._channels.append((label, power))
        if not self._channels:
            raise SensorUnavailable(f"no INA3221 IIO rails under {base}")
        self.rails = tuple(c[0] for c in self._channels)
        self.total_rail = pick_total_rail(self.rails)
        self.detail = {"iio": sorted({str(c[1].parent) for c in self._channels})}
        self.read()

    def read(self) -> Reading:
        start = time.perf_counter()
        rails = {label: read_int(p) / 1000.0 for label, p in self._channels}
        return Reading((start + time.perf_counter()) / 2, total_of(rails, self.total_rail), rails)


_TEGRA_TIME = re.compile(r"^(\d\d)-(\d\d)-(\d{4}) (\d\d):(\d\d):(\d\d)\b")
_TEGRA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# "3140/3208" (JetPack 4), "17946mW/15710mW" (5/6), "5139mW/5139mW/5139mW" (7): the first value is instantaneous
_TEGRA_RAIL = re.compile(r"^(\d+)(?:mW)?(?:/\d+(?:mW)?){1,2}$")
_TEGRA_TEMP = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?:/-?\d+(?:\.\d+)?C)?$")
_TEGRA_CPU = re.compile(r"(?:^|\s)CPU \[([^\]]*)\]")
_TEGRA_CORE = re.compile(r"^(\d+)%(?:@(\d+))?$")
_TEGRA_GPU = re.compile(r"(?:^|\s)GR3D_FREQ (\d+)%")
#: tegrastats prints this for a temperature sensor that is not there.
TEGRA_NO_TEMP_C = -256.0


def parse_tegrastats_line(line: str) -> dict:
    """One tegrastats line (JetPack 4, 5/6 or 7) as data.

    Returns ``timestamp`` (ISO ``YYYY-MM-DDTHH:MM:SS``; None on JetPack 4, which prints none), ``rails_mw``
    (instantaneous mW per rail; ``NC`` channels skipped), ``total_mw`` and ``total_rail`` (None when the line has
    no rails), ``temps_c`` (°C; ``-256C`` = absent sensor, dropped), ``cpu_load_pct`` and ``cpu_freq_mhz`` (one
    entry per core, None for a core that is ``off``) and ``gpu_load_pct``.
    """
    line = line.strip()
    stamp = _TEGRA_TIME.match(line)
    timestamp = None
    if stamp:
        month, day, year, hh, mm, ss = stamp.groups()
        timestamp = f"{year}-{month}-{day}T{hh}:{mm}:{ss}"
    tokens = line.split()
    rails = {}
    for name, value in zip(tokens, tokens[1:]):
        match = _TEGRA_RAIL.match(value)
        if match and name != "NC" and _TEGRA_NAME.match(name):
            rails[name] = int(match.group(1))
    temps = {}
    for token in tokens:
        match = _TEGRA_TEMP.match(token)
        if match and float(match.group(2)) != TEGRA_NO_TEMP_C:
            temps[match.group(1)] = float(match.group(2))
    loads, freqs = [], []
    cpu = _TEGRA_CPU.search(line)
    if cpu:
        for core in cpu.group(1).split(","):
            match = _TEGRA_CORE.match(core.strip())  # anything else ("off") is a core without a load
            loads.append(int(match.group(1)) if match else None)
            freqs.append(int(match.group(2)) if match and match.group(2) else None)
    gpu = _TEGRA_GPU.search(line)
    total_rail = pick_total_rail(tuple(rails))
    return {
        "timestamp": timestamp,
        "rails_mw": rails,
        "total_mw": total_of(rails, total_rail) if rails else None,
        "total_rail": total_rail,
        "temps_c": temps,
        "cpu_load_pct": loads,
        "cpu_freq_mhz": freqs,
        "gpu_load_pct": int(gpu.group(1)) if gpu else None,
    }


class Tegrastats(PowerSensor):
    """Jetson power from a running ``tegrastats --interval MS`` (a stream: each line is one reading).

    A fallback for when the INA3221 sysfs files are not readable: tegrastats reads every subsystem each interval,
    which loads the CPU being measured, and its lines carry one-second timestamps, so readings are timed on arrival.
    """

    method = "jetson-tegrastats"
    paced = True
    max_rate_hz = 20.0  # (unverified) a 50 ms floor keeps tegrastats' own load small

    def __init__(self, command: Sequence[str] = TEGRASTATS_COMMAND):
        super().__init__()
        if shutil.which(command[0]) is None:
            raise SensorUnavailable(f"{command[0]}: command not found")
        self._command = list(command)
        self._proc: Optional[subprocess.Popen] = None
        self._stderr = None  # a file, not a pipe: an unread pipe that fills up would stall tegrastats

    def open(self, rate_hz: float) -> None:
        interval_ms = int(round(1000.0 / min(rate_hz, self.max_rate_hz)))
        argv = [*self._command, "--interval", str(interval_ms)]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        try:
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
        except OSError as err:
            self._stderr.close()
            raise SensorUnavailable(f"{argv[0]}: {err.strerror or err}") from None
        self.update_period_s = interval_ms / 1000.0
        self.detail = {"command": argv}

    def read(self) -> Reading:
        line = self._proc.stdout.readline()
        arrived = time.perf_counter()
        if not line:
            try:
                code = self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                raise SensorUnavailable("tegrastats closed its output") from None
            self._stderr.seek(0)
            raise SensorUnavailable(f"tegrastats exited with {code}: {self._stderr.read().strip()[-200:]}")
        parsed = parse_tegrastats_line(line)
        if parsed["total_mw"] is None:
            raise SensorUnavailable("tegrastats prints no power rails on this board (e.g. Jetson Nano 2GB has none)")
        self.rails, self.total_rail = tuple(parsed["rails_mw"]), parsed["total_rail"]
        rails = {name: mw / 1000.0 for name, mw in parsed["rails_mw"].items()}
        return Reading(arrived, parsed["total_mw"] / 1000.0, rails)

    def close(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._stderr.close()
        self._proc = None
