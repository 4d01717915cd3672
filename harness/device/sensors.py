"""Power and energy sensors on the device, and the sampler that turns them into energy per inference.

Self-contained on purpose: copied to the board next to ``runner.py``, so it needs only the Python standard library
(3.8+: JetPack 5 ships 3.8) and numpy. It imports nothing from sparsebench.

Every backend reads one kind of hardware and says what it measured: ``method``, ``rails``, ``total_rail`` (the rail
that counts as the whole device, or ``"sum"``), ``max_rate_hz``, ``update_period_s`` and ``calibration``. Sysfs
backends take a ``root`` (default ``"/"``) so tests can point them at a fake tree; command backends take the command
(an argv list, or a callable returning the text) for the same reason.

Nothing here estimates: with no sensor, or one that cannot be read, the result is ``"unavailable: <reason>"``.

Units: watts (W) and joules (J) in readings, mJ per inference in results; times are ``time.perf_counter()`` seconds.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

#: A sensor command: an argv list, or (tests, embedding) a callable that returns what the command would print.
Command = Union[Sequence[str], Callable[[], str]]

NO_SENSOR = "no power sensor"
DEFAULT_RATE_HZ = 50.0
#: A window must span this many sensor updates: fewer, and one stale value at an edge is a large share of it.
MIN_UPDATES = 10
#: ... and hold this many of our samples, so the trapezoid has a shape to follow.
MIN_SAMPLES = 10
PMIC_COMMAND = ("vcgencmd", "pmic_read_adc")
TEGRASTATS_COMMAND = ("tegrastats",)
#: Rails that carry the whole module's input power, in order of preference; without one, total = sum of rails.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


class SensorUnavailable(Exception):
    """This sensor cannot measure here. ``str(err)`` is the reason, written for the user."""


@dataclass(frozen=True)
class Reading:
    """One reading of a sensor.

    ``t_s``: ``time.perf_counter()`` seconds when the value was taken (middle of the read for slow reads).
    Power sensors fill ``total_w`` (whole-device power per ``total_rail``, W) and ``rails_w`` (W per rail);
    energy counters fill ``energy_j`` and ``rails_j`` (cumulative J since the sensor was created, wrap-corrected).
    """

    t_s: float
    total_w: Optional[float] = None
    rails_w: dict = field(default_factory=dict)
    energy_j: Optional[float] = None
    rails_j: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Calibration:
    """A linear map from a sensor's raw total to a reference meter: ``P_cal = scale * P_raw + offset_w`` (W)."""

    scale: float
    offset_w: float
    source: str

    def apply(self, watts: float) -> float:
        return self.scale * watts + self.offset_w

    def as_dict(self) -> dict:
        return {"scale": self.scale, "offset_w": self.offset_w, "source": self.source}


#: Pi 5: the PMIC rails miss part of the board; one published fit against a USB-C meter. It is per setup.
PI5_CALIBRATION = Calibration(1.1451, 0.5879, "github.com/jfikar/RPi5-power (one setup, USB-C meter fit)")


class PowerSensor:
    """The interface every backend implements.

    A backend probes its hardware once in ``__init__`` and raises :class:`SensorUnavailable` there, so a sensor
    that exists but cannot be read is found before a run, not in the middle of one.
    """

    method = ""
    #: True: ``read()`` returns cumulative energy (``energy_j``), not instantaneous power.
    counter = False
    #: True: ``read()`` blocks until the sensor's next value (a stream), so the sampler must not sleep between reads.
    paced = False
    #: The fastest rate worth polling at (Hz); the sampler caps its rate here.
    max_rate_hz = 100.0

    def __init__(self) -> None:
        self.rails: Tuple[str, ...] = ()
        self.total_rail: Optional[str] = None
        #: How often the value itself changes (s); None: unknown, judged from the readings.
        self.update_period_s: Optional[float] = None
        self.calibration: Optional[Calibration] = None
        #: Backend-specific facts worth storing with the result (paths, units chosen, the command).
        self.detail: dict = {}

    def open(self, rate_hz: float) -> None:
        """Start the sensor (streams start their process here). Polled sensors need nothing."""

    def read(self) -> Reading:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what ``open`` started."""


# ---------------------------------------------------------------------------------------------------------------
# helpers

def _read_sysfs(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError:
        raise SensorUnavailable(f"{path}: permission denied") from None
    except OSError as err:
        raise SensorUnavailable(f"{path}: {err.strerror or err}") from None


def _read_int(path: Path) -> int:
    text = _read_sysfs(path)
    try:
        return int(text)
    except ValueError:
        raise SensorUnavailable(f"{path}: expected an integer, read {text!r}") from None


def _command_name(command: Command) -> str:
    return getattr(command, "__name__", "callable") if callable(command) else " ".join(command)


def _run(command: Command, timeout_s: float = 5.0) -> str:
    """What ``command`` prints on stdout; a missing, failing or hanging command is :class:`SensorUnavailable`."""
    if callable(command):
        return command()
    try:
        proc = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise SensorUnavailable(f"{command[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise SensorUnavailable(f"`{_command_name(command)}` took over {timeout_s:g} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-200:]
        raise SensorUnavailable(f"`{_command_name(command)}` exited with {proc.returncode}: {tail}")
    return proc.stdout


def _total_rail(rails: Sequence[str]) -> Optional[str]:
    """The input rail if the board has one; else ``"sum"`` (AGX Xavier / AGX Orin have no input rail)."""
    for name in INPUT_RAILS:
        if name in rails:
            return name
    return "sum" if rails else None


def _total(values: dict, total_rail: Optional[str]) -> float:
    return values[total_rail] if total_rail in values else sum(values.values())


# ---------------------------------------------------------------------------------------------------------------
# Jetson

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
                label = _read_sysfs(label_file)
                voltage, current = hwmon / f"in{channel}_input", hwmon / f"curr{channel}_input"
                if label == "NC" or not current.exists():
                    continue
                if label in (c[0] for c in self._channels):  # the same label on two chips must not merge
                    label = f"{label}@{hwmon.parent.parent.name}"
                self._channels.append((label, voltage, current))
            if (hwmon / "update_interval").exists():
                periods.append(_read_int(hwmon / "update_interval") / 1000.0)
        if not self._channels:
            raise SensorUnavailable(f"no INA3221 hwmon channels under {base}")
        self.rails = tuple(c[0] for c in self._channels)
        self.total_rail = _total_rail(self.rails)
        self.update_period_s = max(periods) if periods else None
        self.detail = {"hwmon": sorted({str(c[1].parent) for c in self._channels})}
        self.read()

    def read(self) -> Reading:
        start = time.perf_counter()
        rails = {label: _read_int(v) * _read_int(c) / 1e6 for label, v, c in self._channels}  # mV × mA = µW
        return Reading((start + time.perf_counter()) / 2, _total(rails, self.total_rail), rails)


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
                label = _read_sysfs(name_file)
                power = device / f"in_power{name_file.name[len('rail_name_'):]}_input"
                if label == "NC" or not power.exists():
                    continue
                if label in (c[0] for c in self._channels):
                    label = f"{label}@{device.parent.name}"
                self._channels.append((label, power))
        if not self._channels:
            raise SensorUnavailable(f"no INA3221 IIO rails under {base}")
        self.rails = tuple(c[0] for c in self._channels)
        self.total_rail = _total_rail(self.rails)
        self.detail = {"iio": sorted({str(c[1].parent) for c in self._channels})}
        self.read()

    def read(self) -> Reading:
        start = time.perf_counter()
        rails = {label: _read_int(p) / 1000.0 for label, p in self._channels}
        return Reading((start + time.perf_counter()) / 2, _total(rails, self.total_rail), rails)


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
    total_rail = _total_rail(tuple(rails))
    return {
        "timestamp": timestamp,
        "rails_mw": rails,
        "total_mw": _total(rails, total_rail) if rails else None,
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


# ---------------------------------------------------------------------------------------------------------------
# Raspberry Pi 5

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
        self.detail = {"command": _command_name(command)}

    def read(self) -> Reading:
        start = time.perf_counter()
        text = _run(self._command)
        taken = (start + time.perf_counter()) / 2  # a call takes tens of ms; the middle is the best guess
        parsed = parse_pmic_adc(text)
        if not parsed["rails_w"]:
            raise SensorUnavailable("`vcgencmd pmic_read_adc` printed no rails (not a Pi 5, or firmware too old)")
        return Reading(taken, parsed["total_raw_w"], parsed["rails_w"])


# ---------------------------------------------------------------------------------------------------------------
# Android

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
        current, voltage = _read_int(self._dir / "current_now"), _read_int(self._dir / "voltage_now")
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
        status = _read_sysfs(self._dir / "status")
        if status != "Discharging":
            raise SensorUnavailable(
                f"battery is {status}: the battery does not carry the load while a cable is in; unplug USB "
                "(adb over Wi-Fi, or Termux sshd on port 8022) or disable charging")
        return status

    def read(self) -> Reading:
        start = time.perf_counter()
        self._status()
        current, voltage = _read_int(self._dir / "current_now"), _read_int(self._dir / "voltage_now")
        watts = self._sign * current * self._i_scale * voltage * self._v_scale
        return Reading((start + time.perf_counter()) / 2, watts, {"battery": watts})


# ---------------------------------------------------------------------------------------------------------------
# Linux RAPL (an energy counter)

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
            name = _read_sysfs(zone / "name") if (zone / "name").exists() else zone.name
            self._zones.append((name, zone / "energy_uj", _read_int(zone / "max_energy_range_uj")))
        try:
            self._last = [_read_int(path) for _, path, _ in self._zones]
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
            now = _read_int(path)
            self._total_uj[i] += counter_delta(self._last[i], now, max_range)
            self._last[i] = now
        rails = {z[0]: uj / 1e6 for z, uj in zip(self._zones, self._total_uj)}
        return Reading((start + time.perf_counter()) / 2, energy_j=sum(rails.values()), rails_j=rails)


# ---------------------------------------------------------------------------------------------------------------
# External meter

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
        self.detail = {"command": _command_name(self._command)}
        self.read()

    def read(self) -> Reading:
        start = time.perf_counter()
        text = _run(self._command)
        taken = (start + time.perf_counter()) / 2
        match = _NUMBER.search(text)
        if not match:
            raise SensorUnavailable(f"meter command `{_command_name(self._command)}` printed no number: {text[:80]!r}")
        watts = float(match.group())
        return Reading(taken, watts, {"meter": watts})


# ---------------------------------------------------------------------------------------------------------------
# detection

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
        return None, f"{NO_SENSOR} ({model} has none: measure with an external meter command)"
    return None, NO_SENSOR


# ---------------------------------------------------------------------------------------------------------------
# integration

def integrate_power(t_s, power_w, start: float, end: float) -> float:
    """∫ power dt over [start, end] (J): trapezoid between readings, values at the bounds interpolated linearly
    (the first and last reading hold beyond the readings). ``t_s`` must increase."""
    t = np.asarray(t_s, dtype=float)
    p = np.asarray(power_w, dtype=float)
    knots = np.concatenate([[start], t[(t > start) & (t < end)], [end]])
    values = np.interp(knots, t, p)
    return float(np.sum((values[1:] + values[:-1]) / 2.0 * np.diff(knots)))


def counter_energy(t_s, energy_j, start: float, end: float) -> float:
    """Energy (J) between ``start`` and ``end`` from a cumulative (already unwrapped) counter: the difference of
    the counter interpolated at both bounds."""
    at = np.interp([start, end], np.asarray(t_s, dtype=float), np.asarray(energy_j, dtype=float))
    return float(at[1] - at[0])


# ---------------------------------------------------------------------------------------------------------------
# sampling

class Sampler:
    """Reads a sensor on a background thread at ``rate_hz`` (capped at the sensor's ``max_rate_hz``), or, for a
    stream, as fast as it delivers. A read that fails ends sampling; ``error`` holds why."""

    def __init__(self, sensor: PowerSensor, rate_hz: float = DEFAULT_RATE_HZ):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.sensor = sensor
        self.rate_hz = min(rate_hz, sensor.max_rate_hz)
        self.readings: list = []
        self.error: Optional[str] = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def timeout_s(self) -> float:
        """How long to wait for one reading before calling the sensor stalled."""
        return max(5.0, 3.0 * max(1.0 / self.rate_hz, self.sensor.update_period_s or 0.0))

    def start(self) -> None:
        """Open the sensor and start sampling; returns once the first reading is in, else raises SensorUnavailable."""
        self.sensor.open(self.rate_hz)
        self._thread = threading.Thread(target=self._loop, name="sparsebench-sensor", daemon=True)
        self._thread.start()
        if not self.wait_for_reading_after(-math.inf):
            reason = self.error or f"no reading within {self.timeout_s:g} s"
            self.stop()
            raise SensorUnavailable(reason)

    def _loop(self) -> None:
        period = 1.0 / self.rate_hz
        due = time.perf_counter()
        while not self._stopping.is_set():
            try:
                reading = self.sensor.read()
            except Exception as err:  # any failure ends sampling and becomes the result's status, not a crash
                if not self._stopping.is_set():  # a stream that stop() closed ends in an error: not one
                    with self._cond:
                        self.error = str(err) if isinstance(err, SensorUnavailable) else \
                            f"sensor read failed: {type(err).__name__}: {err}"
                        self._cond.notify_all()
                return
            with self._cond:
                self.readings.append(reading)
                self._cond.notify_all()
            if not self.sensor.paced:
                due += period
                delay = due - time.perf_counter()
                if delay > 0:
                    self._stopping.wait(delay)
                else:
                    due = time.perf_counter()  # a slow read: carry on from now rather than burst to catch up

    def has_reading_after(self, t_s: float) -> bool:
        readings = self.readings
        return bool(readings) and readings[-1].t_s > t_s

    def wait_for_reading_after(self, t_s: float) -> bool:
        """Block until a reading newer than ``t_s`` is in (True), or the sensor failed or stalled (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self.error is not None or self.has_reading_after(t_s), self.timeout_s)
            return self.error is None and self.has_reading_after(t_s)

    def stop(self) -> list:
        """Stop sampling and close the sensor; returns the readings."""
        self._stopping.set()
        if self._thread is not None:  # a stream's blocked read returns with its next line
            self._thread.join(self.timeout_s)
        self.sensor.close()
        return list(self.readings)


def _empty_result(sensor: Optional[PowerSensor], status: str, rate_hz: Optional[float]) -> dict:
    """Every key of an energy result, numbers None: the same shape whether or not a measurement happened."""
    return {
        "status": status,                          # "ok" | "unavailable: <reason>" | "invalid: <reason>"
        "method": sensor.method if sensor else None,
        "rails": list(sensor.rails) if sensor else [],
        "total_rail": sensor.total_rail if sensor else None,
        # None, or the calibration and the calibrated values of the four numbers below (the top-level ones are raw)
        "calibration": sensor.calibration.as_dict() if sensor and sensor.calibration else None,
        "energy_per_inference_mj": None,           # active energy / iterations
        "energy_above_idle_per_inference_mj": None,  # (active W - idle W) x window / iterations
        "idle_w": None,
        "active_w": None,
        "power_cv": None,                          # std / mean of the power readings in the window
        "rails_active_w": {},                      # mean W per rail in the window
        "idle_s": None,                            # the idle stretch integrated, s
        "window_s": None,                          # the active stretch integrated, s
        "iterations": None,                        # calls of run_fn inside the window
        "idle_samples": None,
        "samples": None,                           # readings inside the window
        "rate_hz": None,                           # achieved reading rate
        "requested_rate_hz": rate_hz,
        "sensor_update_s": None,                   # how often the sensor's value changes
        "sensor_update_source": None,              # "declared" by the sensor or "observed" in the idle readings
        "sensor_detail": dict(sensor.detail) if sensor else {},
    }


def unavailable(reason: str) -> dict:
    """An energy result that says why there is none (e.g. ``detect()``'s reason)."""
    return _empty_result(None, f"unavailable: {reason}", None)


def _too_short(update_s: float, rate_hz: float, idle_s: float, window_s: float) -> Optional[str]:
    """The verdict for windows too short for a sensor with a known update period, before measuring anything."""
    need = max(MIN_UPDATES * update_s, (MIN_SAMPLES + 1) / rate_hz)  # + 1: a window's edges rarely hit a reading
    if min(idle_s, window_s) >= need:
        return None
    return (f"invalid: window too short for the sensor's update rate (idle_s={idle_s:g} s, window_s={window_s:g} s; "
            f"the sensor updates every {update_s:.3g} s and is read at {rate_hz:g} Hz; a window needs "
            f"{MIN_UPDATES} updates and {MIN_SAMPLES} readings: use idle_s and window_s >= {need:.3g} s)")


def _changes(values: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(values)))


def measure_energy(run_fn: Callable[[], object], *, backend: Optional[PowerSensor], idle_s: float = 2.0,
                   window_s: float = 5.0, rate_hz: float = DEFAULT_RATE_HZ) -> dict:
    """Energy per inference of ``run_fn`` (one inference per call, including any device sync), measured.

    Samples an idle stretch of ``idle_s``, then calls ``run_fn`` back to back and integrates a window of at least
    ``window_s`` s. The first sensor update period (plus one sample) of each stretch is skipped, since sensors
    lag the load, and the load keeps running until a reading from after the window is in, so both edges of the
    window sit between readings of the same load; ``iterations`` counts only the calls inside the window.
    Power sensors are integrated with the trapezoid rule; energy counters by the difference of the counter.

    Returns the dict built by :func:`_empty_result` (keys and units there). ``status`` is ``"ok"``,
    ``"unavailable: <reason>"`` (no sensor, or it failed) or ``"invalid: ..."`` (window too short for the
    sensor). ``backend=None`` gives ``"unavailable: no power sensor"``; nothing is ever estimated.
    """
    if backend is None:
        return unavailable(NO_SENSOR)
    sampler = Sampler(backend, rate_hz)
    try:
        sampler.start()
    except SensorUnavailable as err:
        return _empty_result(backend, f"unavailable: {err}", rate_hz)
    try:
        result = _empty_result(backend, "ok", rate_hz)  # after start: a stream knows its rails only now
        result.update(_measure(run_fn, sampler, idle_s, window_s))
        return result
    finally:
        sampler.stop()


def _measure(run_fn: Callable[[], object], sampler: Sampler, idle_s: float, window_s: float) -> dict:
    sensor = sampler.sensor
    sample_s = 1.0 / sampler.rate_hz
    declared = sensor.update_period_s
    if declared is not None:
        verdict = _too_short(declared, sampler.rate_hz, idle_s, window_s)
        if verdict:
            return {"status": verdict}

    # idle
    settle_s = (declared or 0.0) + sample_s
    idle_start = time.perf_counter()
    time.sleep(idle_s + settle_s)
    idle_end = time.perf_counter()
    if not sampler.wait_for_reading_after(idle_end):
        return _lost(sampler)
    if declared is None:
        t, values = _series(list(sampler.readings), sensor.counter)
        inside = (t >= idle_start) & (t <= idle_end)
        changes = _changes(values[inside])
        if changes < MIN_UPDATES:
            update = f"about every {idle_s / changes:.3g} s" if changes else "never"
            return {"status": f"invalid: window too short for the sensor's update rate (the reading changed "
                              f"{changes} times in {idle_s:g} s of idle, so it updates {update}; a window needs "
                              f"{MIN_UPDATES} updates: lengthen idle_s and window_s)"}
        update_s = float(t[inside][-1] - t[inside][0]) / changes
        settle_s = update_s + sample_s
    else:
        update_s = declared

    # active: the window opens at the end of the first call after the settle time, closes at a call's end
    calls, window_start, window_end, first_in = 0, None, None, 0
    active_start = time.perf_counter()
    while window_end is None:
        run_fn()
        calls += 1
        now = time.perf_counter()
        if window_start is None:
            if now - active_start >= settle_s:
                window_start, first_in = now, calls
        elif now - window_start >= window_s:
            window_end = now
        if sampler.error:
            return _lost(sampler)
    iterations = calls - first_in
    deadline = time.perf_counter() + sampler.timeout_s
    while not sampler.has_reading_after(window_end):
        if sampler.error or time.perf_counter() > deadline:
            return _lost(sampler)
        run_fn()

    readings = list(sampler.readings)
    t, values = _series(readings, sensor.counter)
    integrate = counter_energy if sensor.counter else integrate_power
    idle_from = idle_start + settle_s
    idle_w = integrate(t, values, idle_from, idle_end) / (idle_end - idle_from)
    window = window_end - window_start
    active_j = integrate(t, values, window_start, window_end)
    active_w = active_j / window
    in_window = (t >= window_start) & (t <= window_end)
    samples = int(np.count_nonzero(in_window))
    idle_samples = int(np.count_nonzero((t >= idle_from) & (t <= idle_end)))
    if declared is None and _changes(values[in_window]) < MIN_UPDATES:
        return {"status": f"invalid: window too short for the sensor's update rate (the reading changed "
                          f"{_changes(values[in_window])} times in the {window:.3g} s window; lengthen window_s)"}
    if min(samples, idle_samples) < MIN_SAMPLES:
        return {"status": f"invalid: window too short for the sensor's update rate ({idle_samples} idle and "
                          f"{samples} window readings at {sampler.rate_hz:g} Hz; each needs {MIN_SAMPLES}: "
                          "lengthen idle_s and window_s)"}
    if sensor.counter:
        powers = np.diff(values[in_window]) / np.diff(t[in_window])
        rails = {name: np.array([r.rails_j[name] for r in readings]) for name in sensor.rails}
    else:
        powers = values[in_window]
        rails = {name: np.array([r.rails_w[name] for r in readings]) for name in sensor.rails}
    mean_power = float(np.mean(powers))

    def per_inference(watts: float) -> float:
        """A mean power over the window as mJ per call."""
        return watts * window / iterations * 1e3

    result = {
        "energy_per_inference_mj": per_inference(active_w),
        "energy_above_idle_per_inference_mj": per_inference(active_w - idle_w),
        "idle_w": idle_w,
        "active_w": active_w,
        "power_cv": float(np.std(powers, ddof=1) / mean_power) if len(powers) > 1 and mean_power else None,
        "rails_active_w": {name: integrate(t, series, window_start, window_end) / window
                           for name, series in rails.items()},
        "idle_s": idle_end - idle_from,
        "window_s": window,
        "iterations": iterations,
        "idle_samples": idle_samples,
        "samples": samples,
        "rate_hz": (len(t) - 1) / float(t[-1] - t[0]),
        "sensor_update_s": update_s,
        "sensor_update_source": "declared" if declared is not None else "observed",
    }
    cal = sensor.calibration
    if cal is not None:
        result["calibration"] = {
            **cal.as_dict(),
            "energy_per_inference_mj": per_inference(cal.apply(active_w)),
            "energy_above_idle_per_inference_mj": per_inference(cal.scale * (active_w - idle_w)),  # offset cancels
            "idle_w": cal.apply(idle_w),
            "active_w": cal.apply(active_w),
        }
    return result


def _lost(sampler: Sampler) -> dict:
    return {"status": f"unavailable: {sampler.error or 'sensor stopped delivering readings'}"}


def _series(readings: list, counter: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Reading times and the total (W for power sensors, cumulative J for counters) as arrays."""
    t = np.array([r.t_s for r in readings])
    values = np.array([r.energy_j if counter else r.total_w for r in readings], dtype=float)
    return t, values
