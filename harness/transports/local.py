"""This machine as the device: the runner runs in a subprocess, exactly the path a board takes (minus the wire)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .base import CommandResult, Transport


class LocalTransport(Transport):
    """Work directories under a temporary root; uploads are copies (hard links when possible)."""

    name = "local"

    def __init__(self, root: str | None = None):
        self._root = root

    @property
    def device(self) -> str:
        return "localhost"

    def make_workdir(self, label: str) -> str:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)[:60]
        return tempfile.mkdtemp(prefix=f"sparsebench-{safe}-", dir=self._root)

    def mkdir(self, remote_dir: str, name: str) -> str:
        path = Path(remote_dir) / name
        path.mkdir(exist_ok=True)
        return str(path)

    def put(self, local: Path, remote_dir: str, name: str | None = None) -> str:
        dest = Path(remote_dir) / (name or Path(local).name)
        try:
            os.link(local, dest)
        except OSError:
            shutil.copyfile(local, dest)
        return str(dest)

    def get(self, remote: str, local: Path) -> Path:
        shutil.copyfile(remote, local)
        return Path(local)

    def run(self, command, *, env=None, timeout_s=None, cwd=None) -> CommandResult:
        full_env = dict(os.environ)
        full_env.update(env or {})
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout_s, cwd=cwd)
        except subprocess.TimeoutExpired as err:
            return CommandResult(list(command), -1, _text(err.stdout), _text(err.stderr),
                                 time.perf_counter() - start, timed_out=True)
        return CommandResult(list(command), proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)

    def remove(self, remote_dir: str) -> None:
        shutil.rmtree(remote_dir, ignore_errors=True)

    def default_python(self) -> str:
        return sys.executable


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
