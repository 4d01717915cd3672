"""Host side of the GPU check: prune, compile for CUDA (fatbins), and write the bundle ``check.py`` runs.

See the package docstring for the commands. Everything intermediate (pruned ONNX files, the artifact cache) lives
in a temporary folder that is removed afterwards (``--keep-build`` keeps it); only the bundle stays.
"""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import Method
from ..errors import HarnessError
from .check import block_mask, generate, layout, sha256

#: Bumped when the bundle's layout changes (check.py refuses a manifest of another format).
FORMAT = 1

#: TVM runtime pinned for the device (TVM_NOTES: ffi 0.1.14.post1 beside apache-tvm 0.27.0.post1).
TVM_WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1")
#: Parts of the apache-tvm wheel a device does not need: the compiler library and sources (~260 MB).
TVM_SKIP = ("tvm/lib/libtvm_compiler.so", "tvm/3rdparty/", "tvm/src/", "tvm/web/")

#: Host side of the CUDA target: generic x86-64 (the VM glue only; the GPU machine's CPU is unknown here).
HOST_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"}

#: Weight byte ranges shorter than this stay in the shipped artifact.
MIN_HOLE = 4096

#: What a bundle should stay under: the device tool copies at most 64 MiB of working tree, the repository included.
TRAVEL_LIMIT = 60 * 2**20

#: Max |output - reference| / max |reference| for an output check to pass.
TOLERANCE = 1e-4


@dataclass(frozen=True)
class ModelSpec:
    """A model of the check: seeded random layers (W [N, K] ~ N(0, 1/K), b ~ N(0, 0.02^2), then the evaluation rows
    x ~ N(0, 1), drawn in that order from ``default_rng(seed)``: how the zoo's ffn-768 is made), ReLU between
    layers. ``zoo``: the model comes from the zoo (and must equal this recipe), else it is written here."""

    name: str
    layers: tuple[tuple[int, int], ...]  # (N, K) per layer
    batches: tuple[int, ...]
    seed: int
    eval_rows: int
    zoo: bool = False

    @property
    def recipe(self) -> dict:
        return {"seed": self.seed, "layers": [list(l) for l in self.layers], "eval_rows": self.eval_rows,
                "weight_std": "1/sqrt(K)", "bias_std": 0.02}



def ours_plan(req, variant):
    """A plan giving every layer *our* CUDA kernel for the variant's pattern (dense, BSR 16x1, BSR 1x1 for
    unstructured): the check times our kernels against TVM's default build, so the rule (which, on CUDA, leaves every
    layer to TVM: schedules/cuda_measurements.json) must not decide here."""
    from harness.compile.plan import forced_plan

    sparse = ("dense", None) if variant.method == "dense" else \
        ("bsr", tuple(variant.block) if variant.block else (1, 1))
    return forced_plan(req, lambda w: sparse if np.count_nonzero(w) < w.size else ("dense", None),
                       "gpucheck: our kernel, timed against TVM's default build", device="gpucheck")


def _ffn_seed() -> int:
    from ..models.zoo import FFN_SEED

    return FFN_SEED


MODELS = {
    "ffn-768": ModelSpec("ffn-768", ((3072, 768), (768, 3072)), (1, 16), seed=768, eval_rows=64, zoo=True),
    "fc-4096": ModelSpec("fc-4096", ((4096, 4096),), (1,), seed=4096, eval_rows=8),
    "fc-4096x16384": ModelSpec("fc-4096x16384", ((16384, 4096),), (1,), seed=16384, eval_rows=8),
}

#: (label, method, level): the dense baseline first.
VARIANTS = (
    ("dense", None, 0.0),
    ("block16x1-70", Method("block", (16, 1)), 0.7),
    ("block16x1-80", Method("block", (16, 1)), 0.8),
    ("block16x1-90", Method("block", (16, 1)), 0.9),
    ("unstructured-90", Method("unstructured", (1, 1)), 0.9),
)
QUICK_VARIANTS = ("dense", "block16x1-90")

#: The runner's timing rules (the job file's keys), per model and batch group.
MEASURE = {"warmup_runs": 20, "warmup_s": 0.2, "min_runs": 300, "min_s": 1.5, "max_runs": 30000, "rounds": 3,
           "max_rounds": 8, "max_ci": 0.02, "max_spread": 0.03, "extend_s": 6.0, "model_time_repeat": 15}
QUICK_MEASURE = {**MEASURE, "min_runs": 60, "min_s": 0.3, "max_rounds": 3, "extend_s": 0.0,
                 "model_time_repeat": 5}


# ---------------------------------------------------------------------------------------------------------------
# weight layouts: what an artifact may hold of a layer's weight. ``generate``, ``layout`` and ``block_mask`` are
# check.py's (it runs them on the GPU machine to refill the artifacts), so the two sides cannot drift apart.


def candidate_forms(layers: list[dict]) -> list[dict]:
    """The layouts to look for in an artifact whose build chose ``layers`` (BuildResult.layers)."""
    forms = [{"form": "raw"}, {"form": "T"}, {"form": "pack", "vn": 32}]
    blocks = sorted({tuple(l["block"]) for l in layers if l.get("kernel") == "bsr" and l.get("block")})
    for block in blocks:
        forms += [{"form": "bsr", "block": list(block), "part": p} for p in ("data", "indices", "indptr")]
    return forms


def punch_holes(data: bytes, weights: list[np.ndarray], forms: list[dict]) -> tuple[bytes, list[dict]]:
    """(the artifact without the byte ranges holding a layout of a weight, the holes in file order)."""
    holes = []
    covered = np.zeros(len(data), dtype=bool) if data else None
    for index, weight in enumerate(weights):
        for form in forms:
            try:
                needle = layout(weight, form).tobytes()
            except ValueError:
                continue
            if len(needle) < MIN_HOLE:
                continue
            start = data.find(needle)
            while start >= 0:
                if not covered[start:start + len(needle)].any():
                    covered[start:start + len(needle)] = True
                    holes.append({"offset": start, "length": len(needle), "layer": index, **form})
                start = data.find(needle, start + len(needle))
    holes.sort(key=lambda h: h["offset"])
    parts, at = [], 0
    for hole in holes:
        parts.append(data[at:hole["offset"]])
        at = hole["offset"] + hole["length"]
    parts.append(data[at:])
    return b"".join(parts), holes


# ---------------------------------------------------------------------------------------------------------------
# the build


def _log(msg: str) -> None:
    print(f"[gpucheck] {msg}", file=sys.stderr, flush=True)


def load_spec_model(spec: ModelSpec, work: Path):
    """The spec's ``LoadedModel``: the zoo's (checked against the recipe) or one written here."""
    import onnx
    from onnx import numpy_helper

    from ..models.onnx_io import load_model
    from ..models.zoo.onnx_build import mlp_onnx

    layers, x = generate(spec.recipe)
    if spec.zoo:
        from ..models import zoo

        if spec.seed != _ffn_seed():
            raise HarnessError(f"{spec.name}: the zoo's seed changed; update harness/gpucheck/build.py")
        onnx_path, eval_path = zoo.materialize(spec.name)
    else:
        onnx_path, eval_path = work / f"{spec.name}.onnx", work / f"{spec.name}.npz"
        onnx.save(mlp_onnx(layers, name=spec.name), onnx_path)
        np.savez(eval_path, x=x)
    model = load_model(spec.name, onnx_path, eval_path)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    for i, (w, b) in enumerate(layers):
        if not (np.array_equal(inits[f"fc{i}.weight"], w) and np.array_equal(inits[f"fc{i}.bias"], b)):
            raise HarnessError(f"{spec.name}: layer {i} differs from its seeded recipe (the zoo builder changed?)")
    if not np.array_equal(model.eval_inputs["x"], x):
        raise HarnessError(f"{spec.name}: the evaluation rows differ from the seeded recipe")
    return model, layers, x


def pruned_weights(variant) -> list[np.ndarray]:
    """The variant's [N, K] weights (Gemm transB=1: stored as [N, K])."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(variant.onnx_path)).graph.initializer}
    return [np.ascontiguousarray(inits[l.weight], dtype=np.float32) for l in variant.layers]


def runtime_wheels(wheels: Path | None, work: Path, python: str = "3.12") -> list[Path]:
    """The two wheels for the GPU machine's CPython ``python`` on manylinux x86-64: from the folder ``wheels``, else
    ``pip download``ed (apache-tvm is ``py3-none``; apache-tvm-ffi is built per Python version)."""
    tag = "cp" + python.replace(".", "")
    if wheels is None:
        wheels = work / "wheels"
        cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python,
               "--platform", "manylinux_2_28_x86_64", "--no-deps", *TVM_WHEELS, "-d", str(wheels)]
        _log("downloading the TVM runtime wheels: " + " ".join(cmd[3:]))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise HarnessError(f"pip download of {' '.join(TVM_WHEELS)} failed (pass --tvm-wheels DIR holding both "
                               f"wheels, or --no-tvm): {proc.stderr.strip()[-500:]}")
    found = []
    for pkg in TVM_WHEELS:
        name, version = pkg.split("==")
        stem = f"{name.replace('-', '_')}-{version}-"
        # the ffi wheel must be the device Python's (cpXY, or a stable-ABI one); apache-tvm is pure py3
        hits = [p for p in sorted(wheels.glob(stem + "*x86_64*.whl"))
                if p.name[len(stem):].startswith((tag + "-", "py3-")) or "-abi3-" in p.name]
        if not hits:
            raise HarnessError(f"no {pkg} wheel for CPython {python} x86-64 in {wheels}")
        found.append(hits[0])
    return found


def write_runtime(wheels: list[Path], out: Path) -> dict:
    """``tvm-runtime.tar.xz``: the wheels unpacked without the compiler library, sources and dist-info."""
    tar_path = out / "tvm-runtime.tar.xz"
    files = 0
    with tarfile.open(tar_path, "w:xz", preset=6) as tar:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    name = info.filename
                    if name.endswith("/") or name.startswith(TVM_SKIP) or ".dist-info/" in name:
                        continue
                    entry = tarfile.TarInfo(name)
                    entry.size = info.file_size
                    entry.mode = 0o755 if name.endswith(".so") or (info.external_attr >> 16) & 0o111 else 0o644
                    with z.open(info) as fh:
                        tar.addfile(entry, fh)
                    files += 1
    return {"file": tar_path.name, "wheels": [w.name for w in wheels], "files": files,
            "bytes": tar_path.stat().st_size}


def build_bundle(out: Path, *, arch: str = "sm_90", quick: bool = False, models: list[str] | None = None,
                 tvm_wheels: Path | None = None, no_tvm: bool = False, keep_build: bool = False,
                 python: str = "3.12") -> dict:
    """Write the bundle into ``out`` (created; must be empty or absent); returns the manifest."""
    from ..board import SHIPPED
    from ..compile.cache import ArtifactCache, BuildRequest
    from ..compile.toolchains import cuda_plan
    from ..compile.tvm_adapter import build, tvm_version
    from ..models.reference import reference_outputs
    from ..paths import BOARD_DIR
    from ..sparsify import make_variant

    start = time.perf_counter()
    names = models or (["ffn-768"] if quick else list(MODELS))
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise HarnessError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    plan = cuda_plan(arch)
    if not plan.ahead:
        raise HarnessError(f"cannot compile the CUDA kernels ahead: {plan.note}")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise HarnessError(f"{out} is not empty: give a new folder")
    for sub in ("artifacts", "data"):
        (out / sub).mkdir()
    work = Path(tempfile.mkdtemp(prefix="sparsebench-gpucheck-"))
    target = {"kind": "cuda", "arch": arch, "host": HOST_TARGET}
    variant_rows = VARIANTS if not quick else tuple(v for v in VARIANTS if v[0] in QUICK_VARIANTS)
    manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "arch": arch,
                "target": target, "tvm_version": tvm_version(), "nvcc": plan.nvcc_version, "quick": quick,
                "tolerance": TOLERANCE, "measure": QUICK_MEASURE if quick else MEASURE, "models": {},
                "artifacts": [], "tvm_runtime": None}
    try:
        cache = ArtifactCache(work / "cache")
        for name in names:
            spec = MODELS[name]
            batches = spec.batches[:1] if quick else spec.batches
            _log(f"{name}: model and variants")
            model, layers, x = load_spec_model(spec, work)
            np.savez(out / "data" / f"inputs_{name}.npz", x)  # the runner's format: arr_0, arr_1... in input order
            refs, masks, variants = {}, {}, []
            evaluator = ""
            for label, method, level in variant_rows:
                variant = make_variant(name, model.path, method, level, work / "variants", prune_first=True,
                                       prune_last=True)
                weights = pruned_weights(variant)
                block = tuple(method.block) if method is not None else None
                for i, (w, _b) in enumerate(layers):
                    if block is None:
                        if not np.array_equal(weights[i], w):
                            raise HarnessError(f"{name} {label}: the dense variant's layer {i} is not the model's")
                        continue
                    bm = block_mask(weights[i], block)
                    masks[f"{label}/{i}"] = np.packbits(bm.ravel())
                    # what check.py rebuilds: the seeded weight where the block mask is set
                    again = np.where(np.repeat(np.repeat(bm, block[0], 0), block[1], 1)[:w.shape[0], :w.shape[1]],
                                     w, np.float32(0))
                    if not np.array_equal(again, weights[i]):
                        raise HarnessError(f"{name} {label}: layer {i} is not the seeded weight under its mask")
                refs[label], evaluator = reference_outputs(variant.onnx_path, model.eval_inputs, 1)
                variants.append({"label": label, "method": variant.method, "block": list(block) if block else None,
                                 "sparsity_target": variant.sparsity_target,
                                 "sparsity_actual": round(variant.sparsity_actual, 6), "key": variant.key})
                jobs = ([("tvm-default", b) for b in batches] if method is None else []) + \
                    [("ours", b) for b in batches]
                for kernels, batch in jobs:
                    art = f"{name}_b{batch}_{label}_{kernels}"
                    _log(f"compile {art}")
                    req = BuildRequest(variant.onnx_path, variant.sha256, model.shapes_for_batch(batch), target,
                                       kernels, "native")
                    if kernels == "ours":
                        req = replace(req, plan=ours_plan(req, variant))
                    res = build(req, cache)
                    if res.error:
                        raise HarnessError(f"{art}: {res.error}")
                    data = res.artifact.read_bytes()
                    stripped, holes = punch_holes(data, weights, candidate_forms(list(res.layers)))
                    (out / "artifacts" / f"{art}.so.xz").write_bytes(lzma.compress(stripped, preset=6))
                    manifest["artifacts"].append({
                        "name": art, "file": f"artifacts/{art}.so.xz", "model": name, "batch": batch,
                        "variant": label, "kernels": kernels, "sha256": sha256(data), "bytes": len(data),
                        "shipped_bytes": (out / "artifacts" / f"{art}.so.xz").stat().st_size, "holes": holes,
                        "compile_s": round(res.compile_s, 2), "toolchain": res.toolchain, "notes": list(res.notes),
                        "layers": [{k: l.get(k) for k in ("layer", "kernel", "block", "density", "shape")}
                                   for l in res.layers]})
                    res.artifact.unlink()  # the cache is temporary; keep the disk free of 256 MB copies
            np.savez(out / "data" / f"refs_{name}.npz", **refs)
            np.savez_compressed(out / "data" / f"masks_{name}.npz", **masks)
            manifest["models"][name] = {
                "batches": list(batches), "recipe": spec.recipe, "input_names": [s.name for s in model.inputs],
                "inputs": f"data/inputs_{name}.npz", "refs": f"data/refs_{name}.npz",
                "masks": f"data/masks_{name}.npz", "evaluator": evaluator, "variants": variants,
                "weight_sha256": [sha256(w) for w, _ in layers], "bias_sha256": [sha256(b) for _, b in layers],
                "inputs_sha256": sha256(x)}
        board = out / "sparsebench_board"
        for rel in SHIPPED:
            (board / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(BOARD_DIR / rel, board / rel)
        if not no_tvm:
            _log("runtime-only TVM")
            manifest["tvm_runtime"] = {**write_runtime(runtime_wheels(tvm_wheels, work, python), out),
                                       "python": python}
        shutil.copyfile(Path(__file__).with_name("check.py"), out / "check.py")
        (out / "run.sh").write_text(RUN_SH)
        (out / "run.sh").chmod(0o755)
        manifest["build_s"] = round(time.perf_counter() - start, 1)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
        manifest["bundle_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        _log(f"bundle {out}: {len(manifest['artifacts'])} artifacts, {manifest['bundle_bytes'] / 2**20:.1f} MiB, "
             f"{manifest['build_s']:.0f} s")
        if manifest["bundle_bytes"] > TRAVEL_LIMIT:
            _log(f"the bundle is over {TRAVEL_LIMIT / 2**20:.0f} MiB: a working tree copied to the GPU machine may "
                 "not carry it (build fewer models with --models)")
        return manifest
    finally:
        if keep_build:
            _log(f"kept the build folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


RUN_SH = """#!/usr/bin/env bash
# The GPU check in one command: bash run.sh [--quick] [--out FILE]  (exit 2: no NVIDIA GPU here)
cd "$(dirname "$0")" || exit 1
exec "${PYTHON:-python3}" check.py "$@"
"""
