"""Before a sweep: can the device's Python run the runner (numpy + the TVM runtime)? One check, one clear error.

Without it, a board missing the TVM runtime would produce one identical ERROR row per variant. The fix commands
live here so that ``sparsebench doctor`` gives the same advice.
"""

from __future__ import annotations

import json

from ..errors import HarnessError
from ..transports import Transport, TransportError

TVM_PIN = "apache-tvm==0.27.0.post1"
VENV = "~/sb-venv"
#: the install that works on Raspberry Pi OS, JetPack 6/7 and Debian-like systems (PEP 668 blocks system pip)
VENV_INSTALL = f"python3 -m venv {VENV} && {VENV}/bin/pip install numpy {TVM_PIN}"

# Runs on the device with TVM_USE_RUNTIME_LIB=1: the same imports the runner makes, nothing else (plus the peer
# runtimes asked for, which only say whether they are there: see harness.peers).
PROBE = """
import json, platform, sys
r = {"python": platform.python_version(), "executable": sys.executable}
for name in ("numpy", "tvm") + tuple(sys.argv[1:]):
    try:
        r[name] = __import__(name).__version__
    except Exception as err:
        r[name + "_error"] = type(err).__name__ + ": " + str(err)
try:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                r["mem_available_kb"] = int(line.split()[1])
except (OSError, ValueError, IndexError):  # no /proc (or an odd one): the memory check is skipped
    pass
r["machine"] = platform.machine()
try:  # one running kernel: two boards reporting the same boot id are one machine (containers on a host included)
    with open("/proc/sys/kernel/random/boot_id") as fh:
        r["boot_id"] = fh.read().strip()
except OSError:
    pass
print(json.dumps(r))
"""

#: a batch whose inputs alone take more than this share of the device's available memory is refused
MAX_INPUT_SHARE = 0.5


def last_json(stdout: str) -> dict | None:
    """The last line of a probe's output that is JSON (what it printed before may be warnings), or None."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def install_hint(python: str) -> str:
    """How to get numpy and the TVM runtime for ``python`` on the device."""
    return (f"install them in a venv on the device: {VENV_INSTALL}, then run with --python {VENV}/bin/python "
            f"(or set [device].python in the target profile); `sparsebench doctor` checks the rest")


def check_runtime(transport: Transport, python: str, *, host_tvm: str | None = None,
                  optional: tuple[str, ...] = ()) -> dict:
    """Run :data:`PROBE` with ``python`` on the device; raise TransportError("prepare", ...) naming the device and
    the fix when it cannot import numpy or the TVM runtime. Returns the probe's report: module -> version, and
    ``<module>_error`` for each module (the ``optional`` ones included) that did not import."""
    if hasattr(transport, "probe"):  # no shell on the board (rpc): what its server tells
        return _check_probe(transport, host_tvm=host_tvm, optional=optional)
    python = python or transport.default_python()
    where = f"device {transport.device}"
    res = transport.run([python, "-c", PROBE, *optional], env={"TVM_USE_RUNTIME_LIB": "1"}, timeout_s=120)
    if res.timed_out:
        raise TransportError("prepare", f"{where}: {python} did not finish `import numpy, tvm` within 120 s", res)
    report = last_json(res.stdout)
    if report is None:
        if res.exit_code == 127 or "not found" in res.stderr or "No such file" in res.stderr:
            raise TransportError("prepare", f"{where}: no Python at {python!r} ({res.tail(2)}); "
                                            f"{install_hint(python)}", res)
        raise TransportError("prepare", f"{where}: {python} failed to start (exit {res.exit_code}: {res.tail(2)})",
                             res)
    missing = [f"{name} ({report[name + '_error']})" for name in ("numpy", "tvm") if name + "_error" in report]
    if missing:
        raise TransportError("prepare", f"{where}: the remote Python {python} (Python {report['python']}) cannot "
                                        f"import {' and '.join(missing)}, which the runner needs: "
                                        f"{install_hint(python)}", res)
    if host_tvm and _minor(report["tvm"]) != _minor(host_tvm):
        raise TransportError("prepare", f"{where}: the device's TVM runtime is {report['tvm']} but this host "
                                        f"compiles with TVM {host_tvm}; artifacts need the same release: "
                                        f"{python} -m pip install apache-tvm=={host_tvm}", res)
    return report


def _check_probe(transport: Transport, *, host_tvm: str | None, optional: tuple[str, ...]) -> dict:
    """:func:`check_runtime` for a transport with a ``probe()`` (the rpc server: the TVM runtime is there by
    definition); its TVM release checked against the host's where the probe reports one."""
    report = dict(transport.probe())
    for name in optional:  # peer runtimes need a runner process on the board
        report.setdefault(name + "_error", "peers need a shell on the board; not over rpc")
    if host_tvm and report.get("tvm") and _minor(report["tvm"]) != _minor(host_tvm):
        raise TransportError("prepare", f"device {transport.device}: its TVM runtime is {report['tvm']} but this host "
                                        f"compiles with TVM {host_tvm}; artifacts need the same release: install "
                                        f"apache-tvm=={host_tvm} where its rpc_server runs")
    return report


def host_tvm_version() -> str | None:
    """The TVM release compiling on this host (the device's runtime must be the same release)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apache-tvm")
    except PackageNotFoundError:
        return None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def input_bytes(specs) -> int:
    """Bytes of one batch's inputs: ``specs`` are :class:`~harness.models.inputs.InputSpec` with static shapes."""
    import numpy as np

    total = 0
    for spec in specs:
        total += int(np.prod([int(d) for d in spec.shape], dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    return total


def check_batch_memory(device: str, probe: dict, batches: list[tuple[str, int, int]]) -> None:
    """Refuse (one :class:`HarnessError` naming the model, the batch and the fix) a batch whose inputs alone need
    more than :data:`MAX_INPUT_SHARE` of the memory the device has available (``MemAvailable`` from its
    ``/proc/meminfo``, in ``probe``; no check where the device does not say). ``batches``: (model, batch, bytes of
    that batch's inputs)."""
    available_kb = probe.get("mem_available_kb")
    if not isinstance(available_kb, int) or available_kb <= 0:
        return
    limit = available_kb * 1024 * MAX_INPUT_SHARE
    for model, batch, nbytes in batches:
        if nbytes > limit:
            per_row = nbytes / batch
            fits = max(1, int(limit // per_row)) if per_row else batch
            raise HarnessError(
                f"model {model} at batch {batch}: its inputs alone need {nbytes / 2**20:.0f} MiB, more than "
                f"{MAX_INPUT_SHARE:.0%} of the {available_kb / 1024:.0f} MiB device {device} has available; "
                f"use a batch of at most {fits} for it in the config")


# Runs on the device with TVM_USE_RUNTIME_LIB=1, as the runner does for a CUDA job: load the runtime's CUDA library
# (TVM does not load it in runtime-only mode), then ask for GPU 0.
CUDA_PROBE = """
import ctypes, json, pathlib
r = {}
try:
    import tvm
    lib = pathlib.Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent / "libtvm_runtime_cuda.so"
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_LOCAL)
    dev = tvm.cuda(0)
    r["exist"] = bool(dev.exist)
    if dev.exist:
        r["name"], r["compute_version"] = dev.device_name, dev.compute_version
except Exception as err:
    r["error"] = type(err).__name__ + ": " + str(err).strip().splitlines()[-1][:300]
print(json.dumps(r))
"""

NO_GPU_FIX = ("check the board's NVIDIA driver (nvidia-smi; on a Jetson, JetPack 7 for the wheel's CUDA 13 runtime), "
              "or measure its CPU with --accelerator cpu")


def check_cuda(transport: Transport, python: str) -> dict:
    """For a CUDA run: can the device's TVM runtime see a GPU? Raise TransportError("prepare", ...) with one line
    naming the device and the fix when not; returns ``{"exist", "name", "compute_version"}``."""
    where = f"device {transport.device}"
    if hasattr(transport, "probe"):  # rpc: ask the server's runtime through the session
        try:
            dev = transport.session.cuda(0)
            exist = bool(dev.exist)
            found = {"exist": exist, **({"name": dev.device_name, "compute_version": dev.compute_version}
                                        if exist else {})}
        except Exception as err:  # noqa: BLE001 - its rpc_server's runtime has no CUDA support at all
            found = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300] if str(err) else ''}"}
    else:
        python = python or transport.default_python()
        res = transport.run([python, "-c", CUDA_PROBE], env={"TVM_USE_RUNTIME_LIB": "1"}, timeout_s=120)
        found = last_json(res.stdout)
        if found is None:
            raise TransportError("prepare", f"{where}: the CUDA check did not run ({res.tail(2)})", res)
    if found.get("exist"):
        return found
    why = found.get("error") or "TVM's runtime sees no CUDA GPU (tvm.cuda(0) does not exist)"
    raise TransportError("prepare", f"{where}: cannot run on its GPU: {why}; {NO_GPU_FIX}")
