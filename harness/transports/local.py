"""This machine as the device: the runner runs in a subprocess, exactly the path a board takes (minus the wire)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .base import JOB_MARKER, JOB_PID, Cancelled, CommandResult, Transport, pid_alive


class LocalTransport(Transport):
    """Work directories under a temporary root; uploads are copies (hard links when possible)."""

    name = "local"

    def __init__(self, root: str | None = None):
        self._root = root
        self._swept = False
        self.swept: list[str] = []  # the job directories that the sweep removed

    @property
    def device(self) -> str:
        return "localhost"

    def make_workdir(self, label: str) -> str:
        """A new work directory with the job marker (who made it); the first one of this transport first sweeps
        the stale directories of this harness under the root (:meth:`sweep_stale`)."""
        if not self._swept:
            self._swept = True
            self.sweep_stale()
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)[:60]
        path = tempfile.mkdtemp(prefix=f"sparsebench-{safe}-", dir=self._root)
        marker = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        Path(path, JOB_MARKER).write_text(json.dumps(marker))
        return path

    def sweep_stale(self) -> None:
        """Remove the work directories under the root that a harness process now gone left behind (killed with
        SIGKILL, or a machine that lost power), stopping a runner still running in one. Only directories with
        this harness's marker are touched. Never raises."""
        root = Path(self._root or tempfile.gettempdir())
        try:
            candidates = list(root.glob("sparsebench-*"))
        except OSError:
            return
        for job_dir in candidates:
            try:
                marker = json.loads((job_dir / JOB_MARKER).read_text())
                if marker.get("host") != socket.gethostname() or pid_alive(int(marker.get("pid", 0))):
                    continue
                runner = (job_dir / JOB_PID).read_text().strip() if (job_dir / JOB_PID).exists() else ""
            except (OSError, ValueError, TypeError, AttributeError):
                continue  # not ours, or not readable: never touched
            if runner.isdigit():
                self.kill_group(int(runner))
            shutil.rmtree(job_dir, ignore_errors=True)
            self.swept.append(str(job_dir))

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
        """The command in a session of its own (``start_new_session``): on a timeout, or when this process is
        interrupted (Ctrl-C, SIGTERM turned into an exception), its whole process group is stopped."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                                cwd=cwd, start_new_session=True)
        if cwd and Path(cwd, JOB_MARKER).exists():  # a work directory: its process group, for a later sweep
            try:
                Path(cwd, JOB_PID).write_text(str(proc.pid))
            except OSError:
                pass
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:  # in steps, so that cancel() from another thread is seen (retrying loses no output)
                step = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
                try:
                    out, err = proc.communicate(timeout=step)
                    break
                except subprocess.TimeoutExpired:
                    if self.cancelled:
                        self.cancelled = False  # consumed: the caller's cleanup commands run again
                        raise Cancelled(f"cancelled: {' '.join(map(str, command))[:80]}") from None
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
        except subprocess.TimeoutExpired:
            _stop(proc)
            out, err = proc.communicate()
            return CommandResult(list(command), -1, _text(out), _text(err), time.perf_counter() - start,
                                 timed_out=True, pid=proc.pid)
        except BaseException:
            _stop(proc)
            raise
        code = proc.returncode
        sig = _signal_name(-code) if code < 0 else None
        return CommandResult(list(command), code, out, err, time.perf_counter() - start, signal=sig,
                             pid=proc.pid)

    def kill_group(self, pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except (ProcessLookupError, PermissionError):
                    return
                time.sleep(0.05)

    def exists(self, remote: str) -> bool:
        return Path(remote).exists()

    def remove(self, remote_dir: str) -> None:
        shutil.rmtree(remote_dir, ignore_errors=True)

    def default_python(self) -> str:
        return sys.executable


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _stop(proc: subprocess.Popen) -> None:
    """TERM to the command's process group, KILL to what is left of it after 2 s."""
    for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
