"""sparsebench device probe: what this device has, as one JSON object on stdout (for ``sparsebench doctor``).

Part of the board package, and standard library only: it runs with whatever Python the board has, before numpy
or TVM may exist. It only reads (files, ``--version``-like commands with short timeouts); it changes nothing.

Usage: ``python3 -m sparsebench_board.probe [RUNNER_PYTHON ...]``, in the folder holding the package -- each
RUNNER_PYTHON is checked for numpy and the TVM runtime in a subprocess with ``TVM_USE_RUNTIME_LIB=1``, exactly as
the runner imports them. It also runs as a lone file (``python3 probe.py``): it imports nothing from the package.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

PROBE_VERSION = 1

RUNTIME_CHECK = (
    "import json, platform, sys\n"
    "r = {'python': platform.python_version(), 'executable': sys.executable,\n"
    "     'venv': sys.prefix != getattr(sys, 'base_prefix', sys.prefix)}\n"
    "for name in ('numpy', 'tvm'):\n"
    "    try:\n"
    "        r[name] = __import__(name).__version__\n"
    "    except Exception as err:\n"
    "        r[name + '_error'] = type(err).__name__ + ': ' + str(err)\n"
    "print(json.dumps(r))\n"
)


def read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as fh:
            return fh.read().strip().strip("\x00")
    except OSError:
        return None


def run(argv: list[str], timeout: float = 5.0, env: dict | None = None) -> dict:
    """A command's exit code and output; never raises (a missing or hanging tool is an answer too)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        return {"rc": proc.returncode, "out": proc.stdout.strip()[-4000:], "err": proc.stderr.strip()[-2000:]}
    except FileNotFoundError:
        return {"rc": 127, "out": "", "err": f"{argv[0]}: not found"}
    except subprocess.TimeoutExpired:
        return {"rc": -1, "out": "", "err": f"timed out after {timeout:g} s"}
    except OSError as err:
        return {"rc": 126, "out": "", "err": str(err)}


def os_info() -> dict:
    release = {}
    for line in (read("/etc/os-release") or "").splitlines():
        key, _, value = line.partition("=")
        release[key] = value.strip().strip('"')
    libc, libc_version = platform.libc_ver()
    if not libc and hasattr(os, "confstr"):
        try:
            text = os.confstr("CS_GNU_LIBC_VERSION") or ""
            libc, _, libc_version = text.partition(" ")
        except (ValueError, OSError):
            pass
    android = bool(os.environ.get("ANDROID_ROOT") or os.path.exists("/system/build.prop"))
    stdlib = os.path.dirname(os.__file__)
    return {
        "pretty_name": release.get("PRETTY_NAME") or platform.platform(),
        "id": release.get("ID"), "version_id": release.get("VERSION_ID"),
        "kernel": platform.release(), "machine": platform.machine(),
        # the running kernel's id: two boards reporting one are one machine (containers on one host included)
        "boot_id": (read("/proc/sys/kernel/random/boot_id") or "").strip() or None,
        "libc": libc or None, "libc_version": libc_version or None,
        "android": android, "termux": "com.termux" in (os.environ.get("PREFIX", "") + sys.prefix),
        "model": read("/proc/device-tree/model") or read("/sys/firmware/devicetree/base/model"),
        "l4t": (read("/etc/nv_tegra_release") or "").splitlines()[0] if os.path.exists("/etc/nv_tegra_release")
        else None,
        # PEP 668: the system Python refuses `pip install` (Raspberry Pi OS, Debian 12, Ubuntu 23.04+)
        "externally_managed": bool(glob.glob(os.path.join(stdlib, "EXTERNALLY-MANAGED"))),
    }


def cpu_info() -> dict:
    model = None
    for line in (read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model", "cpu model") and value.strip():
            model = value.strip()
            break
    cores = os.cpu_count()
    governors, cur, max_khz = {}, [], []
    for i in range(cores or 0):
        base = f"/sys/devices/system/cpu/cpu{i}/cpufreq"
        gov = read(f"{base}/scaling_governor")
        if gov:
            governors[gov] = governors.get(gov, 0) + 1
        for path, into in ((f"{base}/scaling_cur_freq", cur), (f"{base}/cpuinfo_max_freq", max_khz)):
            text = read(path)
            if text and text.isdigit():
                into.append(int(text))
    available = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_available_governors")
    return {
        "model": model, "cores": cores,
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governors": governors, "available_governors": available.split() if available else [],
        "cur_freq_khz": max(cur) if cur else None, "max_freq_khz": max(max_khz) if max_khz else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def memory_info() -> dict:
    values = {}
    for line in (read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) // 1024
    return {"total_mb": values.get("MemTotal"), "available_mb": values.get("MemAvailable")}


def disk_info(path: str) -> dict:
    try:
        usage = shutil.disk_usage(path)
        return {"path": path, "free_mb": usage.free // 2**20, "total_mb": usage.total // 2**20}
    except OSError as err:
        return {"path": path, "error": str(err)}


def runtime_info(python: str) -> dict:
    """numpy and the TVM runtime as the runner imports them, in ``python``."""
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    res = run([os.path.expanduser(python), "-c", RUNTIME_CHECK], timeout=120, env=env)
    info = {"requested": python}
    try:
        info.update(json.loads(res["out"].splitlines()[-1]))
    except (ValueError, IndexError):
        info["error"] = res["err"] or f"exit {res['rc']}"
        info["missing"] = res["rc"] in (126, 127)
    return info


def sensors() -> dict:
    """Which power sensors exist (existence and readability only: the energy code reads them)."""
    hwmon = []
    for label in sorted(glob.glob("/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label")):
        hwmon.append({"path": label, "label": read(label)})
    iio = []
    for rail in sorted(glob.glob("/sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*")):
        iio.append({"path": rail, "label": read(rail)})
    rapl = []
    for zone in sorted(glob.glob("/sys/class/powercap/intel-rapl:*")):
        energy = os.path.join(zone, "energy_uj")
        if os.path.exists(energy):
            rapl.append({"path": energy, "name": read(os.path.join(zone, "name")),
                         "readable": read(energy) is not None})
    batteries = []
    for supply in sorted(glob.glob("/sys/class/power_supply/*")):
        current, voltage = os.path.join(supply, "current_now"), os.path.join(supply, "voltage_now")
        if os.path.exists(current) and os.path.exists(voltage):
            batteries.append({"path": supply, "type": read(os.path.join(supply, "type")),
                              "status": read(os.path.join(supply, "status")),
                              "readable": read(current) is not None and read(voltage) is not None})
    vcgencmd = shutil.which("vcgencmd")
    pmic = None
    if vcgencmd:
        res = run([vcgencmd, "pmic_read_adc"], timeout=3)
        pmic = {"rc": res["rc"], "works": res["rc"] == 0 and "current(" in res["out"], "err": res["err"][-300:]}
    return {
        "ina3221_hwmon": hwmon, "ina3221x_iio": iio, "rapl": rapl, "power_supply": batteries,
        "tegrastats": shutil.which("tegrastats") or ("/usr/bin/tegrastats" if os.path.exists("/usr/bin/tegrastats")
                                                     else None),
        "vcgencmd": vcgencmd, "pmic_read_adc": pmic,
        "nvpmodel": shutil.which("nvpmodel"), "jetson_clocks": shutil.which("jetson_clocks"),
    }


def thermal() -> dict:
    zones = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        temp = read(os.path.join(zone, "temp"))
        if temp and temp.lstrip("-").isdigit():
            zones[read(os.path.join(zone, "type")) or os.path.basename(zone)] = int(temp) / 1000.0
    info = {"zones_c": zones}
    if shutil.which("vcgencmd"):
        res = run(["vcgencmd", "get_throttled"], timeout=3)
        if res["rc"] == 0 and "=" in res["out"]:
            info["throttled"] = res["out"].split("=", 1)[1].strip()
    if shutil.which("nvpmodel"):
        res = run(["nvpmodel", "-q"], timeout=5)
        if res["rc"] == 0:
            info["nvpmodel"] = " ".join(res["out"].split())
    return info


def python_info() -> dict:
    import importlib.util

    # `python3 -m venv` needs ensurepip, which Debian splits out into python3-venv
    venv_ok = importlib.util.find_spec("ensurepip") is not None
    return {"executable": sys.executable, "version": platform.python_version(), "venv_module": venv_ok}


def main(argv: list[str]) -> int:
    start = time.perf_counter()
    pythons = list(dict.fromkeys(argv or [sys.executable]))
    default_venv = os.path.expanduser("~/sb-venv/bin/python")
    report = {
        "probe_version": PROBE_VERSION,
        "user": os.environ.get("USER") or os.environ.get("LOGNAME"),
        "home": os.path.expanduser("~"),
        "os": os_info(), "cpu": cpu_info(), "memory": memory_info(),
        "disk": disk_info(os.getcwd()), "python": python_info(),
        "runtimes": [runtime_info(p) for p in pythons],
        "sb_venv": default_venv if os.path.exists(default_venv) else None,
        "sensors": sensors(), "thermal": thermal(),
    }
    report["probe_s"] = round(time.perf_counter() - start, 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
