"""A real TVM RPC farm for tests: ``python -m tvm.exec.rpc_tracker`` and ``python -m tvm.exec.rpc_server``
processes on 127.0.0.1 (free ports), each in a process group of its own so that one can be killed on demand with
the session it serves.

    farm = RpcFarm(tmp_path)
    farm.start_tracker()
    farm.add_server("k")               # registered with the tracker under key "k" before it returns
    farm.url("k")                      # "rpc://127.0.0.1:PORT/k"
    farm.kill_server(name)             # SIGKILL to its group: the server, its listener and its session process
    farm.stop()                        # everything, at teardown
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"


class FarmError(RuntimeError):
    """A tracker or server did not come up."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tracker_summary(port: int, timeout_s: float = 5.0) -> dict:
    """The tracker's summary (``{"queue_info": {key: {"free", "pending"}}, "server_info": [...]}``)."""
    from tvm.rpc.client import TrackerSession

    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    sock.close()  # reachable: TVM's own client then connects without its minute of retries
    session = TrackerSession((HOST, port))
    try:
        session._sock.settimeout(timeout_s)
        return session.summary()
    finally:
        session.close()


class RpcFarm:
    """One tracker and any number of servers, all stopped by :meth:`stop`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tracker: subprocess.Popen | None = None
        self.port: int | None = None
        self.servers: dict[str, tuple[subprocess.Popen, str]] = {}  # name -> (process, key)
        self._count = 0

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - the process keeps it
        try:
            return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.folder)
        finally:
            log.close()

    def start_tracker(self, timeout_s: float = 20.0) -> int:
        self.port = free_port()
        self.tracker = self._spawn("tracker", ["tvm.exec.rpc_tracker", "--host", HOST, "--port", str(self.port),
                                               "--port-end", str(self.port + 1)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.tracker.poll() is not None:
                raise FarmError(f"the tracker exited: {self.log('tracker')[-500:]}")
            try:
                tracker_summary(self.port, 2.0)
                return self.port
            except (OSError, RuntimeError):
                time.sleep(0.1)
        raise FarmError(f"the tracker did not answer within {timeout_s} s: {self.log('tracker')[-500:]}")

    def add_server(self, key: str, *, wait: bool = True, timeout_s: float = 30.0) -> str:
        """Start a server for ``key``; with ``wait``, return once the tracker lists one more free server for it."""
        assert self.port is not None, "start_tracker first"
        self._count += 1
        name = f"server{self._count}"
        before = self.free(key)
        port = free_port()
        proc = self._spawn(name, ["tvm.exec.rpc_server", "--host", HOST, "--port", str(port), "--port-end",
                                  str(port + 1), "--tracker", f"{HOST}:{self.port}", "--key", key])
        self.servers[name] = (proc, key)
        if wait:
            self.wait_free(key, before + 1, timeout_s=timeout_s, proc=proc, name=name)
        return name

    def free(self, key: str) -> int:
        """Free servers of ``key`` on the tracker now."""
        return int(tracker_summary(self.port)["queue_info"].get(key, {}).get("free", 0))

    def wait_free(self, key: str, n: int, *, timeout_s: float = 30.0, proc=None, name: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise FarmError(f"{name} exited: {self.log(name)[-500:]}")
            if self.free(key) >= n:
                return
            time.sleep(0.1)
        raise FarmError(f"the tracker did not list {n} free server(s) of key {key!r} within {timeout_s} s")

    def url(self, key: str) -> str:
        return f"rpc://{HOST}:{self.port}/{key}"

    def pid(self, name: str) -> int:
        return self.servers[name][0].pid

    def kill_server(self, name: str) -> None:
        """SIGKILL the server's process group (its session process with it) and reap it."""
        proc, _ = self.servers.pop(name)
        _kill(proc)

    def log(self, name: str) -> str:
        try:
            return (self.folder / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        for name in list(self.servers):
            self.kill_server(name)
        if self.tracker is not None:
            _kill(self.tracker)
            self.tracker = None

    def __enter__(self) -> "RpcFarm":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
