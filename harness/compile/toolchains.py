"""Cross toolchains: which program links a profile's artifacts, and whether CUDA kernels can be compiled ahead.

A target profile names its toolchain (``[build].toolchain``: ``native``, ``aarch64-linux-gnu``,
``aarch64-linux-android``). ``export_library`` links TVM's object files with a C compiler for the board's
architecture; this module finds one on this machine, once, or raises one :class:`HarnessError` that names every
way to get one and the command that installs it. For Jetson profiles it also decides how the CUDA kernels travel:
compiled ahead to a fatbin here when a CUDA toolkit (``nvcc``) that knows the GPU's architecture is present, else
as CUDA C source that the board compiles when it loads the model (and so needs NVRTC or nvcc there).

No TVM import here: the adapter (:mod:`.tvm_adapter`) turns these facts into TVM calls.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import HarnessError
from ..paths import cache_dir

#: machine names (``platform.machine()``) that can run each toolchain's artifacts natively
_ARCH_OF = {"aarch64-linux-gnu": "aarch64", "aarch64-linux-android": "aarch64"}
DEBIAN_CROSS = "apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu"
ZIG_INSTALL = "pip install ziglang"


@dataclass(frozen=True)
class Toolchain:
    """A linker for one profile toolchain, as found on this machine."""

    name: str  # the profile's toolchain: native | aarch64-linux-gnu | aarch64-linux-android
    kind: str  # how it links: "cc" (a gcc/clang driver), "zig" (zig cc through a wrapper), "ndk" (Android clang)
    compiler: str  # executable given to tvm.support.cc.cross_compiler (for native: the host compiler TVM uses)
    version: str  # first line of `compiler --version`: part of the build key

    @property
    def cross(self) -> bool:
        """True when the artifacts are for another architecture or OS than this machine's."""
        return self.name != "native" and not self.runs_here

    @property
    def runs_here(self) -> bool:
        """Can this machine load the artifacts itself?"""
        return self.name == "native" or (_ARCH_OF.get(self.name) == platform.machine()
                                         and self.name.endswith("-gnu"))

    @property
    def identity(self) -> str:
        """What goes into the build key: a different linker makes a different artifact."""
        return f"{self.name}/{self.kind}/{Path(self.compiler).name}/{self.version}"

    def describe(self) -> str:
        return f"{self.name} via {self.kind} ({self.compiler}; {self.version})"


@functools.lru_cache(maxsize=None)
def _version(compiler: str) -> str:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _which(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _host_cc() -> str | None:
    """The compiler TVM's default export uses (``tvm.support.cc.get_cc``: $CXX, $CC, then g++, gcc, clang...)."""
    env = os.environ.get("CXX") or os.environ.get("CC")
    if env:
        return shutil.which(env) or env
    return _which("g++", "gcc", "clang++", "clang", "c++", "cc")


def zig_available() -> bool:
    """Is PyPI's ``ziglang`` importable by this interpreter (``python -m ziglang``)?"""
    return importlib.util.find_spec("ziglang") is not None


def _zig_wrapper(triple: str) -> str:
    """``cross_compiler`` takes one executable path: a tiny script that runs ``python -m ziglang cc -target``."""
    folder = cache_dir() / "toolchains"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"zig-{triple}-cc"
    text = f'#!/bin/sh\nexec "{sys.executable}" -m ziglang cc -target {triple} "$@"\n'
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)
    return str(path)


def _zig_version() -> str:
    try:
        out = subprocess.run([sys.executable, "-m", "ziglang", "version"], capture_output=True, text=True, timeout=120)
        return f"zig {out.stdout.strip() or 'unknown'}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"zig unknown ({err})"


def _ndk_compiler() -> str | None:
    """``$TVM_NDK_CC`` (TVM's own variable), else the aarch64 clang++ of the NDK in ``$ANDROID_NDK_HOME``
    (or ``$ANDROID_NDK_ROOT``): the lowest API level >= 24 it has (older phones load the library too)."""
    cc = os.environ.get("TVM_NDK_CC")
    if cc:
        return shutil.which(cc) or (cc if os.access(cc, os.X_OK) else None)
    for var in ("ANDROID_NDK_HOME", "ANDROID_NDK_ROOT"):
        ndk = os.environ.get(var)
        if not ndk:
            continue
        found = {}
        for path in glob.glob(os.path.join(ndk, "toolchains/llvm/prebuilt/*/bin/aarch64-linux-android*-clang++")):
            match = re.search(r"aarch64-linux-android(\d+)-clang\+\+$", path)
            if match and os.access(path, os.X_OK):
                found[int(match.group(1))] = path
        if found:
            usable = [api for api in found if api >= 24] or list(found)
            return found[min(usable)]
    return None


def find_toolchain(name: str) -> Toolchain:
    """The linker for profile toolchain ``name`` on this machine, or a HarnessError naming every way to get one."""
    if name == "native":
        cc = _host_cc()
        if cc is None:
            raise HarnessError("no C compiler to link TVM's exported library: install one "
                               "(as root: apt-get install -y gcc libc6-dev)")
        return Toolchain(name, "cc", cc, _version(cc))
    if name == "aarch64-linux-gnu":
        candidates = ["aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc"]
        if platform.machine() == "aarch64":  # on a Pi or Jetson itself the plain compiler is the right one
            candidates += ["g++", "gcc"]
        cc = _which(*candidates)
        if cc:
            return Toolchain(name, "cc", cc, _version(cc))
        if zig_available():
            return Toolchain(name, "zig", _zig_wrapper(name), _zig_version())
        raise HarnessError(
            "no aarch64 cross linker for toolchain 'aarch64-linux-gnu' (the Raspberry Pi and Jetson profiles): "
            f"install Debian's aarch64-linux-gnu-gcc/g++ (as root: {DEBIAN_CROSS}) or zig from PyPI, which needs "
            f"no root ({sys.executable} -m {ZIG_INSTALL})"
        )
    if name == "aarch64-linux-android":
        cc = _ndk_compiler()
        if cc:
            return Toolchain(name, "ndk", cc, _version(cc))
        hint = ""
        if os.environ.get("TVM_NDK_CC"):
            hint = f" (TVM_NDK_CC={os.environ['TVM_NDK_CC']!r} is not an executable)"
        elif os.environ.get("ANDROID_NDK_HOME") or os.environ.get("ANDROID_NDK_ROOT"):
            hint = " (no toolchains/llvm/prebuilt/*/bin/aarch64-linux-android<API>-clang++ in that NDK)"
        raise HarnessError(
            f"no Android NDK for toolchain 'aarch64-linux-android'{hint}: download an NDK (r25 or newer, "
            "https://developer.android.com/ndk/downloads), then set ANDROID_NDK_HOME to its folder, or TVM_NDK_CC "
            "to its toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android24-clang++"
        )
    raise HarnessError(f"unknown toolchain {name!r}; known: native, aarch64-linux-gnu, aarch64-linux-android")


def check_run_toolchain(profile, transport_name: str) -> Toolchain:
    """Before a run measures anything: the profile's linker exists, and a local run can load its artifacts."""
    toolchain = find_toolchain(profile.toolchain)
    if transport_name == "local" and toolchain.cross:
        raise HarnessError(
            f"target {profile.name!r} builds {profile.toolchain} artifacts, which this {platform.machine()} machine "
            "cannot load: name the board with --device ssh://USER@HOST[:PORT] (or a Host alias), or check the "
            "artifacts under emulation with `sparsebench verify ARTIFACT --emulate aarch64`"
        )
    return toolchain


# ---------------------------------------------------------------------------------------------------------------
# CUDA: device code compiled ahead (fatbin) or shipped as source


@dataclass(frozen=True)
class CudaPlan:
    """How one build ships its CUDA kernels. ``ahead``: compiled here to a fatbin for ``arch`` (the board needs no
    compiler); otherwise CUDA C source, compiled by the board's TVM runtime when it loads the module."""

    arch: str  # e.g. "sm_87"
    ahead: bool
    nvcc: str | None  # path of the nvcc used (ahead) or found (unusable for this arch)
    nvcc_version: str  # "13.0", or "" without nvcc
    note: str  # one sentence for the build record: what was done and what the board needs

    @property
    def identity(self) -> str:
        """Build-key part: a fatbin from another nvcc is another artifact."""
        return f"cuda/{self.arch}/{'fatbin' if self.ahead else 'source'}/{self.nvcc_version}"

    def gencode(self) -> list[str]:
        """nvcc options: machine code for the arch plus its PTX, so a newer GPU's driver can still JIT it."""
        num = self.arch[3:]
        return ["-gencode", f"arch=compute_{num},code=[sm_{num},compute_{num}]"]


# Seen on a GPU with the 0.27 wheel: a source module does not load under TVM_USE_RUNTIME_LIB=1 (the JIT callback
# needs the compiler library), while a fatbin loads with the runtime alone.
BOARD_NEEDS_SOURCE = ("the board compiles the CUDA kernels when it loads the model, which needs the full TVM "
                      "package there (not TVM_USE_RUNTIME_LIB=1) plus NVRTC (pip install cuda-bindings in the "
                      "board's venv) or a CUDA toolkit with TVM_CUDA_COMPILE_MODE=nvcc")


def _pip_nvcc() -> str | None:
    """nvcc of the ``cuda`` extra (PyPI's nvidia-cuda-nvcc: ``site-packages/nvidia/cu13/bin/nvcc``), or None."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "cu13", "bin", "nvcc")
        if os.access(path, os.X_OK):
            return path
    return None


def _nvcc() -> tuple[str | None, str]:
    """The nvcc to compile CUDA kernels ahead with: on PATH, under CUDA_HOME/CUDA_PATH//usr/local/cuda, or the one the
    ``cuda`` extra installs into this Python's environment; and its release ("13.0")."""
    path = shutil.which("nvcc")
    if path is None:
        for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
            if root and os.access(os.path.join(root, "bin", "nvcc"), os.X_OK):
                path = os.path.join(root, "bin", "nvcc")
                break
    path = path or _pip_nvcc()
    if path is None:
        return None, ""
    match = re.search(r"release (\d+\.\d+)", _version_text(path))
    return path, match.group(1) if match else "unknown"


@functools.lru_cache(maxsize=None)
def _version_text(nvcc: str) -> str:
    try:
        return subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


@functools.lru_cache(maxsize=None)
def _nvcc_archs(nvcc: str) -> frozenset[str]:
    """The ``sm_XX`` this nvcc can compile for (``--list-gpu-code``; CUDA 13 dropped everything below sm_75)."""
    try:
        out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(re.findall(r"sm_\d+[a-z]?", out))


def cuda_plan(arch: str) -> CudaPlan:
    """Compile ahead when nvcc is here and knows ``arch``; else say what the board will need."""
    nvcc, version = _nvcc()
    if nvcc is None:
        return CudaPlan(arch, False, None, "", f"no CUDA toolkit (nvcc) here to compile the kernels ahead: "
                                               f"{BOARD_NEEDS_SOURCE}")
    archs = _nvcc_archs(nvcc)
    if archs and arch not in archs:
        known = sorted(archs, key=lambda a: int(re.sub(r"\D", "", a)))
        return CudaPlan(arch, False, nvcc, version,
                        f"nvcc {version} here cannot compile for {arch} (it knows {known[0]}..{known[-1]}; "
                        f"CUDA 13 dropped GPUs below sm_75: use a CUDA <= 12 toolkit): {BOARD_NEEDS_SOURCE}")
    return CudaPlan(arch, True, nvcc, version,
                    f"CUDA kernels compiled ahead to a {arch} fatbin (+PTX) with nvcc {version}: the board loads "
                    "them with the TVM runtime and its CUDA driver, no compiler needed")


# ---------------------------------------------------------------------------------------------------------------
# The imports blob: swap a CUDA module's source for its fatbin (pure bytes; the adapter makes the TVM calls)

_U64 = struct.Struct("<Q")


def _u64(value: int) -> bytes:
    return _U64.pack(value)


def replace_cuda_code(blob: bytes, sources: dict[bytes, bytes], fmt: bytes = b"fatbin") -> bytes:
    """A copy of TVM's packed-imports blob (``[u64 size][modules]``) in which every CUDA module saved as source
    (``"cuda"`` key, then ``[u64 n]`` + ``[fmt "cuda"][function map][code]``) carries ``sources[code]`` as ``fmt``.

    This is the layout TVM 0.27's ``CUDAModuleNode::SaveToBytes`` writes and its loader reads; the loader takes a
    ``fatbin`` as is (``cuModuleLoadData``) where a ``cuda`` source would be JIT-compiled. Every module found is
    checked end to end (its size prefix, its format, its code equal to a known source); a CUDA module that is not
    replaced raises ``ValueError`` so a format change in TVM cannot pass silently.
    """
    (size,) = _U64.unpack_from(blob, 0)
    if size != len(blob) - 8:
        raise ValueError(f"imports blob says {size} bytes, has {len(blob) - 8}")
    key = _u64(4) + b"cuda"
    src_fmt = _u64(4) + b"cuda"
    out, copied, search, replaced = bytearray(), 8, 8, 0
    while True:
        hit = blob.find(key, search)
        if hit < 0 or hit + len(key) + 8 > len(blob):
            break
        start = hit + len(key)
        (n,) = _U64.unpack_from(blob, start)
        inner = blob[start + 8:start + 8 + n]
        code = next((src for src in sources if inner.startswith(src_fmt) and len(inner) == n
                     and inner.endswith(_u64(len(src)) + src)), None)
        if code is None:
            search = hit + 1  # the key's bytes inside other data (weights): not a module record
            continue
        fmap = inner[len(src_fmt):len(inner) - 8 - len(code)]
        binary = sources[code]
        new_inner = _u64(len(fmt)) + fmt + fmap + _u64(len(binary)) + binary
        out += blob[copied:start] + _u64(len(new_inner)) + new_inner
        copied = search = start + 8 + n
        replaced += 1
    if replaced != len(sources):
        raise ValueError(f"found {replaced} of {len(sources)} CUDA source module(s) in the imports blob; "
                         "TVM's module format may have changed")
    out += blob[copied:]
    body = bytes(out)
    return _u64(len(body)) + body
