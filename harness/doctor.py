"""``sparsebench doctor DEVICE``: is this device ready to benchmark, and if not, which command fixes it?

The board package is uploaded and its probe (``harness/board/probe.py``, standard library only) runs on the device
and returns JSON; :func:`diagnose` turns that JSON into findings (OK / WARN / MISSING), each missing or doubtful
piece with the exact command that fixes it. With ``--target`` the report also lists what the profile says the
device needs and the preparation steps to run before measuring. Pure host-side logic, so it is tested on recorded
probe outputs.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass

from .device.preflight import TVM_PIN, VENV, VENV_INSTALL
from .paths import BOARD_DIR

#: The probe as a file (run alone by tests); on devices it runs as ``sparsebench_board.probe``.
PROBE_FILE = BOARD_DIR / "probe.py"
GOVERNOR_FIX = "echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
MIN_PYTHON = (3, 10)  # apache-tvm 0.27 wheels
MIN_GLIBC = (2, 28)  # manylinux_2_28 wheels
LOW_DISK_MB = 500
LOW_MEMORY_MB = 512
HOT_C = 80.0
# vcgencmd get_throttled bits (DEVICE_FACTS): now (0-3) and since boot (16-19)
THROTTLE_BITS = {0: "under-voltage", 1: "frequency capped", 2: "throttled", 3: "soft temperature limit"}


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``status`` is OK, WARN or MISSING; ``fix`` the command (or step) that fixes it."""

    status: str
    item: str
    detail: str
    fix: str = ""


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text or "")[:3])


def _runtime_fix(probe: dict, runtime: dict, what: str) -> str:
    """The command that gives ``runtime`` (a probed Python) numpy and/or the TVM runtime on this device."""
    os_ = probe["os"]
    python = runtime.get("requested", "python3")
    if os_.get("android") or os_.get("termux"):
        if what == "numpy":
            return "pkg install python-numpy   (in Termux)"
        return ("no apache-tvm wheel exists for Android/Termux (bionic libc): build the TVM runtime from source in "
                "Termux, or cross-build it with the NDK (https://tvm.apache.org/docs/install/from_source.html)")
    if runtime.get("venv"):
        return f"{python} -m pip install numpy {TVM_PIN}"
    prefix = "" if probe["python"].get("venv_module", True) else "sudo apt install -y python3-venv && "
    why = " (this system's pip is blocked, PEP 668)" if os_.get("externally_managed") else ""
    return f"{prefix}{VENV_INSTALL}, then run with --python {VENV}/bin/python{why}"


def diagnose(probe: dict, *, python: str, profile=None, host_tvm: str | None = None) -> list[Finding]:
    """Findings for a probe report; ``python`` is the interpreter the runner will use on the device."""
    found: list[Finding] = []
    os_, cpu, mem, disk = probe["os"], probe["cpu"], probe["memory"], probe["disk"]
    machine = (os_.get("machine") or "").lower()

    # -- OS, libc, architecture --------------------------------------------------------------------------------
    libc = f", {os_['libc']} {os_['libc_version']}" if os_.get("libc") else (", bionic libc" if os_.get("android")
                                                                              else "")
    found.append(Finding("OK", "os", f"{os_['pretty_name']}, kernel {os_['kernel']}, {machine}{libc}"
                                     + (f" ({os_['model']})" if os_.get("model") else "")
                                     + (f", {os_['l4t']}" if os_.get("l4t") else "")))
    if machine.startswith("arm") and machine not in ("arm64",):
        found.append(Finding("MISSING", "architecture", f"{machine} is 32-bit ARM: there is no 32-bit TVM wheel",
                             "install a 64-bit OS (e.g. Raspberry Pi OS 64-bit)"))
    if os_.get("libc") == "glibc" and _version(os_.get("libc_version")) < MIN_GLIBC:
        found.append(Finding("WARN", "glibc", f"glibc {os_['libc_version']} is older than 2.28: the apache-tvm "
                                              "wheel (manylinux_2_28) will not install",
                             "upgrade the OS (JetPack 5+, Ubuntu 20.04+, Debian 11+) or build the TVM runtime from "
                             "source"))
    if profile is not None:
        triple = str(profile.tvm_target.get("mtriple", ""))
        want = triple.split("-")[0]
        have = {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)
        if want and have and want != have:
            found.append(Finding("MISSING", "profile", f"profile {profile.name!r} compiles for {want}, but this "
                                                       f"device is {have}", "choose the matching --target"))
        elif ("android" in triple) != bool(os_.get("android")):
            found.append(Finding("WARN", "profile", f"profile {profile.name!r} targets {triple}; this device "
                                                    f"{'is' if os_.get('android') else 'is not'} Android"))

    # -- CPU, clocks, memory, disk -----------------------------------------------------------------------------
    freq = f", max {cpu['max_freq_khz'] / 1000:.0f} MHz" if cpu.get("max_freq_khz") else ""
    found.append(Finding("OK", "cpu", f"{cpu.get('model') or 'unknown model'}, {cpu.get('cores')} cores "
                                      f"({cpu.get('affinity')} usable){freq}"))
    governors = cpu.get("governors") or {}
    if not governors:
        found.append(Finding("WARN", "governor", "no cpufreq interface (a VM, a container or no root on Android): "
                                                 "the clock cannot be checked or pinned"))
    elif set(governors) == {"performance"}:
        found.append(Finding("OK", "governor", "performance on every core"))
    else:
        detail = ", ".join(f"{g} x{n}" for g, n in sorted(governors.items()))
        fix = ("needs root: not settable from Termux; keep the phone cool and the screen on" if os_.get("android")
               else GOVERNOR_FIX)
        found.append(Finding("WARN", "governor", f"{detail}: clocks move during a measurement", fix))
    if mem.get("total_mb"):
        low = (mem.get("available_mb") or 0) < LOW_MEMORY_MB
        found.append(Finding("WARN" if low else "OK", "memory",
                             f"{mem['total_mb']} MB, {mem.get('available_mb')} MB available",
                             "close other programs on the device" if low else ""))
    if "free_mb" in disk:
        low = disk["free_mb"] < LOW_DISK_MB
        found.append(Finding("WARN" if low else "OK", "disk", f"{disk['free_mb']} MB free of {disk['total_mb']} MB "
                                                             f"at {disk['path']}",
                             "free some space, or use --remote-root DIR on a bigger disk" if low else ""))
    else:
        found.append(Finding("WARN", "disk", f"cannot read free space at {disk.get('path')}: {disk.get('error')}"))

    # -- Python, numpy, TVM runtime ----------------------------------------------------------------------------
    py = probe["python"]
    found.append(Finding("OK", "python", f"{py['executable']} {py['version']} (ran the probe)"))
    runtimes = {r["requested"]: r for r in probe.get("runtimes", [])}
    runtime = runtimes.get(python) or next(iter(runtimes.values()), None)
    venv_rt = runtimes.get(f"{VENV}/bin/python")
    if runtime is None:
        found.append(Finding("MISSING", "tvm runtime", "the probe did not check the runner's Python"))
    elif "error" in runtime:
        if os_.get("termux"):
            fix = "pkg install python python-numpy   (in Termux), then build the TVM runtime"
        elif python == f"{VENV}/bin/python":
            fix = _runtime_fix(probe, {"requested": python}, "tvm")
        else:
            fix = f"check --python (or [device].python in the profile), or make the venv: {VENV_INSTALL}"
        found.append(Finding("MISSING", "runner python", f"no usable Python at {python} ({runtime['error']})",
                             fix))
    else:
        where = f"{runtime['executable']} (Python {runtime['python']})"
        if _version(runtime["python"]) < MIN_PYTHON:
            found.append(Finding("MISSING", "runner python", f"{where}: apache-tvm 0.27 needs Python >= 3.10",
                                 "install Python >= 3.10 on the device (e.g. Miniforge) and make the venv with it, "
                                 "or build the TVM runtime from source"))
        for name in ("numpy", "tvm"):
            label = "numpy" if name == "numpy" else "tvm runtime"
            if name + "_error" in runtime:
                fix = _runtime_fix(probe, runtime, name)
                if venv_rt and venv_rt is not runtime and "numpy" in venv_rt and "tvm" in venv_rt:
                    fix = f"{VENV}/bin/python has both: run with --python {VENV}/bin/python"
                found.append(Finding("MISSING", label, f"{where} cannot import {name} "
                                                       f"({runtime[name + '_error']})", fix))
            else:
                found.append(Finding("OK", label, f"{name} {runtime[name]} in {where}"
                                                  + (" with TVM_USE_RUNTIME_LIB=1" if name == "tvm" else "")))
        if "tvm" in runtime and host_tvm and _version(runtime["tvm"])[:2] != _version(host_tvm)[:2]:
            found.append(Finding("MISSING", "tvm version", f"device runtime {runtime['tvm']}, host compiler "
                                                           f"{host_tvm}: artifacts need the same release",
                                 f"{runtime['executable']} -m pip install apache-tvm=={host_tvm}"))
    if os_.get("l4t") and profile is not None and "cuda" in profile.tvm_targets:
        found.append(Finding("WARN", "cuda runtime", "the apache-tvm wheel's CUDA runtime needs CUDA 13 "
                                                     "(JetPack 7); on older JetPack, GPU runs need the runtime "
                                                     "built from source"))

    found.extend(_sensor_findings(probe, profile))
    found.extend(_thermal_findings(probe))
    return found


def _sensor_findings(probe: dict, profile) -> list[Finding]:
    s, os_ = probe["sensors"], probe["os"]
    model = os_.get("model") or ""
    out, kinds = [], []
    rails = [r["label"] for r in s.get("ina3221_hwmon", []) if r.get("label") and r["label"] != "NC"
             and "sum of shunt" not in r["label"].lower()]
    if rails:
        kinds.append("jetson-ina3221-hwmon")
        out.append(Finding("OK", "power sensor", f"INA3221 (hwmon): {', '.join(rails)}"))
    iio = [r["label"] for r in s.get("ina3221x_iio", []) if r.get("label")]
    if iio:
        kinds.append("jetson-ina3221-iio")
        out.append(Finding("OK", "power sensor", f"INA3221 (iio): {', '.join(iio)}"))
    if s.get("tegrastats"):
        kinds.append("jetson-tegrastats")
        out.append(Finding("OK", "power sensor", f"tegrastats at {s['tegrastats']}"))
    pmic = s.get("pmic_read_adc")
    if pmic and pmic.get("works"):
        kinds.append("rpi5-pmic")
        out.append(Finding("OK", "power sensor", "Pi 5 PMIC (vcgencmd pmic_read_adc)"))
    elif model.startswith("Raspberry Pi 5"):
        err = (pmic or {}).get("err", "") if s.get("vcgencmd") else "vcgencmd not found"
        fix = ("sudo usermod -aG video $USER, then log in again" if re.search(r"VCHI|ermission|/dev/vc", err)
               else "use Raspberry Pi OS (it ships vcgencmd) and update its firmware")
        out.append(Finding("WARN", "power sensor", f"Pi 5 PMIC not readable ({err or 'no rail lines'})", fix))
    for supply in s.get("power_supply", []):
        if supply.get("type") == "Battery":
            kinds.append("android-battery")
            charging = supply.get("status") == "Charging"
            out.append(Finding("WARN" if charging else "OK", "power sensor",
                               f"battery fuel gauge at {supply['path']} ({supply.get('status')})",
                               "unplug USB (use sshd over Wi-Fi) or disable charging during energy runs"
                               if charging else ""))
    for zone in s.get("rapl", []):
        kinds.append("linux-rapl")
        if zone.get("readable"):
            out.append(Finding("OK", "power sensor", f"RAPL {zone.get('name')} at {zone['path']}"))
        else:
            out.append(Finding("WARN", "power sensor", f"RAPL {zone.get('name')} at {zone['path']} is root-only",
                               "sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj   (until reboot)"))
    if not kinds:
        fix = ("the Pi 4 has no power sensor: use an external USB power meter ([measure].meter_command in the "
               "run config)" if model.startswith("Raspberry Pi 4") else "")
        out.append(Finding("WARN", "power sensor", "none found: energy will be reported as unavailable", fix))
    if profile is not None and profile.energy and not set(profile.energy) & set(kinds + ["external-meter"]):
        out.append(Finding("WARN", "power sensor", f"profile {profile.name!r} expects {', '.join(profile.energy)}; "
                                                   "not found on this device"))
    if s.get("nvpmodel") or s.get("jetson_clocks"):
        mode = probe["thermal"].get("nvpmodel")
        out.append(Finding("WARN", "jetson clocks", f"power mode: {mode or 'unknown (nvpmodel -q)'}; clocks are not "
                                                    "known to be pinned", "sudo jetson_clocks"))
    return out


def _thermal_findings(probe: dict) -> list[Finding]:
    t = probe["thermal"]
    out = []
    zones = t.get("zones_c") or {}
    if zones:
        name, hottest = max(zones.items(), key=lambda kv: kv[1])
        hot = hottest >= HOT_C
        out.append(Finding("WARN" if hot else "OK", "temperature", f"max {hottest:.1f} C ({name}), "
                                                                   f"{len(zones)} thermal zones",
                           "let the device cool down; add a heatsink or fan" if hot else ""))
    else:
        out.append(Finding("OK", "temperature", "no thermal zones exposed"))
    if "throttled" in t:
        try:
            bits = int(t["throttled"], 16)
        except ValueError:
            bits = 0
        now = [text for bit, text in THROTTLE_BITS.items() if bits >> bit & 1]
        past = [text for bit, text in THROTTLE_BITS.items() if bits >> (bit + 16) & 1]
        if not bits:
            out.append(Finding("OK", "throttling", "throttled=0x0"))
        else:
            fix = ("use the official power supply (27 W for Pi 5, 15 W for Pi 4)" if bits & 0x10001
                   else "improve cooling (heatsink, fan)")
            out.append(Finding("WARN", "throttling", f"throttled={t['throttled']}: now: {', '.join(now) or 'none'}; "
                                                     f"since boot: {', '.join(past) or 'none'}", fix))
    return out


def profile_steps(profile) -> dict:
    """What a profile says about its device: ``{"name", "needs": [text], "prepare": [commands]}`` (``--json``)."""
    return {"name": profile.name, "needs": list(profile.needs), "prepare": list(profile.prepare)}


def format_report(device: str, transport: str, probe_python: str, probe: dict, findings: list[Finding],
                  profile=None) -> str:
    """The report: one line per finding (with its fix), the profile's needs and preparation steps when a profile
    is given, and the verdict as the last line."""
    lines = [f"sparsebench doctor: {device} ({transport}), probe ran in {probe.get('probe_s', 0):.1f} s "
             f"with {probe_python}"]
    for f in findings:
        lines.append(f"  {f.status:8s} {f.item:14s} {f.detail}")
        if f.fix:
            lines.append(f"  {'':8s} {'':14s} fix: {f.fix}")
    if profile is not None and profile.needs:
        lines.append(f"profile {profile.name} needs on the device:")
        lines.extend(f"  - {need}" for need in profile.needs)
    if profile is not None and profile.prepare:
        lines.append(f"profile {profile.name}: before measuring, run on the device:")
        lines.extend(f"  $ {step}" for step in profile.prepare)
    missing = sum(f.status == "MISSING" for f in findings)
    warns = sum(f.status == "WARN" for f in findings)
    if missing:
        lines.append(f"result: NOT READY: {missing} missing, {warns} warnings; run the fix commands on the device")
    else:
        lines.append(f"result: ready to benchmark ({warns} warnings)")
    return "\n".join(lines)


def run_probe(transport, pythons: list[str], *, probe_pythons: list[str]) -> tuple[dict, str]:
    """Upload the board package, run its probe with the first of ``probe_pythons`` that exists; (report, python
    used)."""
    from .device.ship import board_command, upload_board
    from .transports import TransportError

    workdir = transport.make_workdir("doctor")
    try:
        upload_board(transport, workdir)
        tried = []
        for python in dict.fromkeys(probe_pythons):
            res = transport.run(board_command(python, "probe", *pythons), timeout_s=300, cwd=workdir)
            if res.ok:
                try:
                    return json.loads(res.stdout.strip().splitlines()[-1]), python
                except (ValueError, IndexError):
                    raise TransportError("run", f"device {transport.device}: the probe printed no report "
                                                f"({res.tail(3)})", res) from None
            tried.append(f"{python}: {res.tail(1) or f'exit {res.exit_code}'}")
        raise TransportError("run", f"device {transport.device}: no Python to run the probe ({'; '.join(tried)}); "
                                    "install one: sudo apt install -y python3 python3-venv (Debian, Raspberry Pi "
                                    "OS, JetPack), pkg install python (Termux)")
    finally:
        transport.remove(workdir)


def _gpu_finding(transport, python: str, profile) -> Finding | None:
    """For a profile with a GPU: whether the device's TVM runtime sees it (what a ``--accelerator cuda`` run checks
    first). A WARN when not: its CPU can still be measured."""
    from .device.preflight import check_cuda
    from .transports import TransportError

    if profile is None or not ({"cuda"} & {*profile.tvm_targets, *profile.unresolved}):
        return None
    try:
        found = check_cuda(transport, python)
    except TransportError as err:
        why = str(err).split("cannot run on its GPU: ", 1)[-1]
        return Finding("WARN", "gpu", f"--accelerator cuda cannot run here: {why.split('; ')[0]}",
                       "check the NVIDIA driver (nvidia-smi; JetPack 7 on a Jetson for the wheel's CUDA 13 runtime)")
    arch = profile.tvm_targets.get("cuda", {}).get("arch", "")
    return Finding("OK", "gpu", f"{found.get('name')} (compute {found.get('compute_version')}) for TVM's runtime"
                                + (f"; the profile compiles for {arch}" if arch else ""))


def doctor(spec, *, target: str | None = None, as_json: bool = False) -> int:
    """Probe the device ``spec`` names, print the report; 0 when ready, 1 when something required is missing."""
    from .config import load_target
    from .device.preflight import host_tvm_version

    profile = load_target(target) if target else None
    transport = spec.transport(profile, run_name=f"doctor-{time.strftime('%Y%m%d-%H%M%S')}")
    if transport.name == "rpc":
        return _doctor_rpc(transport, profile, as_json)
    python = spec.python_for(profile) or transport.default_python()
    with transport:
        checks = [python] + ([f"{VENV}/bin/python"] if python != f"{VENV}/bin/python" else [])
        probe, used = run_probe(transport, checks, probe_pythons=[transport.default_python(), "python3", python])
        gpu = _gpu_finding(transport, python, profile)
    if as_json:
        print(json.dumps({**probe, "profile": profile_steps(profile)} if profile else probe, indent=2))
        return 0
    findings = diagnose(probe, python=python, profile=profile, host_tvm=host_tvm_version()) + ([gpu] if gpu else [])
    print(format_report(transport.device, transport.name, used, probe, findings, profile))
    sys.stdout.flush()
    return 1 if any(f.status == "MISSING" for f in findings) else 0


def _doctor_rpc(transport, profile, as_json: bool) -> int:
    """A board behind TVM's RPC tracker has no shell: report what the tracker and the server tell (servers for the
    key, the board's LLVM triple and runtime threads when its server says them) and check the triple against the
    profile; 0 when a session was granted and nothing contradicts the profile, 1 otherwise."""
    from .farm.status import profile_mismatch

    with transport:
        probe = transport.probe()
    mismatch = profile_mismatch(profile, probe.get("machine")) if profile else None
    if as_json:
        print(json.dumps({**probe, "profile_mismatch": mismatch}, indent=2))
        return 1 if mismatch else 0
    rows = [("session", f"granted by the tracker for key {transport.key}"),
            ("servers", f"{probe.get('servers')} registered for the key" if probe.get("servers") is not None
             else "unknown"),
            ("machine", probe.get("triple") or "not reported (the server has the TVM runtime only)"),
            ("threads", str(probe.get("threads")) if probe.get("threads") is not None else "not reported"),
            ("tvm", probe.get("tvm_note") or "unknown"),
            ("energy", "unavailable: rpc transport (no shell on the board to read its sensors)")]
    if profile and not probe.get("machine"):
        rows.append(("profile", f"{profile.name}: not checked (no triple reported)"))
    elif profile:
        rows.append(("profile", mismatch or f"{profile.name}: the board's triple fits"))
    print(f"doctor: {transport.device} (rpc)")
    for item, detail in rows:
        print(f"  {item:<9} {detail}")
    return 1 if mismatch else 0
