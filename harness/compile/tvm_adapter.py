"""The TVM adapter: the only module (with ``schedules/``) that calls TVM's compiler API.

TVM's API moves between releases (0.20 removed Relay; 0.26/0.27 moved tir to tirx/s_tir and contrib.cc to
support.cc): keeping every call here keeps the damage of the next move in one file.
"""

from __future__ import annotations

import os
import time
import traceback

from ..errors import HarnessError
from ..paths import cache_dir
from .cache import ArtifactCache, BuildRequest, BuildResult, build_key, schedules_hash

# TVM sizes its thread pool once, on first use, from TVM_NUM_THREADS or else half the logical CPUs (it assumes
# SMT on x86): one thread on a 2-vCPU VM. Kernel timings taken here for the per-layer choice must use the
# same thread count the device runner uses (all available cores).
if hasattr(os, "sched_getaffinity"):
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def tvm_version() -> str:
    import tvm

    return tvm.__version__


def unsupported_ops(model) -> list[str]:
    """Operators in ``model`` (an ``onnx.ModelProto``) that TVM's ONNX importer has no converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"Constant", "If"}
    return sorted({node.op_type for node in model.graph.node if node.op_type not in known})


def check_importable(model, name: str) -> None:
    """Refuse a model with operators the compiler cannot handle, naming them (before anything is measured)."""
    missing = unsupported_ops(model)
    if missing:
        raise HarnessError(
            f"model {name}: operator(s) {', '.join(missing)} not supported by TVM {tvm_version()}'s ONNX importer; "
            "replace them in the model (e.g. re-export with a different opset) or decompose them"
        )


def make_target(target: dict):
    """A ``tvm.target.Target`` from a target dict (0.27 rejects ``"llvm -mcpu=..."`` strings)."""
    import tvm

    return tvm.target.Target(target)


def _compile(req: BuildRequest, out_path) -> list[dict]:
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(req.onnx_path))
    mod = from_onnx(model, shape_dict={req.input_name: list(req.input_shape)}, keep_params_in_input=False)
    target = make_target(req.target)
    layers: list[dict] = []
    if req.kernels == "ours":
        from schedules import rewrite_module
        from schedules.choose import MeasuredChooser

        chooser = None  # None: the rule in schedules (used when this machine is not the device)
        if req.choose == "measure":
            chooser = MeasuredChooser(target, cache_file=cache_dir() / "kernel_timings.json",
                                      fingerprint=schedules_hash())
        mod, layers = rewrite_module(mod, target, chooser=chooser)
    ex = tvm.compile(mod, target=target)
    ex.export_library(str(out_path))
    return [dict(layer) for layer in layers]


def build(req: BuildRequest, cache: ArtifactCache | None = None) -> BuildResult:
    """Compile ``req`` into an exported ``.so`` (or reuse the cached one). Never raises for a compile failure:
    the result carries ``error`` = ``"compile: <message>"`` so one bad variant becomes one error row."""
    cache = cache or ArtifactCache()
    version = tvm_version()
    key = build_key(req, version)
    hit = cache.lookup(key)
    if hit is not None:
        return hit
    folder = cache.folder(key)
    tmp = folder / "model.tmp.so"
    start = time.perf_counter()
    try:
        layers = _compile(req, tmp)
    except Exception as err:  # a failed compile is a row, not an aborted sweep
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        return BuildResult(key=key, artifact=None, artifact_bytes=None, compile_s=None, cached=False,
                           tvm_version=version, error=f"compile: {last[:2000]}")
    compile_s = time.perf_counter() - start
    lib = folder / "model.so"
    tmp.replace(lib)
    cache.store(key, compile_s, layers, version)
    return BuildResult(key=key, artifact=lib, artifact_bytes=lib.stat().st_size, compile_s=compile_s, cached=False,
                       layers=tuple(layers), tvm_version=version)
