"""The transport interface and the result of a command (the same type for local and remote execution)."""

from __future__ import annotations

import abc
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HarnessError


@dataclass(frozen=True)
class CommandResult:
    """One command run on the device."""

    command: list[str]
    exit_code: int  # -1 when it timed out
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    signal: str | None = None  # e.g. "SIGSEGV" when a signal ended the command (exit_code is then -1)
    pid: int | None = None  # the command's process (group) on the device, where known

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def tail(self, lines: int = 5) -> str:
        """The last lines of stderr (or stdout): what a failure message shows."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:])


class TransportError(HarnessError):
    """A step of talking to the device failed (connect, prepare, upload, run, fetch, clean); carries the step name.

    A :class:`HarnessError`: when it escapes a sweep (the device cannot be reached at all) the CLI prints it as one
    line. Inside a sweep the device session turns it into an ERROR row instead.
    """

    def __init__(self, step: str, message: str, result: CommandResult | None = None):
        super().__init__(f"{step}: {message}")
        self.step = step
        self.result = result


class ConnectionLost(TransportError):
    """The connection dropped or hung during a step; ``pid`` is the remote command's process group if one was
    started (it may still run on the device). The session reconnects (:meth:`Transport.reconnect`) and retries."""

    def __init__(self, step: str, message: str, result: CommandResult | None = None, pid: int | None = None):
        super().__init__(step, message, result)
        self.pid = pid


class Stalled(ConnectionLost):
    """No output and no heartbeat from a running command for ``stall_s`` seconds (or an upload that made no
    progress): the connection or the command hung. ``seconds`` is how long nothing came."""

    def __init__(self, step: str, message: str, result: CommandResult | None = None, pid: int | None = None,
                 seconds: float = 0.0):
        super().__init__(step, message, result, pid)
        self.seconds = seconds


class Cancelled(KeyboardInterrupt):
    """:meth:`Transport.cancel` from another thread stopped the command this thread ran (its process group on the
    device is stopped first, as for Ctrl-C): a farm run that is interrupted stops every board's runner."""


class Transport(abc.ABC):
    """Reach a device: a private work directory there, uploads, commands, downloads, cleanup.

    Used as a context manager; connecting is lazy. Paths on the device are strings (they may not exist here).
    """

    name = "abstract"
    #: set (by the device session) while a command that prints heartbeat lines runs: the board's runner. Transports
    #: with a stall detector apply it only then (other commands may rightly be silent for long)
    heartbeat: bool = False
    #: seconds spent opening connections so far (0 for transports that need none)
    connect_s: float = 0.0
    #: set by :meth:`cancel`: a running command stops (its process group too) and :meth:`run` raises Cancelled
    cancelled: bool = False

    def cancel(self) -> None:
        """From another thread: stop the command :meth:`run` is running (or the next one), as Ctrl-C would
        (checked every 0.2 s); the :class:`Cancelled` raised consumes it, so cleanup commands after it run."""
        self.cancelled = True

    @property
    def device(self) -> str:
        """The device as the results' ``device`` column names it (e.g. ``user@host:port``)."""
        return self.name

    def __enter__(self) -> "Transport":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection if it is not open (no-op for local); reconnects after a dropped connection."""

    def close(self) -> None:
        """Close the connection."""

    def reconnect(self, why: str = "") -> None:
        """Open a fresh connection after a lost one; raises :class:`~harness.errors.DeviceLost` when the device
        stays unreachable. Local: nothing to do."""
        self.close()
        self.connect()

    def kill_group(self, pid: int) -> None:
        """Stop the process group ``pid`` (a command started by :meth:`run`) on the device, if it still runs."""

    def exists(self, remote: str) -> bool:
        """Whether the device file ``remote`` exists."""
        return False

    def kernel_oom_note(self, pid: int | None) -> str | None:
        """The kernel's OOM-killer line for ``pid`` (from dmesg, else ``journalctl -k``); None when the log has
        none or cannot be read."""
        try:
            res = self.run(["sh", "-c", "dmesg 2>/dev/null | tail -n 300; journalctl -k -n 300 -q 2>/dev/null"],
                           timeout_s=20)
        except (HarnessError, OSError):
            return None
        return oom_line(res.stdout, pid)


_OOM_RE = re.compile(r"(?:Out of memory|Memory cgroup out of memory): Killed process (\d+)|oom-kill:.*?\bpid=(\d+)")


def oom_line(log: str, pid: int | None) -> str | None:
    """The last kernel log line where the OOM killer killed ``pid`` (any pid when None)."""
    for line in reversed(log.splitlines()):
        match = _OOM_RE.search(line)
        if match and (pid is None or int(match.group(1) or match.group(2)) == pid):
            return line.strip()
    return None

    @abc.abstractmethod
    def make_workdir(self, label: str) -> str:
        """Create and return a fresh directory on the device for one job."""

    @abc.abstractmethod
    def mkdir(self, remote_dir: str, name: str) -> str:
        """Create the folder ``name`` (one path component) in ``remote_dir`` (a work directory made by
        :meth:`make_workdir`, or a folder in one) unless it exists; return its path on the device."""

    @abc.abstractmethod
    def put(self, local: Path, remote_dir: str, name: str | None = None) -> str:
        """Copy ``local`` into ``remote_dir``; return its path on the device."""

    @abc.abstractmethod
    def get(self, remote: str, local: Path) -> Path:
        """Copy a device file to ``local``."""

    @abc.abstractmethod
    def run(self, command: list[str], *, env: dict[str, str] | None = None, timeout_s: float | None = None,
            cwd: str | None = None) -> CommandResult:
        """Run ``command`` (argv list, never a shell string) on the device."""

    @abc.abstractmethod
    def remove(self, remote_dir: str) -> None:
        """Delete a work directory made by :meth:`make_workdir`."""

    @abc.abstractmethod
    def default_python(self) -> str:
        """The interpreter that runs the device-side runner when the profile names none."""


JOB_MARKER = ".sparsebench-job"  # in every work directory: who made it (host, pid, time)
JOB_PID = ".sparsebench-pid"  # in every work directory where a command ran: its process (group) id on the device


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
