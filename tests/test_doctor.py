"""`sparsebench doctor`'s diagnosis, unit tier: probe reports shaped like the boards' (DEVICE_FACTS) -> findings,
each missing piece with the command that fixes it. The probe itself runs for real in test_ssh.py and below."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

from harness.board import PACKAGE
from harness.config import load_target
from harness.device.ship import upload_board
from harness.doctor import GOVERNOR_FIX, PROBE_FILE, diagnose, format_report, profile_steps
from harness.transports import LocalTransport

VENV_FIX = "python3 -m venv ~/sb-venv && ~/sb-venv/bin/pip install numpy apache-tvm==0.27.0.post1"

BASE = {
    "probe_version": 1, "user": "pi", "home": "/home/pi",
    "os": {"pretty_name": "Debian GNU/Linux 12 (bookworm)", "id": "debian", "version_id": "12",
           "kernel": "6.6.51+rpt-rpi-2712", "machine": "aarch64", "libc": "glibc", "libc_version": "2.36",
           "android": False, "termux": False, "model": None, "l4t": None, "externally_managed": True},
    "cpu": {"model": None, "cores": 4, "affinity": 4, "governors": {"performance": 4}, "available_governors": [],
            "cur_freq_khz": 2400000, "max_freq_khz": 2400000, "loadavg": [0.1, 0.1, 0.1]},
    "memory": {"total_mb": 8064, "available_mb": 7400},
    "disk": {"path": "/home/pi/.cache/sparsebench/x/doctor-1", "free_mb": 20000, "total_mb": 58000},
    "python": {"executable": "/usr/bin/python3", "version": "3.11.2", "venv_module": True},
    "runtimes": [{"requested": "~/sb-venv/bin/python", "python": "3.11.2", "executable": "/home/pi/sb-venv/bin/python",
                  "venv": True, "numpy": "2.2.1", "tvm": "0.27.0.post1"}],
    "sb_venv": "/home/pi/sb-venv/bin/python",
    "sensors": {"ina3221_hwmon": [], "ina3221x_iio": [], "rapl": [], "power_supply": [], "tegrastats": None,
                "vcgencmd": None, "pmic_read_adc": None, "nvpmodel": None, "jetson_clocks": None},
    "thermal": {"zones_c": {"cpu-thermal": 48.3}},
    "probe_s": 0.4,
}


def probe(**changes) -> dict:
    """BASE with nested changes: probe(os={"machine": "armv7l"}) updates BASE["os"]["machine"]."""
    report = copy.deepcopy(BASE)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(report.get(key), dict):
            report[key].update(value)
        else:
            report[key] = value
    return report


def by_item(findings) -> dict:
    out = {}
    for f in findings:
        out.setdefault(f.item, []).append(f)
    return out


def test_ready_board_has_no_missing_pieces():
    findings = diagnose(probe(os={"model": "Raspberry Pi 5 Model B Rev 1.0"},
                              sensors={"vcgencmd": "/usr/bin/vcgencmd", "pmic_read_adc": {"rc": 0, "works": True}},
                              thermal={"zones_c": {"cpu-thermal": 50.0}, "throttled": "0x0"}),
                        python="~/sb-venv/bin/python", profile=load_target("rpi5"), host_tvm="0.27.0.post1")
    assert not [f for f in findings if f.status == "MISSING"], findings
    items = by_item(findings)
    assert items["tvm runtime"][0].status == "OK" and "0.27.0.post1" in items["tvm runtime"][0].detail
    assert "Pi 5 PMIC" in items["power sensor"][0].detail
    assert items["throttling"][0].detail == "throttled=0x0"
    text = format_report("pi@rpi5:22", "ssh", "python3", probe(), findings)
    assert text.splitlines()[-1].startswith("result: ready to benchmark")


def test_raspberry_pi_os_system_python_gets_the_venv_command():
    # PEP 668 system Python without numpy/tvm, ondemand governor, vcgencmd without the video group, under-voltage
    report = probe(
        os={"model": "Raspberry Pi 5 Model B Rev 1.0"},
        cpu={"governors": {"ondemand": 4}},
        runtimes=[{"requested": "python3", "python": "3.11.2", "executable": "/usr/bin/python3", "venv": False,
                   "numpy_error": "ModuleNotFoundError: No module named 'numpy'",
                   "tvm_error": "ModuleNotFoundError: No module named 'tvm'"},
                  {"requested": "~/sb-venv/bin/python", "error": "not found", "missing": True}],
        sb_venv=None,
        sensors={"vcgencmd": "/usr/bin/vcgencmd",
                 "pmic_read_adc": {"rc": 255, "works": False, "err": "VCHI initialization failed"}},
        thermal={"zones_c": {"cpu-thermal": 61.0}, "throttled": "0x50005"},
    )
    findings = diagnose(report, python="python3")
    items = by_item(findings)
    for name in ("numpy", "tvm runtime"):
        f = items[name][0]
        assert f.status == "MISSING" and f.fix.startswith(VENV_FIX), f
        assert "--python ~/sb-venv/bin/python" in f.fix and "PEP 668" in f.fix
    assert items["governor"][0].status == "WARN" and items["governor"][0].fix == GOVERNOR_FIX
    assert "usermod -aG video" in items["power sensor"][0].fix
    throttle = items["throttling"][0]
    assert "now: under-voltage, throttled" in throttle.detail and "since boot: under-voltage, throttled" in \
        throttle.detail and "power supply" in throttle.fix
    text = format_report("pi@rpi5:22", "ssh", "python3", report, findings)
    assert f"fix: {VENV_FIX}" in text and "result: NOT READY" in text

    # without python3-venv (Debian splits ensurepip out) the command installs it first
    report["python"]["venv_module"] = False
    f = by_item(diagnose(report, python="python3"))["tvm runtime"][0]
    assert f.fix.startswith("sudo apt install -y python3-venv && " + VENV_FIX)


def test_existing_sb_venv_is_suggested():
    report = probe(runtimes=[{"requested": "python3", "python": "3.11.2", "executable": "/usr/bin/python3",
                              "venv": False, "numpy": "1.24.2", "tvm_error": "ModuleNotFoundError: No module named 'tvm'"},
                             BASE["runtimes"][0]])
    f = by_item(diagnose(report, python="python3"))["tvm runtime"][0]
    assert f.status == "MISSING" and f.fix == "~/sb-venv/bin/python has both: run with --python ~/sb-venv/bin/python"


def test_jetson_agx_orin_sensors_clocks_and_cuda_note():
    labels = ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "sum of shunt voltages", "VDDQ_VDD2_1V8AO", "NC"]
    report = probe(
        os={"pretty_name": "Ubuntu 22.04.4 LTS", "libc_version": "2.35", "l4t": "# R36 (release), REVISION: 3.0",
            "model": "NVIDIA Jetson AGX Orin Developer Kit"},
        cpu={"cores": 12, "affinity": 12, "governors": {"schedutil": 12}},
        sensors={"ina3221_hwmon": [{"path": f"/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in{i}_label",
                                    "label": label} for i, label in enumerate(labels, 1)],
                 "tegrastats": "/usr/bin/tegrastats", "nvpmodel": "/usr/sbin/nvpmodel",
                 "jetson_clocks": "/usr/bin/jetson_clocks"},
        thermal={"zones_c": {"cpu-thermal": 44.5, "tj-thermal": 45.0}, "nvpmodel": "NV Power Mode: MAXN 0"},
    )
    findings = diagnose(report, python="~/sb-venv/bin/python", profile=load_target("jetson-agx-orin"),
                        host_tvm="0.27.0.post1")
    items = by_item(findings)
    sensors = [f.detail for f in items["power sensor"]]
    assert "INA3221 (hwmon): VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, VDDQ_VDD2_1V8AO" in sensors
    assert "tegrastats at /usr/bin/tegrastats" in sensors
    clocks = items["jetson clocks"][0]
    assert clocks.fix == "sudo jetson_clocks" and "MAXN" in clocks.detail
    assert "CUDA 13" in items["cuda runtime"][0].detail
    assert "profile" not in items  # aarch64 board, aarch64 profile


def test_termux_phone_gets_termux_commands():
    report = probe(
        os={"pretty_name": "Linux-5.15.104-android13", "libc": None, "libc_version": None, "android": True,
            "termux": True, "externally_managed": False},
        cpu={"governors": {"walt": 8}, "cores": 8, "affinity": 8},
        runtimes=[{"requested": "python3", "python": "3.12.8", "executable": "/data/data/com.termux/files/usr/bin/python3",
                   "venv": False, "numpy_error": "ModuleNotFoundError: No module named 'numpy'",
                   "tvm_error": "ModuleNotFoundError: No module named 'tvm'"}],
        sb_venv=None,
        sensors={"power_supply": [{"path": "/sys/class/power_supply/battery", "type": "Battery",
                                   "status": "Charging", "readable": True}]},
    )
    items = by_item(diagnose(report, python="python3", profile=load_target("android-snapdragon8")))
    assert items["numpy"][0].fix.startswith("pkg install python-numpy")
    assert "no apache-tvm wheel exists for Android" in items["tvm runtime"][0].fix
    assert "needs root" in items["governor"][0].fix
    battery = items["power sensor"][0]
    assert battery.status == "WARN" and "unplug USB" in battery.fix
    assert "bionic libc" in items["os"][0].detail


def test_wrong_board_for_profile_32bit_and_version_mismatch():
    items = by_item(diagnose(probe(os={"machine": "x86_64"}), python="~/sb-venv/bin/python",
                             profile=load_target("rpi5")))
    assert items["profile"][0].status == "MISSING" and "compiles for aarch64" in items["profile"][0].detail
    items = by_item(diagnose(probe(os={"machine": "armv7l"}), python="~/sb-venv/bin/python"))
    assert items["architecture"][0].status == "MISSING" and "64-bit OS" in items["architecture"][0].fix
    items = by_item(diagnose(probe(), python="~/sb-venv/bin/python", host_tvm="0.28.0"))
    assert items["tvm version"][0].fix == "/home/pi/sb-venv/bin/python -m pip install apache-tvm==0.28.0"
    items = by_item(diagnose(probe(os={"libc_version": "2.27"}), python="~/sb-venv/bin/python"))
    assert "2.28" in items["glibc"][0].detail
    pi4 = by_item(diagnose(probe(os={"model": "Raspberry Pi 4 Model B Rev 1.4"}), python="~/sb-venv/bin/python",
                           profile=load_target("rpi4")))
    assert "external USB power meter" in pi4["power sensor"][0].fix


def test_probe_runs_with_the_standard_library_only(tmp_path):
    """The probe runs before numpy or TVM may exist: from the shipped package with `python -S -E -s` (no
    site-packages, no PYTHONPATH), as doctor runs it; and as a lone file."""
    upload_board(LocalTransport(), str(tmp_path))
    proc = subprocess.run([sys.executable, "-S", "-E", "-s", "-m", f"{PACKAGE}.probe", sys.executable],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["probe_version"] == 1 and report["os"]["machine"] and report["cpu"]["cores"] >= 1
    assert report["runtimes"][0]["tvm"].startswith("0.27") and report["runtimes"][0]["numpy"]
    findings = diagnose(report, python=sys.executable)
    assert not [f for f in findings if f.status == "MISSING"], findings
    alone = subprocess.run([sys.executable, "-S", "-I", str(PROBE_FILE)], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert alone.returncode == 0 and json.loads(alone.stdout)["probe_version"] == 1, alone.stderr


def test_report_shows_the_profiles_needs_and_preparation():
    profile = load_target("jetson-orin-nano")
    findings = diagnose(probe(), python="~/sb-venv/bin/python", profile=profile)
    text = format_report("nvidia@orin:22", "ssh", "python3", probe(), findings, profile)
    lines = text.splitlines()
    assert "profile jetson-orin-nano needs on the device:" in lines
    assert "  - JetPack 6 (L4T 36, Ubuntu 22.04, Python 3.10) or JetPack 7" in lines
    assert "profile jetson-orin-nano: before measuring, run on the device:" in lines
    assert "  $ sudo jetson_clocks" in lines
    assert lines[-1].startswith("result: ")  # the verdict stays last
    assert profile_steps(profile) == {"name": "jetson-orin-nano", "needs": list(profile.needs),
                                      "prepare": list(profile.prepare)}
    assert "before measuring" not in format_report("pi@rpi5:22", "ssh", "python3", probe(), findings)


def test_doctor_with_a_profile_runs_the_shipped_probe_and_lists_the_steps(tmp_path):
    """`sparsebench doctor local --target x86-64`: the board package is shipped to a local work directory, its probe
    runs, and the report (and --json) carry the profile's needs and preparation steps."""
    from conftest import sparsebench

    proc = sparsebench("doctor", "local", "--target", "x86-64", "--python", sys.executable, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stdout.startswith("sparsebench doctor: localhost (local)"), proc.stdout
    assert "profile x86-64: before measuring, run on the device:" in proc.stdout
    assert "  $ echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor" in proc.stdout
    assert "  - Linux with glibc >= 2.28 and Python >= 3.10" in proc.stdout
    proc = sparsebench("doctor", "local", "--target", "x86-64", "--python", sys.executable, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["probe_version"] == 1 and report["profile"]["name"] == "x86-64"
    assert any("intel-rapl" in step for step in report["profile"]["prepare"])
