"""The TVM adapter: the only module (with ``schedules/``) that calls TVM's compiler API.

TVM's API moves between releases (0.20 removed Relay; 0.26/0.27 moved tir to tirx/s_tir and contrib.cc to
support.cc): keeping every call here keeps the damage of the next move in one file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback

from ..errors import HarnessError
from .cache import ArtifactCache, BuildRequest, BuildResult, build_key



def tvm_version() -> str:
    import tvm

    return tvm.__version__


def unsupported_ops(model) -> list[str]:
    """Operators in ``model`` (an ``onnx.ModelProto``) that TVM's ONNX importer has no converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"Constant", "If"}
    return sorted({node.op_type for node in model.graph.node if node.op_type not in known})


def check_importable(model, name: str) -> None:
    """Refuse a model with operators the compiler cannot handle, naming them, the outputs they feed and the
    outputs to keep instead (before anything is measured)."""
    from ..models.onnx_io import compilable_outputs, outputs_fed_by

    missing = unsupported_ops(model)
    if not missing:
        return
    fed = outputs_fed_by(model, set(missing))
    ops = ", ".join(f"{op} (feeds output {', '.join(map(repr, fed[op]))})" if fed[op] else op for op in missing)
    keep = compilable_outputs(model, set(missing))
    # json.dumps of a list of names is also its TOML spelling
    fix = (f"keep only what TVM can compile with outputs = {json.dumps(keep)} in the model's [[models]] table, or "
           "replace the operator(s) in the model") if keep else \
        "replace them in the model (e.g. re-export with a different opset) or decompose them"
    raise HarnessError(f"model {name}: operator(s) {ops} not supported by TVM {tvm_version()}'s ONNX importer; {fix}")


def make_target(target: dict):
    """A ``tvm.target.Target`` from a target dict (0.27 rejects ``"llvm -mcpu=..."`` strings)."""
    import tvm

    return tvm.target.Target(target)


def import_onnx(req: BuildRequest):
    """The variant's ONNX as a Relax module at the request's static input shapes and dtypes (weights as constants),
    plus the ``onnx.ModelProto`` as loaded. The kernel survey (``survey``) imports through here too, so it sees the
    same shapes as the compile. Shape arithmetic is folded at those shapes first (``models.fold``): TVM's importer
    fails on some of the chains torch exports emit; weight initializers keep their names."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from ..models.fold import fold_static

    model = onnx.load(str(req.onnx_path))
    shapes = {s.name: list(s.shape) for s in req.inputs}
    dtypes = {s.name: s.dtype for s in req.inputs}
    mod = from_onnx(fold_static(model, shapes, dtypes), shape_dict=shapes, dtype_dict=dtypes,
                    keep_params_in_input=False)
    return mod, model


def weight_names(model) -> dict[str, str]:
    """``{schedules.choose.weight_digest([N, K] view): initializer name}`` for every weight a layer may use, in
    each orientation the importer may hand to the rewrite (as stored, transposed, conv [O, I*kh*kw])."""
    from onnx import numpy_helper

    from schedules.choose import weight_digest

    names: dict[str, str] = {}
    for init in model.graph.initializer:
        if len(init.dims) < 2:
            continue
        array = numpy_helper.to_array(init)
        views = (array, array.T) if array.ndim == 2 else (array.reshape(array.shape[0], -1),)
        for view in views:
            names.setdefault(weight_digest(view), init.name)
    return names


def survey(req: BuildRequest) -> list[tuple[str, object, int, object]]:
    """The layers a build of ``req`` will ask kernels for: ``(layer_key, weight [N, K], batch M, cpu, conv)`` each,
    in program order (``cpu`` is the target's ``CpuInfo``, or a ``GpuInfo`` for CUDA; ``conv`` an NCHW conv's
    (images, pixels), whose kernel is `conv_nchw`'s, else None). Compiles nothing."""
    from schedules import rewrite_module
    from schedules.choose import SurveyChooser

    mod, _ = import_onnx(req)
    chooser = SurveyChooser()
    rewrite_module(mod, make_target(req.target), chooser=chooser, survey_only=True)
    return [(key, *layer) for key, layer in chooser.layers.items()]


def export_bundle(kernels, cpu, target: dict, toolchain, out_dir) -> tuple[str, str, list[dict]]:
    """Compile a timing bundle (``schedules.bundle``) for ``target`` with the profile's ``toolchain`` into
    ``out_dir``: returns (library path, arrays ``.npz`` path, the timer's kernel specs). A CUDA bundle's kernels
    travel as a build's do (``toolchains.cuda_plan``): a fatbin when nvcc here knows the GPU, so the board's
    runtime-only timer can load them."""
    import numpy as np

    from schedules.bundle import timing_bundle

    from .toolchains import cuda_plan

    mod, arrays, specs = timing_bundle(kernels, cpu)
    ex = tvm_compile(mod, target)
    lib = os.path.join(str(out_dir), "kernels.so")
    cuda = cuda_plan(target.get("arch", "")) if target.get("kind") == "cuda" else None
    _export(ex, lib, toolchain, cuda, make_target(target))
    npz = os.path.join(str(out_dir), "kernels.npz")
    np.savez_compressed(npz, **arrays)
    return lib, npz, specs


def tvm_compile(mod, target: dict):
    """Compile a Relax module for ``target`` (a target dict) with `_build`."""
    return _build(mod, make_target(target))


def _build(mod, target):
    """``tvm.compile`` for a ``tvm.target.Target``. On an LLVM CPU target the Relax pipeline is
    ``schedules.generic.cpu_pipeline``: TVM's default CPU pipeline applies no schedule, so every operator our
    rewrite did not replace would run as a naive serial loop nest. Other targets (CUDA) keep TVM's own pipeline,
    which applies dlight's GPU rules."""
    import tvm

    if target.kind.name != "llvm":
        return tvm.compile(mod, target=target)
    from schedules.generic import cpu_pipeline

    return tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target))


def _compile(req: BuildRequest, out_path, toolchain=None, cuda=None) -> list[dict]:
    mod, model = import_onnx(req)
    target = make_target(req.target)
    layers: list[dict] = []
    if req.kernels == "ours":
        from schedules import rewrite_module
        from schedules.choose import PlanChooser

        # the plan's choices were measured on the device (compile/select.py); nothing is timed here
        chooser = PlanChooser(req.plan.table()) if req.plan is not None else None
        mod, layers = rewrite_module(mod, target, chooser=chooser, names=weight_names(model))
    ex = _build(mod, target)
    _export(ex, out_path, toolchain, cuda, target)
    return [dict(layer) for layer in layers]


def _export(ex, out_path, toolchain, cuda, target) -> None:
    """Link with the profile's toolchain (``compile/toolchains.py``); for CUDA, swap the kernels' source for a
    fatbin compiled here when ``cuda.ahead``, so the board's runtime loads them without a compiler."""
    from tvm.support import cc

    fcompile = None if toolchain is None or toolchain.name == "native" else cc.cross_compiler(toolchain.compiler)
    fpack = _fatbin_packer(ex, cuda, target) if cuda is not None and cuda.ahead else None
    ex.export_library(str(out_path), fcompile=fcompile, fpack_imports=fpack)


@contextlib.contextmanager
def _on_path(folder: str):
    """``folder`` first on PATH while inside (the compile lock keeps concurrent builds out of each other's way)."""
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = folder + os.pathsep + before
    try:
        yield
    finally:
        os.environ["PATH"] = before


def _fatbin_packer(ex, cuda, target):
    """An ``fpack_imports`` for ``export_library``: TVM's packed imports with every CUDA module's source replaced by
    its nvcc fatbin (TVM 0.27 keeps device code as source when this host has no CUDA runtime)."""
    import tvm_ffi
    from tvm.support import nvcc

    from .toolchains import replace_cuda_code

    def walk(mod, seen):
        for sub in mod.imports:
            if sub not in seen:
                seen.append(sub)
                walk(sub, seen)
        return seen

    modules = walk(ex.mod, [ex.mod])  # a model's VM module imports its host code; a bundle's module is host code
    sources = {}
    # TVM runs "nvcc" from PATH: the plan's (e.g. the cuda extra's, in this venv) must be the one found
    with target, _on_path(os.path.dirname(cuda.nvcc)):  # nvcc.compile_cuda reads the arch of the current target
        for sub in modules:
            if sub.kind == "cuda":
                src = sub.inspect_source("cuda").encode()
                sources[src] = bytes(nvcc.compile_cuda(src.decode(), target_format="fatbin", arch=cuda.gencode(),
                                                       compiler="nvcc"))
    llvm_target = next(sub.get_function("_get_target_string")() for sub in modules if sub.kind == "llvm")

    def fpack_imports(mod, is_system_lib, prefix, workspace_dir):
        blob = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes()
        packed = replace_cuda_code(blob, sources)
        obj = tvm_ffi.get_global_func("codegen.codegen_blob")(packed, is_system_lib, llvm_target, prefix)
        path = os.path.join(workspace_dir, f"{prefix}devc.o")
        obj.write_to_file(path)
        return path

    return fpack_imports


def build(req: BuildRequest, cache: ArtifactCache | None = None) -> BuildResult:
    """Compile ``req`` into an exported ``.so`` (or reuse the cached one). Never raises for a compile failure:
    the result carries ``error`` = ``"compile: <message>"`` so one bad variant becomes one error row.

    ``req.toolchain`` links it (``compile/toolchains.py``); a CUDA target's kernels are compiled ahead to a fatbin
    when nvcc knows the GPU, else shipped as source (``notes`` says what the board then needs)."""
    from .toolchains import cuda_plan, find_toolchain

    cache = cache or ArtifactCache()
    version = tvm_version()
    try:
        toolchain = find_toolchain(req.toolchain)
    except HarnessError as err:
        return BuildResult(key="", artifact=None, artifact_bytes=None, compile_s=None, cached=False,
                           tvm_version=version, error=f"toolchain: {err}")
    cuda = cuda_plan(req.target["arch"]) if req.target.get("kind") == "cuda" else None
    linker = toolchain.identity + (f"+{cuda.identity}" if cuda else "")
    notes = [cuda.note] if cuda else []
    key = build_key(req, version, linker)
    hit = cache.lookup(key)
    if hit is not None:
        return hit
    tmp = cache.temp_path(key)  # this builder's own: a concurrent builder of the same key writes another
    start = time.perf_counter()
    try:
        layers = _compile(req, tmp, toolchain, cuda)
    except Exception as err:  # a failed compile is a row, not an aborted sweep
        tmp.unlink(missing_ok=True)
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        return BuildResult(key=key, artifact=None, artifact_bytes=None, compile_s=None, cached=False,
                           tvm_version=version, error=f"compile: {last[:2000]}", toolchain=linker)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    compile_s = time.perf_counter() - start
    request = {"onnx_path": str(req.onnx_path), "onnx_sha256": req.onnx_sha256,
               "inputs": [spec.to_json() for spec in req.inputs], "target": req.target, "kernels": req.kernels,
               "toolchain": req.toolchain}
    plan = req.plan.to_json() if req.plan is not None else None
    try:
        lib = cache.store(key, compile_s, layers, version, {"toolchain": linker, "notes": notes, "request": request,
                                                            "plan": plan}, built=tmp)
    except OSError as err:  # a full or read-only cache disk: this variant's row says so, the sweep goes on
        tmp.unlink(missing_ok=True)
        return BuildResult(key=key, artifact=None, artifact_bytes=None, compile_s=compile_s, cached=False,
                           tvm_version=version, error=f"cache: cannot store the artifact in {tmp.parent} ({err}); "
                           "free space there or point SPARSEBENCH_CACHE at a writable disk", toolchain=linker)
    return BuildResult(key=key, artifact=lib, artifact_bytes=lib.stat().st_size, compile_s=compile_s, cached=False,
                       layers=tuple(layers), tvm_version=version, toolchain=linker, notes=tuple(notes))
