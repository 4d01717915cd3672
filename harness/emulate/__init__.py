"""Emulated devices: run cross-built artifacts under qemu-user on a cached Debian sysroot and check their outputs.

``sysroot.py`` builds and caches the sysroot, ``transport.py`` runs the device runner in it, ``verify.py``
compares the emulated outputs with the host build's (``sparsebench verify ARTIFACT --emulate aarch64``).
"""

from .sysroot import ARCHES, Sysroot, ensure_sysroot, find_qemu, load_sysroot, sysroot_dir
from .transport import EmulatedTransport
from .verify import VerifyResult, elf_machine, resolve_artifact, verify_artifact

__all__ = ["ARCHES", "EmulatedTransport", "Sysroot", "VerifyResult", "elf_machine", "ensure_sysroot", "find_qemu",
           "load_sysroot", "resolve_artifact", "sysroot_dir", "verify_artifact"]
