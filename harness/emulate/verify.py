"""``sparsebench verify ARTIFACT --emulate aarch64``: does a cross-built artifact compute what the host build does?

The artifact runs under qemu-user on the cached Debian sysroot (``sysroot.py``) through the same device runner and
session a board gets (``harness/device``), with the TVM runtime only. The same variant is built for this machine
(from the request recorded in the artifact's ``build.json``) and run locally; outputs must agree to ``rtol`` of
the output scale (max |host output|). Kernel timings under emulation mean nothing and are not reported.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import HarnessError

#: ELF e_machine values -> architecture names (artifacts are checked before anything runs)
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}


@dataclass(frozen=True)
class VerifyResult:
    """One emulated check: ``ok`` when the emulated outputs equal the host build's within ``rtol``."""

    artifact: Path
    arch: str
    ok: bool
    rtol: float  # tolerance relative to the output scale
    n_outputs: int = 0  # rows of outputs compared
    max_abs_err: float | None = None  # max |emulated - host| over all outputs
    scale: float | None = None  # max |host output|: what rtol is relative to
    host_artifact: Path | None = None
    emulated_s: float | None = None  # wall seconds of the emulated runner process (qemu start to exit)
    host_s: float | None = None  # wall seconds of the host runner process
    device_meta: dict | None = None  # what the runner reported about the emulated device (machine: aarch64)
    error: str | None = None  # "<step>: <message>" when a step failed (then ok is False)

    def summary(self) -> str:
        """One line for the user."""
        if self.error:
            return f"FAILED: {self.artifact}: {self.error}"
        verdict = "OK" if self.ok else "MISMATCH"
        machine = (self.device_meta or {}).get("machine", "?")
        return (f"{verdict}: {self.artifact} under qemu ({machine}) vs the host build: max |diff| "
                f"{self.max_abs_err:.3g} over {self.n_outputs} outputs, output scale {self.scale:.3g}, "
                f"rtol {self.rtol:g}; emulated run {self.emulated_s:.1f} s, host run {self.host_s:.1f} s")


def elf_machine(path: Path) -> str:
    """The architecture an ELF shared library was built for (``x86_64``, ``aarch64``...)."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise HarnessError(f"{path} is not an ELF shared library; give a model.so built by sparsebench")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(machine, f"machine {machine}")


def resolve_artifact(text: str | Path) -> Path:
    """An artifact given as a ``model.so`` path, its folder, or an artifact key (prefix) from the results."""
    from ..compile import ArtifactCache

    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir() and (path / "model.so").is_file():
        return (path / "model.so").resolve()
    root = ArtifactCache().root
    key = str(text)
    if len(key) >= 6 and all(ch in "0123456789abcdef" for ch in key):
        matches = [p for p in root.glob(f"{key[:32]}*") if (p / "model.so").is_file()]
        if len(matches) == 1:
            return matches[0] / "model.so"
        if len(matches) > 1:
            raise HarnessError(f"artifact key {key!r} matches {len(matches)} artifacts in {root}; give more digits")
    raise HarnessError(f"no artifact {str(text)!r}: give a model.so path, its folder, or an artifact key "
                       f"(the artifact_key column of `sparsebench results`) found in {root}")


def _request(artifact: Path) -> dict | None:
    try:
        meta = json.loads((artifact.parent / "build.json").read_text())
    except (OSError, ValueError):
        return None
    request = meta.get("request") if isinstance(meta, dict) else None  # a damaged record is no record
    if not isinstance(request, dict):
        return None
    if "inputs" not in request and "input_name" in request:  # written before models could have several inputs
        request["inputs"] = [[request["input_name"], request["input_shape"], "float32"]]
    return {**request, "plan": meta.get("plan")}


def _request_inputs(req: dict):
    from ..models.inputs import InputSpec

    return tuple(InputSpec.from_json(spec) for spec in req["inputs"])


def _host_build(req: dict, log) -> Path:
    """The same variant compiled for this machine (the `local` profile's target, native linker)."""
    from ..compile.cache import BuildRequest
    from ..compile.plan import KernelPlan
    from ..compile.tvm_adapter import build
    from ..config import load_target

    onnx_path = Path(req["onnx_path"])
    if not onnx_path.is_file():
        raise HarnessError(f"host build: the variant's model {onnx_path} is gone (caches cleared?); rebuild the "
                           "artifact with `sparsebench run`, or pass --reference HOST_MODEL.so")
    log("building the same variant for this machine")
    # the artifact's own kernel plan: the host build uses the same kernel for every layer
    plan = KernelPlan.from_json(req["plan"]) if req.get("plan") else None
    built = build(BuildRequest(onnx_path, req["onnx_sha256"], _request_inputs(req), load_target("local").tvm_target,
                               req.get("kernels", "ours"), "native", plan))
    if built.error:
        raise HarnessError(f"host build: {built.error}")
    return built.artifact


def verify_artifact(artifact: str | Path, *, arch: str = "aarch64",
                    inputs: np.ndarray | dict | str | Path | None = None, reference: str | Path | None = None,
                    batch: int | None = None, rtol: float = 1e-4, samples: int = 32,
                    log: Callable[[str], None] | None = None) -> VerifyResult:
    """Run ``artifact`` under qemu-``arch`` and compare its outputs with the host build of the same variant.

    ``inputs``: rows to evaluate -- an array or ``.npy`` (a single-input model), or a dict / ``.npz`` of arrays by
    input name; default ``samples`` seeded rows of the recorded input shapes and dtypes. ``reference``: a host
    ``model.so`` to compare with instead of building one. ``batch``: needed only for artifacts without a
    ``build.json``. Setup problems (no qemu, no sysroot, wrong architecture, inputs that do not fit) raise
    :class:`HarnessError`; a failed run or a mismatch comes back as a result with ``ok`` False.
    """
    from ..config import MeasureConfig
    from ..device.session import run_on_device
    from ..transports import LocalTransport
    from .sysroot import ensure_sysroot, get_arch
    from .transport import EmulatedTransport

    log = log or (lambda _msg: None)
    get_arch(arch)
    path = resolve_artifact(artifact)
    machine = elf_machine(path)
    if machine != arch:
        raise HarnessError(f"{path} is built for {machine}, not {arch}: build it with a profile whose toolchain "
                           f"targets {arch} (e.g. target = \"rpi5\")")
    req = _request(path)
    if req and req.get("target", {}).get("kind") == "cuda":
        raise HarnessError(f"{path} holds CUDA kernels: emulation checks CPU artifacts; build the profile's CPU "
                           "target (the [tvm].target) to check it here")
    specs = _request_inputs(req) if req else None
    if batch is None:
        if req is None:
            raise HarnessError(f"{path} has no build.json with its request: pass --batch and --reference")
        batch = specs[0].shape[0]
    inputs = _verify_inputs(inputs, specs, path, max(samples, batch))

    if reference is not None:
        host_lib = resolve_artifact(reference)
    elif req is None:
        raise HarnessError(f"{path} has no build.json with its request: pass --reference HOST_MODEL.so")
    else:
        host_lib = _host_build(req, log)
    if elf_machine(host_lib) != platform.machine():
        raise HarnessError(f"reference {host_lib} is built for {elf_machine(host_lib)}: it must run on this machine")

    sysroot = ensure_sysroot(arch, log=log)
    # Only outputs matter here: one warm-up, three timed calls, no energy window.
    quick = MeasureConfig(warmup_runs=1, warmup_s=0.0, min_runs=3, min_s=0.0, max_runs=3, rounds=1, max_rounds=1,
                          extend_s=0.0, timeout_s=1800.0,
                          energy_idle_s=0.0, energy_window_s=0.0)
    log(f"running {path.name} under qemu-{arch}")
    emu = run_on_device(EmulatedTransport(sysroot), artifact=path, inputs=inputs, batch=batch, measure=quick,
                        label="verify-emulated")
    base = dict(artifact=path, arch=arch, rtol=rtol, host_artifact=host_lib,
                emulated_s=emu.steps_s.get("run"), device_meta=(emu.result or {}).get("device_meta"))
    if emu.error:
        return VerifyResult(ok=False, error=f"emulated {emu.error}", **base)
    host = run_on_device(LocalTransport(), artifact=host_lib, inputs=inputs, batch=batch, measure=quick,
                         label="verify-host")
    base["host_s"] = host.steps_s.get("run")
    if host.error:
        return VerifyResult(ok=False, error=f"host {host.error}", **base)
    a, b = np.asarray(emu.outputs, np.float64), np.asarray(host.outputs, np.float64)
    if a.shape != b.shape:
        return VerifyResult(ok=False, error=f"compare: output shapes differ: emulated {a.shape}, host {b.shape}",
                            **base)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    ok = bool(np.isfinite(a).all() and np.isfinite(b).all() and err <= rtol * max(scale, 1e-30))
    return VerifyResult(ok=ok, n_outputs=int(a.shape[0]), max_abs_err=err, scale=scale, **base)


def _verify_inputs(given, specs, path: Path, rows: int) -> dict[str, np.ndarray]:
    """The rows to evaluate, by input name: seeded ones of the recorded inputs, or the ones given (an array or
    ``.npy`` for a single input, a dict or ``.npz`` by input name), checked against the recorded inputs."""
    from ..models.inputs import synthetic_inputs

    if given is None:
        if specs is None:
            raise HarnessError(f"{path} has no build.json with its input shapes: pass --inputs X.npy (or an .npz "
                               "with one array per input name)")
        return synthetic_inputs(specs, n=rows)
    if isinstance(given, (str, Path)):
        source = Path(given)
        try:
            if source.suffix == ".npz":
                with np.load(source, allow_pickle=False) as data:
                    given = {name: data[name] for name in data.files}
            else:
                given = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise HarnessError(f"--inputs {source}: not a readable .npy/.npz ({err})") from None
    if not isinstance(given, dict):
        if specs is not None and len(specs) != 1:
            raise HarnessError(f"{path} takes {len(specs)} inputs ({', '.join(s.name for s in specs)}): give an .npz "
                               "with one array per input name")
        given = {specs[0].name if specs else "x": given}
    if specs is None:
        return {name: np.ascontiguousarray(a) for name, a in given.items()}
    out = {}
    for spec in specs:
        array = given.get(spec.name, given.get("x") if len(specs) == 1 else None)
        if array is None:
            raise HarnessError(f"inputs for {path}: no array {spec.name!r} (has: {', '.join(given)}); name the "
                               "arrays by input name")
        array = np.asarray(array)
        if tuple(array.shape[1:]) != tuple(spec.shape[1:]) or np.dtype(spec.dtype).kind != array.dtype.kind:
            raise HarnessError(f"inputs for {path}: {spec.name!r} expects rows of {list(spec.shape[1:])} "
                               f"{spec.dtype}, got {list(array.shape[1:])} {array.dtype}")
        out[spec.name] = np.ascontiguousarray(array.astype(spec.dtype, copy=False))
    return out
