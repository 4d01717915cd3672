"""Energy: sensor backends on fake sysfs trees and recorded device output, the sampler against a known power
profile, and the offline tegrastats / PMIC tools. No board is needed (this machine has no power sensor)."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import energy
from harness.board import sensors
from harness.errors import HarnessError

FIXTURES = Path(__file__).parent / "fixtures" / "energy"
RIPPLE, RIPPLE_HZ = 0.02, 3.0


class Profile:
    """The device's true power (W): ``idle_w`` until the benchmark's first call, then ``active_w``.

    Both carry a ±2 % 3 Hz ripple so consecutive readings differ, as a real sensor's do (a sensor whose value
    never changes is judged stale); over the windows used here the ripple moves a mean by well under 0.5 %.
    """

    def __init__(self, idle_w: float, active_w: float):
        self.idle_w, self.active_w = idle_w, active_w
        self.active_since = None

    def power(self, t: float) -> float:
        active = self.active_since is not None and t >= self.active_since
        return (self.active_w if active else self.idle_w) * (1 + RIPPLE * math.sin(2 * math.pi * RIPPLE_HZ * t))

    def energy(self, t0: float, t1: float) -> float:
        """∫ power dt over [t0, t1] (J), in closed form."""
        omega = 2 * math.pi * RIPPLE_HZ

        def at_level(level, a, b):
            return level * ((b - a) - RIPPLE * (math.cos(omega * b) - math.cos(omega * a)) / omega)

        switch = self.active_since
        if switch is None or t1 <= switch:
            return at_level(self.idle_w, t0, t1)
        if t0 >= switch:
            return at_level(self.active_w, t0, t1)
        return at_level(self.idle_w, t0, switch) + at_level(self.active_w, switch, t1)

    def inference(self):
        """The benchmark: one call is 4 ms of (simulated) work; the first call switches the device to active."""
        def run():
            if self.active_since is None:
                self.active_since = time.perf_counter()
            time.sleep(0.004)
        return run


@contextmanager
def rewriting(update, period_s: float = 0.001):
    """Call ``update(now)`` on a thread every ``period_s`` while the block runs: the files change under the sampler."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            update(time.perf_counter())
            stop.wait(period_s)

    update(time.perf_counter())
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def put(path: Path, value) -> None:
    """Replace a sysfs-like file atomically, so a concurrent reader never sees it half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def assert_matches(result: dict, profile: Profile, tol: float = 0.02) -> None:
    """Measured idle/active power and energy per inference within ``tol`` of the profile's."""
    assert result["status"] == "ok", result["status"]
    n, window = result["iterations"], result["window_s"]
    assert n >= 50 and window >= 0.99 * 1.0
    assert result["idle_w"] == pytest.approx(profile.idle_w, rel=tol)
    assert result["active_w"] == pytest.approx(profile.active_w, rel=tol)
    assert result["energy_per_inference_mj"] == pytest.approx(profile.active_w * window / n * 1e3, rel=tol)
    above = (profile.active_w - profile.idle_w) * window / n * 1e3
    assert result["energy_above_idle_per_inference_mj"] == pytest.approx(above, rel=tol)
    assert 0 < result["power_cv"] < 0.05
    json.dumps(result)  # the runner prints it as JSON


# ---------------------------------------------------------------------------------------------------------------
# fake sysfs trees

def hwmon_tree(root: Path, labels=("VDD_IN", "VDD_CPU_GPU_CV", "NC"), chip="1-0040", hwmon="hwmon3",
               update_interval_ms=None) -> Path:
    """An upstream-driver INA3221 (JetPack 5+) with 5 V on every channel, plus the in7 sum channel to be skipped."""
    folder = root / "sys/bus/i2c/drivers/ina3221" / chip / "hwmon" / hwmon
    folder.mkdir(parents=True)
    for n, label in enumerate(labels, 1):
        put(folder / f"in{n}_label", label)
        put(folder / f"in{n}_input", 5000)
        put(folder / f"curr{n}_input", 100)
    put(folder / "in7_label", "sum of shunt voltages")
    put(folder / "in7_input", 40)
    put(folder / "curr7_input", 999)
    if update_interval_ms is not None:
        put(folder / "update_interval", update_interval_ms)
    return folder


def battery_tree(root: Path, status="Discharging", current=-500_000, voltage=3_850_000) -> Path:
    folder = root / "sys/class/power_supply/battery"
    folder.mkdir(parents=True)
    put(folder / "status", status)
    put(folder / "current_now", current)
    put(folder / "voltage_now", voltage)
    return folder


def rapl_tree(root: Path, energy_uj=0, max_uj=262_143_999_938) -> Path:
    folder = root / "sys/class/powercap/intel-rapl:0"
    folder.mkdir(parents=True)
    put(folder / "name", "package-0")
    put(folder / "energy_uj", energy_uj)
    put(folder / "max_energy_range_uj", max_uj)
    (root / "sys/class/powercap/intel-rapl:0:0").mkdir()  # a sub-zone (core): inside package-0, not another rail
    return folder


def pmic_text(total_w: float) -> str:
    """The recorded Pi 5 output with VDD_CORE_A rewritten so that Σ V·I = ``total_w``."""
    sample = (FIXTURES / "pmic_pi5.txt").read_text()
    parsed = sensors.parse_pmic_adc(sample)
    others_w = parsed["total_raw_w"] - parsed["rails_w"]["VDD_CORE"]
    amps = (total_w - others_w) / parsed["rails_v"]["VDD_CORE"]
    return re.sub(r"(VDD_CORE_A current\(7\)=)[0-9.]+A", lambda m: f"{m.group(1)}{amps:.8f}A", sample)


# ---------------------------------------------------------------------------------------------------------------
# measurement against a known power profile

def test_jetson_hwmon_energy_matches_profile(tmp_path):
    folder = hwmon_tree(tmp_path, update_interval_ms=2)
    profile = Profile(idle_w=4.0, active_w=9.0)

    def update(now):  # VDD_IN carries the profile, the CPU/GPU sub-rail 40 % of it; 5000 mV × mA / 1e6 = W
        watts = profile.power(now)
        put(folder / "curr1_input", round(watts * 200))
        put(folder / "curr2_input", round(0.4 * watts * 200))

    with rewriting(update):
        sensor = sensors.JetsonHwmon(tmp_path)
        assert sensor.rails == ("VDD_IN", "VDD_CPU_GPU_CV") and sensor.total_rail == "VDD_IN"  # NC, in7 skipped
        result = sensors.measure_energy(profile.inference(), backend=sensor, idle_s=0.5, window_s=1.0)
    assert_matches(result, profile)
    assert result["method"] == "jetson-ina3221-hwmon" and result["calibration"] is None
    assert result["rails_active_w"]["VDD_CPU_GPU_CV"] == pytest.approx(0.4 * profile.active_w, rel=0.02)
    assert result["rate_hz"] == pytest.approx(50, rel=0.1)
    assert result["sensor_update_s"] == 0.002 and result["sensor_update_source"] == "declared"


def test_pi5_pmic_energy_matches_profile_at_capped_rate():
    profile = Profile(idle_w=3.0, active_w=7.0)
    sensor = sensors.PiPmic(command=lambda: pmic_text(profile.power(time.perf_counter())))
    assert sensor.total_rail == "sum" and "VDD_CORE" in sensor.rails and "EXT5V" not in sensor.rails
    result = sensors.measure_energy(profile.inference(), backend=sensor, idle_s=1.5, window_s=1.5, rate_hz=50)
    assert_matches(result, profile)
    assert result["requested_rate_hz"] == 50 and result["rate_hz"] <= 10.5  # vcgencmd: about 10 calls/s at most
    cal = result["calibration"]
    assert (cal["scale"], cal["offset_w"]) == (1.1451, 0.5879)
    assert cal["active_w"] == pytest.approx(1.1451 * result["active_w"] + 0.5879)
    assert cal["idle_w"] == pytest.approx(1.1451 * result["idle_w"] + 0.5879)
    assert cal["energy_above_idle_per_inference_mj"] == pytest.approx(
        1.1451 * result["energy_above_idle_per_inference_mj"])


@pytest.mark.parametrize("units, sign", [(("uA", "uV"), -1), (("mA", "mV"), +1)],
                         ids=["uA-negative-as-documented", "mA-positive-vendor"])
def test_android_battery_energy_matches_profile(tmp_path, units, sign):
    current_scale, voltage = (1e6, 3_850_000) if units[0] == "uA" else (1e3, 3_850)
    folder = battery_tree(tmp_path, current=sign * 300_000 if units[0] == "uA" else sign * 300, voltage=voltage)
    profile = Profile(idle_w=1.2, active_w=3.5)

    def update(now):
        put(folder / "current_now", round(sign * profile.power(now) / 3.85 * current_scale))

    with rewriting(update):
        sensor = sensors.AndroidBattery(tmp_path)
        result = sensors.measure_energy(profile.inference(), backend=sensor, idle_s=0.5, window_s=1.0)
    assert_matches(result, profile)
    detail = result["sensor_detail"]
    assert (detail["current_unit"], detail["voltage_unit"]) == units
    assert detail["discharging_current"].startswith("negative" if sign < 0 else "positive")
    assert result["sensor_update_source"] == "observed"


@pytest.mark.parametrize("status", ["Charging", "Full"])
def test_android_battery_refused_while_charging(tmp_path, status):
    battery_tree(tmp_path, status=status)
    with pytest.raises(sensors.SensorUnavailable, match=f"battery is {status}: .*unplug USB"):
        sensors.AndroidBattery(tmp_path)
    sensor, reason = sensors.detect(tmp_path)
    assert sensor is None and reason.startswith(f"Android battery: battery is {status}")


def test_android_plugged_in_mid_run_is_unavailable(tmp_path):
    folder = battery_tree(tmp_path)
    profile = Profile(idle_w=1.0, active_w=2.0)
    inference = profile.inference()

    def plug_in_then_run():
        put(folder / "status", "Charging")
        inference()

    with rewriting(lambda now: put(folder / "current_now", round(-profile.power(now) / 3.85 * 1e6))):
        result = sensors.measure_energy(plug_in_then_run, backend=sensors.AndroidBattery(tmp_path), idle_s=0.5,
                                        window_s=1.0)
    assert result["status"].startswith("unavailable: battery is Charging")
    assert result["energy_per_inference_mj"] is None


def test_rapl_counter_energy_matches_profile_across_wraps(tmp_path, monkeypatch):
    # The counter is computed at the instant it is read (a thread rewriting the file lags by a scheduler slice,
    # which shifts energy between windows; real RAPL updates in hardware). A 5 J range wraps several times a second
    # at these powers; each 20 ms step stays far below one range.
    max_uj, start_uj = 5_000_000, 4_900_000
    rapl_tree(tmp_path, energy_uj=start_uj, max_uj=max_uj)
    profile = Profile(idle_w=10.0, active_w=25.0)
    origin = time.perf_counter()
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "energy_uj":
            return f"{int(start_uj + profile.energy(origin, time.perf_counter()) * 1e6) % max_uj}\n"
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    sensor = sensors.Rapl(tmp_path)
    assert sensor.rails == ("package-0",) and sensor.counter
    result = sensors.measure_energy(profile.inference(), backend=sensor, idle_s=0.5, window_s=1.0)
    assert_matches(result, profile)
    assert result["rails_active_w"]["package-0"] == pytest.approx(result["active_w"])


# ---------------------------------------------------------------------------------------------------------------
# validity and availability

def test_window_shorter_than_declared_update_period_is_invalid(tmp_path):
    hwmon_tree(tmp_path, update_interval_ms=100)
    calls = []
    result = sensors.measure_energy(lambda: calls.append(1), backend=sensors.JetsonHwmon(tmp_path), idle_s=0.5,
                                    window_s=0.5)
    assert result["status"].startswith("invalid: window too short for the sensor's update rate (")
    assert "use idle_s and window_s >= 1 s" in result["status"]
    assert not calls and result["energy_per_inference_mj"] is None


def test_sensor_that_never_changes_is_invalid(tmp_path):
    battery_tree(tmp_path)  # nothing rewrites it: a stale value must not pass as a measurement
    result = sensors.measure_energy(lambda: None, backend=sensors.AndroidBattery(tmp_path), idle_s=0.3, window_s=0.3)
    assert result["status"].startswith("invalid: window too short for the sensor's update rate (")
    assert "changed 0 times" in result["status"]


def test_no_sensor_is_unavailable(tmp_path):
    assert sensors.detect(tmp_path) == (None, "no power sensor")
    calls = []
    result = sensors.measure_energy(lambda: calls.append(1), backend=None)
    assert result["status"] == "unavailable: no power sensor"
    assert not calls and result["energy_per_inference_mj"] is None and result["idle_w"] is None
    assert set(result) == set(sensors.unavailable("x"))


def test_pi4_has_no_sensor(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("Raspberry Pi 4 Model B Rev 1.4\x00")
    sensor, reason = sensors.detect(tmp_path)
    assert sensor is None
    assert reason.startswith("no power sensor (Raspberry Pi 4 Model B Rev 1.4 has none: measure with an external")


def test_rapl_wraparound():
    assert sensors.counter_delta(100, 300, 1000) == 200
    assert sensors.counter_delta(900, 100, 1000) == 200
    assert sensors.counter_delta(262_143_999_000, 500, 262_143_999_938) == 1438


def test_rapl_reads_accumulate_across_wrap(tmp_path):
    folder = rapl_tree(tmp_path, energy_uj=999_000, max_uj=1_000_000)
    sensor = sensors.Rapl(tmp_path)
    put(folder / "energy_uj", 2_000)
    assert sensor.read().energy_j == pytest.approx(0.003)
    put(folder / "energy_uj", 500_000)
    reading = sensor.read()
    assert reading.energy_j == pytest.approx(0.501) and reading.rails_j == {"package-0": pytest.approx(0.501)}
    assert reading.total_w is None


def test_rapl_permission_denied_is_unavailable(tmp_path, monkeypatch):
    rapl_tree(tmp_path)
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):  # as for a non-root user since Linux 5.10 (tests may run as root)
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    sensor, reason = sensors.detect(tmp_path)
    assert sensor is None
    assert reason.startswith("RAPL: ") and "energy_uj: permission denied" in reason and "root-only" in reason
    assert sensors.unavailable(reason)["status"] == f"unavailable: {reason}"


def test_detect_order(tmp_path):
    hwmon_tree(tmp_path / "jetson")
    assert isinstance(sensors.detect(tmp_path / "jetson")[0], sensors.JetsonHwmon)
    battery_tree(tmp_path / "phone")
    assert isinstance(sensors.detect(tmp_path / "phone")[0], sensors.AndroidBattery)
    rapl_tree(tmp_path / "pc")
    assert isinstance(sensors.detect(tmp_path / "pc")[0], sensors.Rapl)
    pi = tmp_path / "pi5"
    (pi / "proc/device-tree").mkdir(parents=True)
    (pi / "proc/device-tree/model").write_text("Raspberry Pi 5 Model B Rev 1.0\x00")
    assert isinstance(sensors.detect(pi, pmic_command=lambda: pmic_text(3.0))[0], sensors.PiPmic)
    reason = sensors.detect(pi, pmic_command=["sparsebench-no-such-vcgencmd", "pmic_read_adc"])[1]
    assert reason == "Pi 5 PMIC: sparsebench-no-such-vcgencmd: command not found"
    # an explicit meter wins over everything, and its failure is the answer
    meter, _ = sensors.detect(tmp_path / "phone", meter_command=[sys.executable, "-c", "print('4.20 W')"])
    assert isinstance(meter, sensors.MeterCommand) and meter.read().total_w == 4.2
    assert sensors.detect(tmp_path / "phone", meter_command="sparsebench-no-such-meter") == \
        (None, "external meter: sparsebench-no-such-meter: command not found")


def test_meter_command_without_a_number_is_unavailable():
    with pytest.raises(sensors.SensorUnavailable, match="printed no number"):
        sensors.MeterCommand(lambda: "meter not connected")


def test_jetson_hwmon_without_input_rail_sums_rails(tmp_path):
    """AGX Orin: two chips, no VDD_IN: total = sum of rails (and the result says so)."""
    hwmon_tree(tmp_path, labels=("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"))
    hwmon_tree(tmp_path, labels=("NC", "VDDQ_VDD2_1V8AO", "NC"), chip="1-0041", hwmon="hwmon4")
    sensor = sensors.JetsonHwmon(tmp_path)
    assert sensor.rails == ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO")
    assert sensor.total_rail == "sum" and sensor.update_period_s is None
    assert sensor.read().total_w == pytest.approx(4 * 5000 * 100 / 1e6)


def test_jetson_iio_jetpack4(tmp_path):
    folder = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    folder.mkdir(parents=True)
    for c, (name, mw) in enumerate([("POM_5V_IN", 3140), ("POM_5V_GPU", 153), ("POM_5V_CPU", 536)]):
        put(folder / f"rail_name_{c}", name)
        put(folder / f"in_power{c}_input", mw)
    sensor, _ = sensors.detect(tmp_path)
    assert isinstance(sensor, sensors.JetsonIio) and sensor.total_rail == "POM_5V_IN"
    reading = sensor.read()
    assert reading.total_w == pytest.approx(3.140) and reading.rails_w["POM_5V_GPU"] == pytest.approx(0.153)


def test_tegrastats_stream(tmp_path):
    command = [sys.executable, str(FIXTURES / "fake_tegrastats.py"), str(FIXTURES / "tegrastats_jp7.txt")]
    sensor = sensors.Tegrastats(command)
    sampler = sensors.Sampler(sensor, rate_hz=50)  # capped at 20 Hz: tegrastats --interval 50
    sampler.start()
    try:
        for _ in range(4):
            assert sampler.wait_for_reading_after(sampler.readings[-1].t_s)
    finally:
        readings = sampler.stop()
    assert sensor.detail["command"][-2:] == ["--interval", "50"] and sensor.update_period_s == 0.05
    assert [r.total_w for r in readings[:4]] == pytest.approx([11.351, 12.351, 14.451, 14.551])
    assert sensor.rails == ("VDD_GPU_SOC", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0") and sensor.total_rail == "sum"
    gaps = [b.t_s - a.t_s for a, b in zip(readings, readings[1:])]
    assert all(0.02 < gap < 0.5 for gap in gaps)
    result = sensors.measure_energy(lambda: None, backend=sensors.Tegrastats(command), idle_s=0.2, window_s=0.2)
    assert result["status"].startswith("invalid: window too short") and "use idle_s and window_s >= 0.55 s" in \
        result["status"]


def test_tegrastats_that_fails_is_unavailable():
    failing = sensors.Tegrastats([sys.executable, "-c", "import sys; sys.exit('tegrastats: permission denied')"])
    result = sensors.measure_energy(lambda: None, backend=failing, idle_s=1, window_s=1)
    assert result["status"] == "unavailable: tegrastats exited with 1: tegrastats: permission denied"


# ---------------------------------------------------------------------------------------------------------------
# parsers and offline tools (recorded output)

def _lines(name: str) -> list:
    return (FIXTURES / name).read_text().splitlines()


def test_tegrastats_jetpack56_lines():
    agx, nx, nano = (sensors.parse_tegrastats_line(line) for line in _lines("tegrastats_jp56.txt"))
    assert agx["timestamp"] == "2025-04-11T10:36:27"
    assert agx["rails_mw"] == {"VDD_GPU_SOC": 2340, "VDD_CPU_CV": 390, "VIN_SYS_5V0": 4025, "VDDQ_VDD2_1V8AO": 301}
    assert (agx["total_rail"], agx["total_mw"]) == ("sum", 2340 + 390 + 4025 + 301)  # AGX Orin: no input rail
    assert agx["temps_c"] == {"CPU": 44.562, "Tboard": 32.0, "SOC2": 40.093, "Tdiode": 33.0, "SOC0": 41.093,
                              "tj": 44.343, "SOC1": 41.25}  # CV0, CV1, GPU, CV2 print -256C: absent
    assert agx["cpu_load_pct"] == [0] * 12 and agx["cpu_freq_mhz"] == [729] * 12 and agx["gpu_load_pct"] == 0
    assert (nx["total_rail"], nx["total_mw"]) == ("VDD_IN", 17946)
    assert nx["rails_mw"] == {"VDD_IN": 17946, "VDD_CPU_GPU_CV": 8896, "VDD_SOC": 3923}
    assert nx["cpu_load_pct"] == [97, 95, 95, 91, 88, 93] and nx["cpu_freq_mhz"][-1] == 247
    assert nx["gpu_load_pct"] == 84 and nx["temps_c"]["gpu"] == 63.5
    assert (nano["timestamp"], nano["total_mw"]) == ("2024-11-15T08:38:09", 12479)
    assert nano["gpu_load_pct"] == 63


def test_tegrastats_jetpack4_line():
    (tx2,) = (sensors.parse_tegrastats_line(line) for line in _lines("tegrastats_jp4.txt"))
    assert tx2["timestamp"] is None
    assert tx2["rails_mw"] == {"VDD_SYS_GPU": 153, "VDD_SYS_SOC": 536, "VDD_4V0_WIFI": 633, "VDD_IN": 3140,
                               "VDD_SYS_CPU": 536, "VDD_SYS_DDR": 557}  # "RAM 2020/7852MB" is no rail
    assert (tx2["total_rail"], tx2["total_mw"]) == ("VDD_IN", 3140)
    assert tx2["cpu_load_pct"] == [9, 21, 25, 3, 1, 1] and tx2["gpu_load_pct"] == 0
    assert tx2["temps_c"]["thermal"] == 41.9 and tx2["temps_c"]["PMIC"] == 100.0


def test_tegrastats_jetpack7_line():
    first = sensors.parse_tegrastats_line(_lines("tegrastats_jp7.txt")[0])
    assert first["timestamp"] == "2025-08-25T14:02:10"
    assert first["rails_mw"] == {"VDD_GPU_SOC": 5139, "VDD_CPU_SOC_MSS": 2310, "VIN_SYS_5V0": 3902}  # NC skipped
    assert (first["total_rail"], first["total_mw"]) == ("sum", 11351)
    assert first["temps_c"] == {"cpu": 52.9, "soc0": 49.6}  # tj@-256C/-256C dropped
    assert first["cpu_load_pct"] == [12, 3, 0] + [None] * 11  # "off" cores
    assert first["cpu_freq_mhz"] == [972, 972, 972] + [None] * 11


def test_energy_over_tegrastats_log():
    samples = energy.parse_tegrastats_log(FIXTURES / "tegrastats_jp7.txt")
    assert [s["total_mw"] for s in samples] == [11351, 12351, 14451, 14551]
    whole = energy.energy_over(samples)
    # trapezoid by hand over lines 1 s apart: (11351+12351)/2 + (12351+14451)/2 + (14451+14551)/2 mJ
    assert whole["energy_j"] == pytest.approx(39.753)
    assert whole["mean_w"] == pytest.approx(39.753 / 3) and whole["duration_s"] == 3 and whole["lines"] == 4
    assert whole["rails_j"]["VDD_GPU_SOC"] == pytest.approx((5139 + 6139) / 2e3 + (6139 + 8139) / 2e3 + 8.139)
    by_clock = energy.energy_over(samples, "08-25-2025 14:02:11", "2025-08-25T14:02:12")
    assert by_clock["energy_j"] == pytest.approx((12351 + 14451) / 2e3)
    # bounds between lines interpolate: 11851 mW at 0.5 s, 13401 mW at 1.5 s
    assert energy.energy_over(samples, 0.5, 1.5)["energy_j"] == pytest.approx(
        (11851 + 12351) / 2e3 * 0.5 + (12351 + 13401) / 2e3 * 0.5)
    with pytest.raises(HarnessError, match="outside the log"):
        energy.energy_over(samples, 1, 9)


def test_energy_over_jetpack4_log_needs_the_interval():
    samples = energy.parse_tegrastats_log(_lines("tegrastats_jp4.txt") * 3)
    with pytest.raises(HarnessError, match="no timestamps"):
        energy.energy_over(samples)
    assert energy.energy_over(samples, interval_s=1.0)["energy_j"] == pytest.approx(3.140 * 2)


# the Pi 5 sample's paired rails, V × A, from the README's numbers
PMIC_HAND_W = (
    3.79999600 * 0.00000000      # 3V7_WL_SW
    + 3.30632200 * 0.06245952    # 3V3_SYS
    + 1.79828900 * 0.16102850    # 1V8_SYS
    + 1.10292900 * 0.00780744    # DDR_VDD2
    + 0.60476130 * 0.00000000    # DDR_VDDQ
    + 1.10439400 * 0.17566740    # 1V1_SYS
    + 0.80256330 * 0.32791250    # 0V8_SW
    + 0.89745940 * 10.87674000   # VDD_CORE
    + 3.30494200 * 0.00036630    # 3V3_DAC
    + 3.30219400 * 0.00042735    # 3V3_ADC
    + 0.79736190 * 0.00579975    # 0V8_AON
    + 5.07056000 * 0.01367520    # HDMI
)


def test_pi5_pmic_sample():
    parsed = energy.parse_pmic((FIXTURES / "pmic_pi5.txt").read_text())
    assert PMIC_HAND_W == pytest.approx(10.7999, abs=1e-4)
    assert parsed["total_raw_w"] == pytest.approx(PMIC_HAND_W, rel=1e-9)
    assert parsed["total_calibrated_w"] == pytest.approx(1.1451 * PMIC_HAND_W + 0.5879, rel=1e-9)
    assert len(parsed["rails_w"]) == 12 and parsed["rails_w"]["HDMI"] == pytest.approx(5.07056 * 0.0136752)
    assert parsed["unpaired"] == {"EXT5V_V": 5.06788, "BATT_V": 3.011108}  # no current: not in the sum
    with pytest.raises(HarnessError, match="no PMIC rails"):
        energy.parse_pmic("temp=45.2'C")


def test_cli_entry_points_print_json(capsys):
    assert energy.main_tegrastats(FIXTURES / "tegrastats_jp7.txt", json=True, start="1", end=3) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["energy_j"] == pytest.approx((12351 + 14451) / 2e3 + (14451 + 14551) / 2e3)
    assert out["total_rail"] == "sum"
    assert energy.main_pmic(FIXTURES / "pmic_pi5.txt", json=True) == 0
    assert json.loads(capsys.readouterr().out)["total_raw_w"] == pytest.approx(PMIC_HAND_W)
    assert energy.main_pmic(FIXTURES / "pmic_pi5.txt") == 0
    assert "calibrated" in capsys.readouterr().out
    with pytest.raises(HarnessError, match="cannot read tegrastats log"):
        energy.main_tegrastats(FIXTURES / "missing.txt")


def test_integration_rules():
    # trapezoid with interpolated bounds: 1 W at 0.5 s, 2 W at 1 s and 2 s
    assert sensors.integrate_power([0, 1, 2], [0, 2, 2], 0.5, 2) == pytest.approx(0.75 + 2.0)
    assert sensors.counter_energy([0, 1, 2], [0, 1, 3], 0.5, 1.5) == pytest.approx(2.0 - 0.5)
