"""Build requests, results and the content-addressed artifact cache (no TVM import here)."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..models.inputs import InputSpec
from ..paths import cache_dir
from .plan import KernelPlan

#: Bumped when the way artifacts are built changes in a way the hashed inputs do not capture.
BUILD_FORMAT = 2


@dataclass(frozen=True)
class BuildRequest:
    """What to compile: one variant's ONNX at static input shapes for one TVM target."""

    onnx_path: Path
    onnx_sha256: str
    inputs: tuple[InputSpec, ...]  # every graph input: name, dtype and static shape (dim 0: the batch)
    target: dict  # TVM target dict
    kernels: str = "ours"  # "ours": schedules/ rewrite; "tvm-default": TVM's default pipeline only
    toolchain: str = "native"  # the profile's [build].toolchain: what links the artifact (compile/toolchains.py)
    plan: KernelPlan | None = None  # per-layer kernel choices (compile/select.py); None: the rule decides

    @property
    def batch(self) -> int:
        """The static batch (dim 0 of every input)."""
        return int(self.inputs[0].shape[0])

    @property
    def survey_key(self) -> str:
        """What decides which layers (and so which kernel choices) a build has: model, input shapes and dtypes,
        target, kernels."""
        material = {"onnx": self.onnx_sha256, "inputs": [s.to_json() for s in self.inputs],
                    "target": self.target, "schedules": schedules_hash()}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class BuildResult:
    """An artifact (exported library) or an error. Failures are data: ``error`` names the stage that failed."""

    key: str
    artifact: Path | None
    artifact_bytes: int | None
    compile_s: float | None
    cached: bool
    layers: tuple[dict, ...] = field(default=())  # per-layer kernel choices from schedules/
    tvm_version: str = ""
    error: str | None = None
    toolchain: str = ""  # the linker (and CUDA device-code mode) that built it, as in the build key
    notes: tuple[str, ...] = ()  # what the board needs to load it (e.g. CUDA kernels shipped as source)


def schedules_dir() -> Path:
    """Where the ``schedules`` package that compiles our kernels lives (checkout or installed: the one imported)."""
    import schedules  # cheap: it imports TVM only when the rewrite runs

    return Path(schedules.__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def schedules_hash() -> str:
    """Hash of every source file in ``schedules/``: an edited kernel invalidates cached artifacts. Read once per
    process: the kernels this process builds are the ones it imported, whatever happens to the files later."""
    digest = hashlib.sha256()
    root = schedules_dir()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_key(req: BuildRequest, tvm_version: str, linker: str = "") -> str:
    """Content address of an artifact: model bytes, every input's name, shape and dtype, target, kernels and their
    per-layer choices, schedule sources, TVM version, toolchain (``linker``: the resolved linker and CUDA mode,
    ``Toolchain.identity``)."""
    material = {
        "format": BUILD_FORMAT,
        "onnx": req.onnx_sha256,
        "inputs": [s.to_json() for s in req.inputs],
        "target": req.target,
        "kernels": req.kernels,
        "plan": (req.plan.choice_digest() if req.plan else "rule") if req.kernels == "ours" else "",
        "schedules": schedules_hash() if req.kernels == "ours" else "",
        "tvm": tvm_version,
        "toolchain": [req.toolchain, linker],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class ArtifactCache:
    """``<cache>/artifacts/<key>/model.so`` plus ``build.json`` (compile time, layer choices)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_dir() / "artifacts"

    def lookup(self, key: str) -> BuildResult | None:
        folder = self.root / key[:32]
        meta_path, lib = folder / "build.json", folder / "model.so"
        if not (meta_path.is_file() and lib.is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        return BuildResult(key=key, artifact=lib, artifact_bytes=lib.stat().st_size, compile_s=meta["compile_s"],
                           cached=True, layers=tuple(meta.get("layers", ())), tvm_version=meta.get("tvm_version", ""),
                           toolchain=meta.get("toolchain", ""), notes=tuple(meta.get("notes", ())))

    def folder(self, key: str) -> Path:
        folder = self.root / key[:32]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def store(self, key: str, compile_s: float, layers: list[dict], tvm_version: str,
              extra: dict | None = None) -> None:
        """Write ``build.json`` last: its presence marks a complete artifact. ``extra``: toolchain, notes and the
        request (what ``sparsebench verify`` rebuilds for the host)."""
        meta = {"key": key, "compile_s": compile_s, "layers": layers, "tvm_version": tvm_version,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
        (self.folder(key) / "build.json").write_text(json.dumps(meta, indent=1))
