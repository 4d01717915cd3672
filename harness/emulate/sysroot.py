"""A Debian arm64 sysroot with Python, numpy and the aarch64 TVM runtime: what a Raspberry Pi OS board has.

Built once into ``<cache>/sysroot-aarch64`` from Debian arm64 packages (``apt-get download`` + ``dpkg -x``, no
installation, no root once the arm64 package lists exist) and PyPI's manylinux aarch64 wheels (``pip install
--target --platform``), then smoke-tested under qemu. A marker file written last (with the recipe's hash) tells a
complete sysroot from a half-built one, which is rebuilt. A lock keeps two processes from building it at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import HarnessError
from ..paths import cache_dir

PYTHON = "3.11"  # Debian bookworm's, and Raspberry Pi OS bookworm's
#: arm64 packages unpacked into the sysroot: Python and the shared libraries it, numpy and the TVM runtime load
#: (found with readelf -d on each; Kerberos/NIS/dbm modules are left out: the runner never imports them)
DEBIAN_PACKAGES = (
    f"python{PYTHON}", f"python{PYTHON}-minimal", f"libpython{PYTHON}-minimal", f"libpython{PYTHON}-stdlib",
    "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5",
    "libsqlite3-0", "libuuid1", "libcrypt1", "libncursesw6", "libtinfo6", "libreadline8",
)
#: PyPI wheels for the device side; TVM and its FFI are pinned to what this host compiles with
WHEELS = ("numpy", "ml_dtypes", "typing_extensions")
TVM_PINS = {"apache-tvm": "0.27.0.post1", "apache-tvm-ffi": "0.1.14.post1"}
SITE = "opt/sparsebench/site-packages"  # inside the sysroot, like a board's venv
MARKER = ".sparsebench-sysroot.json"
#: the TVM compiler library (~240 MB): TVM_USE_RUNTIME_LIB=1 never loads it, and boards do not need it
DROP = ("tvm/lib/libtvm_compiler.so",)
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian", "usr/share/info")


@dataclass(frozen=True)
class Arch:
    """An emulated architecture: its qemu-user binary, Debian architecture and wheel platform."""

    name: str
    qemu: str
    debian: str
    wheel_platform: str


ARCHES = {"aarch64": Arch("aarch64", "qemu-aarch64", "arm64", "manylinux_2_28_aarch64")}


def get_arch(name: str) -> Arch:
    if name not in ARCHES:
        raise HarnessError(f"unknown emulation arch {name!r}; known: {', '.join(ARCHES)}")
    return ARCHES[name]


@dataclass(frozen=True)
class Sysroot:
    """A complete sysroot: ``root`` for ``qemu -L``, its Python, and the folder its wheels are in."""

    arch: str
    root: Path
    info: dict  # the marker's content: recipe, package and wheel versions, build time, size

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / f"python{PYTHON}"

    @property
    def site(self) -> Path:
        return self.root / SITE

    def wrapper(self) -> Path:
        """A host shell script that behaves like the board's ``python``: the sysroot's Python under qemu-user, in a
        clean environment. Give it as the device Python (``--python``) to run a whole benchmark emulated, e.g. over
        ssh to this machine."""
        path = self.root / f"qemu-python{PYTHON}"
        text = ("#!/bin/sh\n# sparsebench: the sysroot's Python under qemu-user, as a board's python would run\n"
                "exec env -u PYTHONHOME -u VIRTUAL_ENV -u LD_LIBRARY_PATH -u LD_PRELOAD "
                f"PYTHONPATH='{self.site}' PYTHONNOUSERSITE=1 LANG=C.UTF-8 "
                f"'{self.info.get('qemu') or find_qemu(self.arch)}' -L '{self.root}' '{self.python}' \"$@\"\n")
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.replace(path)
        return path


def sysroot_dir(arch: str = "aarch64") -> Path:
    return cache_dir() / f"sysroot-{arch}"


def _wheel_specs() -> list[str]:
    """The wheels to install, TVM at the version this host compiles with (the runtime must match)."""
    from importlib.metadata import PackageNotFoundError, version

    specs = list(WHEELS)
    for name, pin in TVM_PINS.items():
        try:
            pin = version(name)
        except PackageNotFoundError:
            pass
        specs.append(f"{name}=={pin}")
    return specs


def recipe(arch: str) -> dict:
    """What the sysroot is made of; its hash in the marker makes a changed recipe rebuild it."""
    a = get_arch(arch)
    return {"arch": a.name, "debian_arch": a.debian, "python": PYTHON, "packages": list(DEBIAN_PACKAGES),
            "wheels": _wheel_specs(), "wheel_platform": a.wheel_platform, "drop": list(DROP)}


def _recipe_hash(r: dict) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16]


def find_qemu(arch: str = "aarch64") -> str:
    """The qemu-user binary for ``arch``, or the package that provides it."""
    a = get_arch(arch)
    path = shutil.which(a.qemu) or shutil.which(f"{a.qemu}-static")
    if path is None:
        raise HarnessError(f"{a.qemu} not found: install qemu-user (as root on Debian/Ubuntu: "
                           "apt-get install -y qemu-user; qemu-user-static works too)")
    return path


def load_sysroot(arch: str = "aarch64") -> Sysroot | None:
    """The cached sysroot if it is complete and built from the current recipe, else None."""
    root = sysroot_dir(arch)
    try:
        info = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if info.get("recipe_hash") != _recipe_hash(recipe(arch)):
        return None
    return Sysroot(arch, root, info)


def ensure_sysroot(arch: str = "aarch64", *, log: Callable[[str], None] | None = None) -> Sysroot:
    """The cached sysroot, building it first when missing, half-built or from an older recipe (~1 minute)."""
    found = load_sysroot(arch)
    if found is not None:
        return found
    with _lock(sysroot_dir(arch).with_suffix(".lock")):
        found = load_sysroot(arch)  # another process may have built it while we waited
        if found is not None:
            return found
        return _build(arch, log or (lambda _msg: None))


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, fix: str, *, cwd: Path | None = None, timeout: float = 1800,
         env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
    except FileNotFoundError:
        raise HarnessError(f"building the sysroot: {cmd[0]} not found ({what}); {fix}") from None
    except subprocess.TimeoutExpired:
        raise HarnessError(f"building the sysroot: {what} took over {timeout:g} s ({' '.join(cmd[:4])} ...); "
                           "check the network and retry") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-4:])
        raise HarnessError(f"building the sysroot: {what} failed (exit {proc.returncode}: {tail}); {fix}")
    return proc


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_foreign_arch(debian: str, log) -> None:
    """Debian's arm64 package lists must exist for ``apt-get download``: add the architecture once (root)."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise HarnessError(f"building the {debian} sysroot needs Debian/Ubuntu's apt-get and dpkg ({tool} not "
                               "found); on other systems run the check on a Debian machine or container")
    out = _run(["dpkg", "--print-foreign-architectures"], "listing dpkg architectures", "check dpkg")
    if debian in out.stdout.split():
        return
    if not _is_root():
        raise HarnessError(f"the sysroot needs Debian's {debian} package lists; once, as root: "
                           f"dpkg --add-architecture {debian} && apt-get update")
    log(f"adding the {debian} architecture to dpkg and updating apt's lists")
    _run(["dpkg", "--add-architecture", debian], f"dpkg --add-architecture {debian}", "run it as root")
    _apt_update()


def _apt_update() -> None:
    _run(["apt-get", "update", "-qq"], "apt-get update", "check the network and /etc/apt/sources.list")


def _download_debs(arch: Arch, dest: Path, log) -> list[Path]:
    names = [f"{pkg}:{arch.debian}" for pkg in DEBIAN_PACKAGES]
    # As root apt drops to the _apt user for downloads, which cannot write into our private temp folder.
    cmd = ["apt-get", "download", "-qq", *(["-o", "APT::Sandbox::User=root"] if _is_root() else []), *names]
    fix = (f"as root: dpkg --add-architecture {arch.debian} && apt-get update (this Debian must carry "
           f"python{PYTHON} for {arch.debian}: bookworm does)")
    try:
        _run(cmd, f"apt-get download of {len(names)} {arch.debian} packages", fix, cwd=dest)
    except HarnessError:
        if not _is_root():
            raise
        log("apt-get download failed; updating apt's lists and retrying once")
        _apt_update()
        _run(cmd, f"apt-get download of {len(names)} {arch.debian} packages", fix, cwd=dest)
    debs = sorted(dest.glob("*.deb"))
    if len(debs) < len(names):
        raise HarnessError(f"building the sysroot: apt-get downloaded {len(debs)} of {len(names)} packages; {fix}")
    return debs


def _install_wheels(arch: Arch, site: Path, specs: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
           "--target", str(site), "--platform", arch.wheel_platform, "--only-binary=:all:",
           "--python-version", PYTHON, "--implementation", "cp", "--no-deps", *specs]
    _run(cmd, f"pip install of the {arch.name} wheels ({', '.join(specs)})",
         f"check that PyPI is reachable and has {arch.wheel_platform} wheels for Python {PYTHON} "
         f"({sys.executable} -m pip must work)")


def _size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


SMOKE = ("import json, platform, numpy, tvm; from tvm.runtime.vm import VirtualMachine; "
         "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
         "'numpy': numpy.__version__, 'tvm': tvm.__version__}))")


def _build(arch_name: str, log) -> Sysroot:
    arch = get_arch(arch_name)
    qemu = find_qemu(arch_name)  # fail before downloading anything
    final = sysroot_dir(arch_name)
    start = time.perf_counter()
    log(f"building the {arch.name} sysroot in {final} (first use; about a minute)")
    _ensure_foreign_arch(arch.debian, log)
    rec = recipe(arch_name)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        root, debs = staging / "root", staging / "debs"
        root.mkdir()
        debs.mkdir()
        packages = {}
        for deb in _download_debs(arch, debs, log):
            _run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}", "the download may be damaged; retry")
            name, version = deb.name.split("_")[:2]
            packages[name] = version.replace("%3a", ":")
        site = root / SITE
        _install_wheels(arch, site, rec["wheels"])
        for rel in DROP:
            (site / rel).unlink(missing_ok=True)
        for rel in TRIM:
            shutil.rmtree(root / rel, ignore_errors=True)
        wheels = dict(p.name.removesuffix(".dist-info").split("-", 1) for p in site.glob("*.dist-info"))
        # Smoke test under qemu: the runtime imports as the runner will import it (this also writes .pyc files,
        # which makes every later emulated start faster).
        sysroot = Sysroot(arch_name, root, {})
        proc = subprocess.run([qemu, "-L", str(root), str(sysroot.python), "-c", SMOKE], capture_output=True,
                              text=True, timeout=600, env=guest_env(sysroot))
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
            raise HarnessError(f"building the sysroot: the {arch.name} Python under {qemu} cannot import numpy and "
                               f"the TVM runtime ({tail}); delete {final} and retry, or report it")
        smoke = json.loads(proc.stdout.strip().splitlines()[-1])
        shutil.rmtree(debs)
        info = {"recipe_hash": _recipe_hash(rec), "recipe": rec, "packages": packages, "wheels": wheels,
                "smoke": smoke, "qemu": qemu, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_s": round(time.perf_counter() - start, 1), "bytes": _size(root)}
        shutil.rmtree(final, ignore_errors=True)  # a half-built or outdated one
        root.rename(final)
        (final / MARKER).write_text(json.dumps(info, indent=1))  # last: marks the sysroot complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"sysroot ready: {info['bytes'] / 1e6:.0f} MB in {info['build_s']:.0f} s "
        f"(Python {smoke['python']}, numpy {smoke['numpy']}, TVM runtime {smoke['tvm']})")
    return Sysroot(arch_name, final, info)


def guest_env(sysroot: Sysroot, extra: dict | None = None) -> dict:
    """The environment of a process under qemu: nothing from this host's Python (venv, PYTHONPATH, LD_*), the
    sysroot's wheels on the path, and the TVM runtime only (what a board runs)."""
    keep = ("PATH", "HOME", "TMPDIR", "TVM_NUM_THREADS", "OMP_NUM_THREADS")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({"LANG": "C.UTF-8", "PYTHONPATH": str(sysroot.site), "PYTHONNOUSERSITE": "1",
                "TVM_USE_RUNTIME_LIB": "1"})
    env.update(extra or {})
    return env
