"""A transport whose device is this machine's CPU emulating another one: qemu-user on a Debian sysroot.

Files stay local (the emulated process sees this machine's file system); only commands differ: they run as
``qemu-aarch64 -L SYSROOT SYSROOT/usr/bin/python3.11 ...`` (binfmt_misc is not assumed, so qemu is named
explicitly) in an environment holding nothing from this host's Python.
"""

from __future__ import annotations

import subprocess
import time

from ..transports.base import CommandResult
from ..transports.local import LocalTransport, _text
from .sysroot import Sysroot, find_qemu, guest_env


class EmulatedTransport(LocalTransport):
    """Runs the device runner under qemu-user with the sysroot's Python, numpy and TVM runtime."""

    def __init__(self, sysroot: Sysroot, qemu: str | None = None, root: str | None = None):
        super().__init__(root)
        self.sysroot = sysroot
        self.qemu = qemu or find_qemu(sysroot.arch)
        self.name = f"qemu-{sysroot.arch}"

    @property
    def device(self) -> str:
        return f"qemu-{self.sysroot.arch} (emulated, {self.sysroot.root})"

    def default_python(self) -> str:
        return str(self.sysroot.python)

    def run(self, command, *, env=None, timeout_s=None, cwd=None) -> CommandResult:
        argv = [self.qemu, "-L", str(self.sysroot.root), *command]
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=guest_env(self.sysroot, env),
                                  timeout=timeout_s, cwd=cwd)
        except subprocess.TimeoutExpired as err:
            return CommandResult(argv, -1, _text(err.stdout), _text(err.stderr), time.perf_counter() - start,
                                 timed_out=True)
        return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)
