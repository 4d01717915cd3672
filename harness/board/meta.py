"""What the device is like, collected on the device: metadata stored with every result, the fingerprint that says
whether two kernel timings are comparable, and the thread setting both the runner and the timer apply.

Standard library only (numpy and TVM are asked for their versions if present); never imports TVM before
:func:`set_threads` has run in the same process, because TVM sizes its thread pool once, when it starts.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

#: Version of the board package's result formats; stored as ``device_meta["runner_version"]``.
RUNNER_VERSION = 1


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def available_cores() -> int:
    """Cores this process may run on (affinity mask first: containers and taskset restrict it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_affinity(cpus) -> list:
    """Pin this process (and the threads it starts later: TVM's pool, onnxruntime's) to ``cpus``; returns the CPUs
    it may run on afterwards (all of them when ``cpus`` is empty, or where the OS has no affinity call)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(int(c) for c in cpus))
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_freqs_khz(cpus) -> list:
    """Current clock of each of ``cpus`` in kHz (``scaling_cur_freq``), the ones the device exposes; [] without
    cpufreq (most VMs)."""
    freqs = (_int(_read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq")) for c in cpus)
    return [f for f in freqs if f]


def set_threads(threads: int | None) -> int:
    """Fix TVM's thread pool size before TVM starts it (it cannot grow afterwards).

    Without this TVM uses half the logical CPUs on x86 (it assumes hyper-threading), which on a 2-vCPU VM means
    one thread while numpy uses two: every comparison would be off by 2x. An explicit ``TVM_NUM_THREADS`` wins.
    """
    if "TVM_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(threads or available_cores())
    return int(os.environ["TVM_NUM_THREADS"])


def _cpu_model() -> str | None:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model") and value.strip():
            return value.strip()
    return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def device_metadata() -> dict:
    """What the device was like while it ran: CPU, clocks, governor, temperatures, load, software versions.

    Units are in the key names (``_khz``, ``_c``). A value the device does not expose is ``None``, never guessed.
    Imports TVM (for its version): call it after the measurement, or after :func:`set_threads`.
    """
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq"
    per_cpu = (_read(f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_governor") for i in range(os.cpu_count() or 1))
    governors = sorted({g for g in per_cpu if g})
    temps = {}
    thermal = Path("/sys/class/thermal")
    if thermal.is_dir():
        for zone in sorted(thermal.glob("thermal_zone*")):
            milli = _int(_read(str(zone / "temp")))
            if milli is not None:
                temps[_read(str(zone / "type")) or zone.name] = milli / 1000.0
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": available_cores(),
        "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
        "governor": ",".join(governors) if governors else None,
        "cur_freq_khz": _int(_read(f"{cpufreq}/scaling_cur_freq")),
        "max_freq_khz": _int(_read(f"{cpufreq}/cpuinfo_max_freq")),
        "temperatures_c": temps or None,
        "loadavg": load,
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "tvm": _version("tvm"),
        # only when this process ran a peer: importing onnxruntime for every TVM job would cost time and memory
        "onnxruntime": getattr(sys.modules.get("onnxruntime"), "__version__", None),
        "tvm_runtime_only": os.environ.get("TVM_USE_RUNTIME_LIB") == "1",
        "runner_version": RUNNER_VERSION,
    }


def device_fingerprint(meta: dict) -> dict:
    """The part of :func:`device_metadata` that decides kernel timings; timings with equal fingerprints compare.

    ``cpu_model`` (str or None), ``machine`` (e.g. ``aarch64``), ``cores`` (cores the process may use, affinity),
    ``tvm`` (TVM version), ``tvm_num_threads`` (TVM's thread pool size, int or None). Clocks, temperatures and load
    change between runs of the same device and are left out: they are the metadata's job.
    """
    return {
        "cpu_model": meta.get("cpu_model"),
        "machine": meta.get("machine"),
        "cores": meta.get("cpu_affinity"),
        "tvm": meta.get("tvm"),
        "tvm_num_threads": _int(meta.get("tvm_num_threads")),
    }
