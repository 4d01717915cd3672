"""Build requests, results and the content-addressed artifact cache (no TVM import here)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import cache_dir
#: Bumped when the way artifacts are built changes in a way the hashed inputs do not capture.
BUILD_FORMAT = 1


@dataclass(frozen=True)
class BuildRequest:
    """What to compile: one variant's ONNX at a static input shape for one TVM target."""

    onnx_path: Path
    onnx_sha256: str
    input_name: str
    input_shape: tuple[int, ...]
    target: dict  # TVM target dict
    kernels: str = "ours"  # "ours": schedules/ rewrite; "tvm-default": TVM's default pipeline only
    choose: str = "measure"  # per-layer kernel choice: "measure" (time candidates here = the device) or "rule"
    toolchain: str = "native"  # the profile's [build].toolchain: what links the artifact (compile/toolchains.py)


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


def schedules_hash() -> str:
    """Hash of every source file in ``schedules/``: an edited kernel invalidates cached artifacts."""
    digest = hashlib.sha256()
    root = schedules_dir()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_key(req: BuildRequest, tvm_version: str, linker: str = "") -> str:
    """Content address of an artifact: model bytes, input shape, target, kernels, schedule sources, TVM version,
    toolchain (``linker``: the resolved linker and CUDA mode, ``Toolchain.identity``)."""
    material = {
        "format": BUILD_FORMAT,
        "onnx": req.onnx_sha256,
        "input": [req.input_name, list(req.input_shape)],
        "target": req.target,
        "kernels": req.kernels,
        "choose": req.choose if req.kernels == "ours" else "",
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
