"""Build requests, results and the content-addressed artifact cache (no TVM import here)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..models.inputs import InputSpec
from ..paths import cache_dir, file_sha256
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


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` as a whole or not at all: a temp file of this writer's own in the same folder, fsynced, then
    renamed over it. Concurrent writers never share a temp file; the last rename wins; readers never see a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool):
    """An advisory lock on a cache entry (``.lock`` in its folder): the writer holds it exclusively while it swaps
    the library and its record, so a reader (shared) never pairs one builder's library with another's record."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the sha256 check still turns a mismatched pair into a miss
        yield
        return
    try:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only cache: nobody writes it
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


class ArtifactCache:
    """``<cache>/artifacts/<key>/model.so`` plus ``build.json`` (compile time, layer choices, and the library's
    ``sha256`` and ``size``, checked on every hit). A damaged entry -- a truncated or altered library, a build
    record that is unreadable, not JSON or lacks a field -- is a miss: it is rebuilt, and said once on stderr."""

    #: what a build record must hold, with its type, for the entry to be trusted
    REQUIRED = {"key": str, "compile_s": (int, float), "sha256": str, "size": int, "layers": list}

    def __init__(self, root: Path | None = None, log=None):
        self.root = Path(root) if root else cache_dir() / "artifacts"
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._warned: set[str] = set()

    def lookup(self, key: str) -> BuildResult | None:
        """The cached build of ``key``, or None: not built yet, or damaged (then rebuilt by the caller)."""
        folder = self.root / key[:32]
        meta_path, lib = folder / "build.json", folder / "model.so"
        if not (meta_path.exists() or lib.exists()):
            return None
        with _locked(folder, exclusive=False):
            problem, meta = self._check(key, meta_path, lib)
        if problem:
            if key not in self._warned:  # said once per process, however often the key is looked up
                self._warned.add(key)
                self.log(f"artifact cache: {folder}: {problem}; rebuilding it")
            return None
        return BuildResult(key=key, artifact=lib, artifact_bytes=meta["size"], compile_s=meta["compile_s"],
                           cached=True, layers=tuple(meta["layers"]), tvm_version=str(meta.get("tvm_version", "")),
                           toolchain=str(meta.get("toolchain", "")), notes=tuple(meta.get("notes") or ()))

    def _check(self, key: str, meta_path: Path, lib: Path) -> tuple[str, dict]:
        """(what is wrong with the entry, '' when nothing; its build record)."""
        if not lib.is_file():
            return "model.so is missing", {}
        try:
            meta = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            return "build.json is missing", {}
        except OSError as err:
            return f"build.json is unreadable ({err.strerror})", {}
        except ValueError as err:  # also a non-UTF-8 file
            return f"build.json is not valid JSON ({str(err)[:80]})", {}
        if not isinstance(meta, dict):
            return "build.json is not a JSON object", {}
        for name, kind in self.REQUIRED.items():
            if name not in meta:
                return f"build.json has no {name!r} (made by an older sparsebench, or damaged)", {}
            if not isinstance(meta[name], kind) or isinstance(meta[name], bool):
                return f"build.json's {name!r} has the wrong type ({type(meta[name]).__name__})", {}
        if meta["key"] != key:
            return "build.json belongs to another build key", {}
        try:
            size = lib.stat().st_size
            if size != meta["size"]:
                return f"model.so has {size} bytes, its build record says {meta['size']} (truncated or replaced)", {}
            if file_sha256(lib) != meta["sha256"]:
                return "model.so does not match the sha256 in its build record (damaged or replaced)", {}
        except OSError as err:
            return f"model.so is unreadable ({err.strerror})", {}
        return "", meta

    def folder(self, key: str) -> Path:
        folder = self.root / key[:32]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def temp_path(self, key: str) -> Path:
        """Where one builder writes its library before :meth:`store`: its own name in the entry's folder, so two
        builders of one key never write the same file."""
        return self.folder(key) / f"model.{os.getpid()}.{secrets.token_hex(4)}.tmp.so"

    def store(self, key: str, compile_s: float, layers: list[dict], tvm_version: str,
              extra: dict | None = None, built: Path | None = None) -> Path:
        """Move the library ``built`` (from :meth:`temp_path`) into the entry, then write ``build.json`` with its
        sha256 and size -- both atomically (fsync, rename). Returns the library's path. ``extra``: toolchain, notes
        and the request (what ``sparsebench verify`` rebuilds for the host)."""
        folder = self.folder(key)
        lib = folder / "model.so"
        source = built if built is not None else lib
        with open(source, "rb") as f:
            os.fsync(f.fileno())
        sha, size = file_sha256(source), source.stat().st_size
        meta = {"key": key, "compile_s": compile_s, "layers": layers, "tvm_version": tvm_version,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sha256": sha, "size": size, **(extra or {})}
        with _locked(folder, exclusive=True):
            if built is not None:
                os.replace(built, lib)
            atomic_write(folder / "build.json", json.dumps(meta, indent=1).encode())
        return lib
