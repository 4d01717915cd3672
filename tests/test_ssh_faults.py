"""Fault injection against a real OpenSSH sshd on 127.0.0.1: the device drops off and comes back, stays away, hangs,
the runner crashes, the host key changes, the harness is interrupted. After each: nothing of ours left running on
the "board" and no job directory left behind.

This module starts its own sshd (tests/sshd.py): the tests kill, stop and restart it, which the session-wide one
of the other SSH tests must not see. The job is the small ONNX model run by the onnxruntime peer (no compile), with
timing budgets sized so the runner is busy for a few seconds.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from harness.config import MeasureConfig
from harness.device.session import run_group_on_device
from harness.errors import DeviceLost
from harness.peers import PEERS
from harness.transports import LocalTransport, SSHTransport
from harness.transports.base import Stalled, oom_line
from sshd import SSHD_BIN, start_sshd


# ---------------------------------------------------------------------------------------------------------------
# the server and what runs under it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("faults-sshd"))
    yield server
    stop_sessions(server, signal.SIGCONT)
    kill_sshd(server)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def session_processes(server) -> list[int]:
    """sshd's per-connection processes (the listener's children and their sshd children), not what they run."""
    found, todo = [], _children(server.process.pid)
    while todo:
        pid = todo.pop()
        if _comm(pid).startswith("sshd"):
            found.append(pid)
            todo += _children(pid)
    return found


def stop_sessions(server, sig=signal.SIGSTOP) -> None:
    """SIGSTOP (or another signal to) the sshd processes serving our connections: the link hangs."""
    for pid in session_processes(server):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_sshd(server) -> None:
    """The device drops off: the listener and every connection die at once."""
    sessions = session_processes(server)
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def restart_sshd(server) -> None:
    """The device is back: sshd again on the same port with the same config (and whatever host key is there)."""
    import socket

    server.process = subprocess.Popen([str(SSHD_BIN), "-D", "-e", "-f", str(server.folder / "sshd_config")],
                                      stdout=subprocess.DEVNULL, stderr=open(server.log, "a"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sshd did not come back")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def runner_pids(root: Path) -> list[int]:
    return [int(p.read_text()) for p in root.glob("*/*/.sparsebench-pid") if p.read_text().strip().isdigit()]


def wait_for_runner(root: Path, timeout: float = 30, settle: float = 1.0) -> int:
    """The pid of the runner once it started (its work directory's .sparsebench-pid) and printed a heartbeat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = runner_pids(root)
        if pids:
            time.sleep(settle)  # past the imports: the runner is loading or measuring
            return pids[0]
        time.sleep(0.05)
    raise AssertionError("the runner did not start")


def assert_nothing_left(root: Path, pids: list[int]) -> None:
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and any(alive(p) or group_members(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        assert not alive(pid), f"the runner {pid} still runs"
        assert not group_members(pid), f"processes of the runner's group {pid} still run: {group_members(pid)}"
    left = [p for p in root.glob("*/*") if p.is_dir()] if root.exists() else []
    assert left == [], f"job directories left on the device: {left}"


# ---------------------------------------------------------------------------------------------------------------
# the job


@pytest.fixture(scope="module")
def job(small_model):
    import onnx

    model, eval_set = small_model
    name = onnx.load(str(model)).graph.input[0].name
    inputs = {name: np.load(eval_set)["x"].astype(np.float32)}
    return model, inputs


def measure(seconds: float) -> MeasureConfig:
    """The runner busy for about 2 x ``seconds`` (a settling round, then one round), with a heartbeat per round."""
    return MeasureConfig(warmup_runs=1, warmup_s=0.01, min_runs=5, min_s=seconds, max_runs=10**9, rounds=1,
                         max_rounds=1, extend_s=0.0, timeout_s=120, energy_idle_s=0.0, energy_window_s=0.1,
                         sensor_root="/nonexistent")


def transport(server, root: Path, **options) -> SSHTransport:
    settings = {"reconnect_attempts": 3, "reconnect_backoff_s": 0.5, "stall_s": 20.0}
    settings.update(options)
    return SSHTransport(server.url, identity=str(server.user_key), known_hosts=str(server.known_hosts),
                        remote_root=str(root), run_name="run1", **settings)


def run_job(t, job, seconds: float):
    model, inputs = job
    return run_group_on_device(t, models=[(model, PEERS["onnxruntime"])], inputs=inputs, batch=1,
                               measure=measure(seconds), python=sys.executable, label="small@b1")


def after(action, root: Path, settle: float = 1.0):
    """Run ``action(runner_pid)`` in a thread once the runner runs; returns the thread (join it)."""
    box = {}

    def go():
        try:
            box["pid"] = wait_for_runner(root, settle=settle)
            action(box["pid"])
        except BaseException as err:  # noqa: BLE001 -- reported by the test
            box["error"] = err

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.box = box
    return thread


# ---------------------------------------------------------------------------------------------------------------
# device loss


def test_device_drops_off_and_comes_back_the_job_retries(server, job, tmp_path):
    root = tmp_path / "remote"

    def drop_and_return(pid):
        kill_sshd(server)
        time.sleep(1.0)
        restart_sshd(server)

    with transport(server, root) as t:
        thread = after(drop_and_return, root)
        start = time.monotonic()
        [dev] = run_job(t, job, 2.0)
        thread.join()
        assert "error" not in thread.box, thread.box
        assert dev.error is None, dev.error
        assert dev.result["ok"] and dev.outputs is not None and len(dev.outputs) == len(next(iter(job[1].values())))
        assert time.monotonic() - start < 60
        first = thread.box["pid"]
    assert_nothing_left(root, [first])


def test_device_stays_away_device_lost_at_once(server, job, tmp_path):
    root = tmp_path / "remote"
    t = transport(server, root, reconnect_attempts=2, reconnect_backoff_s=0.3)
    try:
        t.connect()
        thread = after(lambda pid: kill_sshd(server), root)
        start = time.monotonic()
        with pytest.raises(DeviceLost) as info:
            run_job(t, job, 3.0)
        thread.join()
        took = time.monotonic() - start
        message = str(info.value)
        assert message.startswith(f"device ssh://{server.label} unreachable after 2 reconnects over ")
        assert message.endswith("(last: Connection refused)"), message  # the CLI adds how to resume
        assert took < 15, took
        # the next job does not try again and again: the caller stops the run (one message, no ERROR rows)
    finally:
        t.close()
        restart_sshd(server)
    # the device back, the next run (a new transport) sweeps what the lost one left: its runner and directory
    with transport(server, root) as fresh:
        fresh.connect()
        assert len(fresh.swept) == 1, fresh.swept
    assert_nothing_left(root, [thread.box["pid"]])


def test_host_key_changed_mid_run_stops_at_once(server, job, tmp_path):
    root = tmp_path / "remote"
    key = server.host_key
    saved = {p: p.read_bytes() for p in (key, key.with_suffix(".pub"))}

    def new_key(pid):
        kill_sshd(server)
        for p in saved:
            p.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        restart_sshd(server)

    t = transport(server, root, reconnect_attempts=5, reconnect_backoff_s=0.3)
    try:
        thread = after(new_key, root)
        with pytest.raises(DeviceLost) as info:
            run_job(t, job, 3.0)
        thread.join()
        message = str(info.value)
        assert f"device {server.label}: the host key of [127.0.0.1]:{server.port} CHANGED" in message
        assert "intercepting" in message and "ssh-keygen -R" in message
        # refused at the first answer, not after every reconnect (5 x backoff would be 0.3 + 0.6 + ... = 9.3 s)
        assert "unreachable" not in message
    finally:
        t.close()
        kill_sshd(server)
        for p, data in saved.items():
            p.write_bytes(data)
        restart_sshd(server)
    with transport(server, root) as fresh:
        fresh.connect()
    assert_nothing_left(root, [thread.box["pid"]])


# ---------------------------------------------------------------------------------------------------------------
# liveness


def test_hung_connection_is_a_stall_and_is_cleaned_up(server, job, tmp_path):
    root = tmp_path / "remote"
    with transport(server, root, stall_s=3.0) as t:
        stopped = {}

        def hang(pid):
            stopped["at"] = time.monotonic()
            stopped["pids"] = session_processes(server)
            stop_sessions(server)

        thread = after(hang, root)
        try:
            [dev] = run_job(t, job, 8.0)
        finally:
            thread.join()
            for pid in stopped.get("pids", []):  # the hung server processes go (their connection is abandoned)
                for sig in (signal.SIGKILL, signal.SIGCONT):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        detected = time.monotonic() - stopped["at"]
        assert dev.error == (f"run: stalled: no heartbeat from the runner for 3 s on {server.label}; the runner's "
                             "processes there were stopped"), dev.error
        assert detected < 3 + 6, detected  # 3 s of silence, then a fresh connection stops and cleans
    assert_nothing_left(root, [thread.box["pid"]])


def test_hung_channel_but_result_written_is_used(server, job, tmp_path):
    root = tmp_path / "remote"
    with transport(server, root, stall_s=6.0) as t:
        stopped = {}

        def hang(pid):
            stopped["pids"] = session_processes(server)
            stop_sessions(server)

        thread = after(hang, root, settle=0.0)
        start = time.monotonic()
        try:
            [dev] = run_job(t, job, 0.3)  # the runner finishes well within stall_s, but its output never comes
        finally:
            thread.join()
            for pid in stopped.get("pids", []):
                for sig in (signal.SIGKILL, signal.SIGCONT):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        assert dev.error is None, dev.error
        assert dev.result["ok"] and dev.outputs is not None
        assert time.monotonic() - start > 6  # it waited for the stall: the result came over a fresh connection
    assert_nothing_left(root, [thread.box["pid"]])


def test_upload_over_a_hung_link_is_a_stall_not_a_full_disk(server, tmp_path):
    root = tmp_path / "remote"
    with transport(server, root) as t:
        t.upload_floor_s = 1.0
        work = t.make_workdir("job")
        src = tmp_path / "model.so"
        src.write_bytes(os.urandom(100_000))
        pids = session_processes(server)
        stop_sessions(server)
        try:
            with pytest.raises(Stalled) as info:
                t.put(src, work)
        finally:
            for pid in pids:
                for sig in (signal.SIGKILL, signal.SIGCONT):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        message = str(info.value)
        assert message.startswith(f"upload: device {server.label}: stalled: the upload of model.so")
        assert "disk" not in message and "permission" not in message
        t.remove(work)  # a fresh connection


# ---------------------------------------------------------------------------------------------------------------
# crashes: the cause named


@pytest.mark.parametrize("sig, expected", [(signal.SIGSEGV, "runner killed by SIGSEGV (signal 11)"),
                                           (signal.SIGKILL, "runner killed by SIGKILL (signal 9)")])
def test_runner_killed_by_a_signal_names_it(server, job, tmp_path, sig, expected):
    root = tmp_path / "remote"
    with transport(server, root) as t:
        thread = after(lambda pid: os.kill(pid, sig), root)
        [dev] = run_job(t, job, 4.0)
        thread.join()
        assert dev.error.startswith(f"run: {expected} during "), dev.error
        assert "peak memory" in dev.error and "batch 1" in dev.error
        assert "Errno 2" not in dev.error
        if sig == signal.SIGKILL:
            assert "OOM killer" in dev.error
    # the onnxruntime process the runner started (same process group) is gone too
    assert_nothing_left(root, [thread.box["pid"]])


def test_oom_kernel_lines_are_recognised():
    log = ("[12.3] foo\n"
           "[99.1] Out of memory: Killed process 4242 (python3) total-vm:812345kB, anon-rss:701234kB\n"
           "[99.2] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=python3,pid=5151,uid=0\n")
    assert oom_line(log, 4242).startswith("[99.1] Out of memory: Killed process 4242")
    assert "pid=5151" in oom_line(log, 5151)
    assert oom_line(log, 77) is None


# ---------------------------------------------------------------------------------------------------------------
# cleaning up what we start


def test_interrupt_stops_the_remote_runner_and_removes_its_directory(server, job, tmp_path):
    # Ctrl-C as Python handles it by default (an xdist worker, or an earlier in-process CLI, may have changed SIGINT's
    # handler, and then interrupt_main does nothing)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    root = tmp_path / "remote"
    try:
        with transport(server, root) as t:
            thread = after(lambda pid: _thread.interrupt_main(), root)
            with pytest.raises(KeyboardInterrupt):
                run_job(t, job, 6.0)
            thread.join()
    finally:
        signal.signal(signal.SIGINT, old)
    assert_nothing_left(root, [thread.box["pid"]])


def test_stale_job_directories_of_ours_are_swept_only_ours(server, tmp_path):
    import json
    import socket

    root = tmp_path / "remote"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = root / "old-run" / "small_b1-abc123"
    stale.mkdir(parents=True)
    (stale / ".sparsebench-job").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                         "started": time.time() - 60, "run": "old-run"}))
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a runner its harness left behind
    (stale / ".sparsebench-pid").write_text(f"{orphan.pid}\n")
    (stale / "model0.so").write_bytes(b"x")
    live = root / "other-run" / "job-def456"  # a running harness's (this process: a live pid)
    live.mkdir(parents=True)
    (live / ".sparsebench-job").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                                                       "started": time.time(), "run": "other-run"}))
    kept = root / "kept-run" / "job-0a0b0c"  # --keep-remote: left for the user even when its owner is gone
    kept.mkdir(parents=True)
    (kept / ".sparsebench-job").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "keep": True,
                                                       "started": time.time() - 60, "run": "kept-run"}))
    foreign = root / "not-ours"  # no marker: never touched
    (foreign / "data").mkdir(parents=True)
    with transport(server, root) as t:
        assert t.swept == [str(stale)]
    orphan.wait(timeout=10)
    assert not stale.exists() and not (root / "old-run").exists()
    assert live.is_dir() and kept.is_dir() and (foreign / "data").is_dir()


def test_local_timeout_stops_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    res = LocalTransport().run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout_s=0.5)
    assert res.timed_out
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the command's child still runs after the timeout"
    res = LocalTransport().run(["sh", "-c", "kill -SEGV $$"])
    assert res.signal == "SIGSEGV"


# ---------------------------------------------------------------------------------------------------------------
# the whole pipeline: the device lost mid-run stops the run with one line; --resume finishes it


@pytest.mark.slow
def test_cli_device_lost_stops_the_run_then_resume_finishes(server, small_model, tmp_path):
    import sqlite3

    from conftest import write_config
    from test_ssh import cli, ssh_options

    model, eval_set = small_model
    db = tmp_path / "r.db"
    # one variant at two batches: two device jobs (groups), so a lost device could cascade into two ERROR rows
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0,),
                       methods=("unstructured",), batch=(1, 2), min_s=4.0)
    root = tmp_path / "remote"
    options = ssh_options(server, tmp_path)
    thread = after(lambda pid: kill_sshd(server), root)
    try:
        proc = cli(server, "run", str(cfg), "--no-progress", *options)
        thread.join()
    finally:
        restart_sshd(server)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr  # EXIT_STOPPED
    lines = [l for l in proc.stderr.splitlines() if l.startswith("sparsebench: ")]
    assert len(lines) == 1 and " stopped: " in lines[0], proc.stderr
    assert f"device ssh://{server.label} unreachable after 3 reconnects over" in lines[0], lines[0]
    assert "(last: Connection refused); the rows measured so far are kept in" in lines[0], lines[0]
    run_id = lines[0].rsplit("--resume ", 1)[1].split()[0]
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT verdict FROM results WHERE run_id=?", (run_id,)).fetchall()
    conn.close()
    assert rows == [], rows  # no ERROR row per job: nothing was measured, nothing is stored as failed

    # the device is back: --resume sweeps what the lost run left on it (its runner, its directory) and finishes
    proc = cli(server, "run", str(cfg), "--no-progress", "--resume", run_id, *options)
    assert proc.returncode == 0, proc.stderr
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT verdict FROM results WHERE run_id=?", (run_id,)).fetchall()
    conn.close()
    assert len(rows) == 2 and all(v != "ERROR" for (v,) in rows), rows
    assert_nothing_left(root, [thread.box["pid"]])


def test_fault_settings_come_from_the_target_profile(server):
    """reconnect_attempts, reconnect_backoff_s, stall_s and keepalive_s of the target profile reach the transport
    (TargetProfile fields of these names); a profile without them leaves the defaults."""
    from types import SimpleNamespace

    from harness.transports.spec import DeviceSpec

    spec = DeviceSpec(device=server.url, identity=(str(server.user_key),), known_hosts=str(server.known_hosts))
    profile = SimpleNamespace(name="board", transport="ssh", port=22, remote_root="~/sb", python="",
                              reconnect_attempts=5, reconnect_backoff_s=0.5, stall_s=7.0, keepalive_s=3.0)
    t = spec.transport(profile, run_name="r")
    assert (t.reconnect_attempts, t.reconnect_backoff_s, t.stall_s, t.keepalive_s) == (5, 0.5, 7.0, 3.0)
    t = spec.transport(SimpleNamespace(name="board", transport="ssh", port=22, remote_root="~/sb", python=""))
    assert (t.reconnect_attempts, t.reconnect_backoff_s, t.stall_s, t.keepalive_s) == (3, 1.0, 60.0, 5.0)


def test_local_stale_job_directories_are_swept_only_ours(tmp_path):
    """This machine as the device: a work directory whose harness process is gone (SIGKILLed) is removed by the
    next run's first work directory, and a runner still running in it is stopped; a directory without our marker,
    or whose harness still runs, is left alone."""
    import json
    import socket

    from harness.transports.base import JOB_MARKER, JOB_PID
    from harness.transports.local import LocalTransport

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, foreign, busy = (tmp_path / f"sparsebench-{name}-x" for name in ("stale", "foreign", "busy"))
    for path in (stale, foreign, busy):
        path.mkdir()
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    marker = {"host": socket.gethostname(), "started": time.time()}
    (stale / JOB_MARKER).write_text(json.dumps({**marker, "pid": dead.pid}))
    (stale / JOB_PID).write_text(str(runner.pid))
    (busy / JOB_MARKER).write_text(json.dumps({**marker, "pid": os.getpid()}))
    try:
        t = LocalTransport(str(tmp_path))
        fresh = Path(t.make_workdir("job"))
        assert t.swept == [str(stale)] and not stale.exists() and foreign.exists() and busy.exists()
        assert runner.wait(timeout=10) is not None  # the orphaned runner was stopped
        assert json.loads((fresh / JOB_MARKER).read_text())["pid"] == os.getpid()
        LocalTransport(str(tmp_path)).make_workdir("again")
        assert fresh.exists()  # made by this (live) process: not stale
    finally:
        if runner.poll() is None:
            runner.kill()


def test_a_connection_reset_during_the_banner_is_one_line_without_paramikos_traceback(tmp_path):
    """A server that accepts and then resets the connection (sshd under MaxStartups pressure, a restarting daemon):
    paramiko's transport thread logs the failure with a traceback, which Python would print to stderr; the user
    sees our one line only (CI once failed on exactly this)."""
    import socket
    import struct

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]

    def reset_each():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            time.sleep(0.3)  # paramiko's thread is reading the banner by now
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # RST

    threading.Thread(target=reset_each, daemon=True).start()
    script = Path(sys.executable).with_name("sparsebench")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]
    try:
        proc = subprocess.run([*cmd, "doctor", f"ssh://nobody@127.0.0.1:{port}", "--connect-timeout", "5",
                               "--known-hosts", str(tmp_path / "kh")], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "HOME": str(tmp_path)})
    finally:
        srv.close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Connection reset by peer" in proc.stderr, proc.stderr
