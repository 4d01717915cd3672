"""Board leases and ``sparsebench farm status`` on loopback boards: two real sshd (different ports and keys) and
this machine, one board listed with the wrong profile, one unreachable, one held by another run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, sparsebench, start_test_sshd
from sshd import free_port

from harness.config import load_target
from harness.farm.inventory import load_farm
from harness.farm.lease import BoardBusy, BoardLease, lease_holder
from harness.farm.status import check_board, profile_mismatch
from harness.transports.local import LocalTransport
from harness.transports.ssh import SSHTransport


@pytest.fixture(scope="module")
def sshd2(tmp_path_factory):
    """A second sshd: another port, another host key and user key."""
    server = start_test_sshd(tmp_path_factory, "sshd2")
    yield server
    server.stop()


def ssh_transport(server, root: Path) -> SSHTransport:
    return SSHTransport(server.url, identity=str(server.user_key), known_hosts=str(server.known_hosts),
                        remote_root=str(root), sweep=False)


def dead_owner_lease(transport_args: str, root: Path) -> None:
    """A lease left by a harness process that is gone (it exits without releasing)."""
    code = (f"from harness.farm.lease import BoardLease\n"
            f"from harness.transports.local import LocalTransport\n"
            f"from harness.transports.ssh import SSHTransport\n"
            f"BoardLease({transport_args}, board='b', run_id='dead-run').acquire()\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


# -- leases ------------------------------------------------------------------------------------------------------


def test_lease_local(tmp_path):
    first = BoardLease(LocalTransport(root=str(tmp_path)), board="b", run_id="run-1", ttl_s=1)
    second = BoardLease(LocalTransport(root=str(tmp_path)), board="b", run_id="run-2", ttl_s=1)
    assert lease_holder(LocalTransport(root=str(tmp_path))) is None
    with first:
        holder = lease_holder(LocalTransport(root=str(tmp_path)))
        assert holder["run_id"] == "run-1" and "token" not in holder
        with pytest.raises(BoardBusy, match=r"board b \(localhost\) is in use by run run-1 from host .* pid \d+ "
                                            r"since .*UTC") as err:
            second.acquire()
        assert err.value.holder["run_id"] == "run-1"
        first.refresh()
        # a job of the owner alive on the board keeps its lease, even unrefreshed past ttl_s
        board = LocalTransport(root=str(tmp_path))
        workdir = board.make_workdir("job")
        job = threading.Thread(target=board.run, args=(["sleep", "3"],), kwargs={"cwd": workdir})
        job.start()
        time.sleep(2.2)
        with pytest.raises(BoardBusy):
            second.acquire()
        job.join()
        # not refreshed for ttl_s, nothing running: taken over; the old holder finds out at its next refresh
        second.acquire()
        assert lease_holder(board)["run_id"] == "run-2"
        with pytest.raises(BoardBusy, match="in use by run run-2"):
            first.refresh()
    assert lease_holder(board)["run_id"] == "run-2"  # first's release left second's lease alone
    second.release()
    assert lease_holder(board) is None


def test_lease_dead_owner_taken_over_at_once(tmp_path):
    dead_owner_lease(f"LocalTransport(root={str(tmp_path)!r})", tmp_path)
    transport = LocalTransport(root=str(tmp_path))
    assert lease_holder(transport) is None  # its owner is gone: stale
    with BoardLease(transport, board="b", run_id="run-3"):
        assert lease_holder(transport)["run_id"] == "run-3"


def race(make_transport, n: int = 8) -> list[str]:
    """``n`` threads acquire the same board at once; what each got."""
    barrier = threading.Barrier(n)
    outcome: list[str] = [""] * n
    transports = [make_transport() for _ in range(n)]
    for t in transports:
        t.connect()

    def attempt(i: int) -> None:
        lease = BoardLease(transports[i], board="b", run_id=f"racer-{i}")
        barrier.wait()
        try:
            lease.acquire()
            outcome[i] = "won"
        except BoardBusy:
            outcome[i] = "busy"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in transports:
        t.close()
    return outcome


def test_lease_race_local(tmp_path):
    assert sorted(race(lambda: LocalTransport(root=str(tmp_path)))) == ["busy"] * 7 + ["won"]
    # the same over a stale lease: exactly one takes it over
    (tmp_path / "x").mkdir()
    dead_owner_lease(f"LocalTransport(root={str(tmp_path / 'x')!r})", tmp_path / "x")
    assert sorted(race(lambda: LocalTransport(root=str(tmp_path / "x")))) == ["busy"] * 7 + ["won"]


def test_lease_ssh(sshd, tmp_path):
    root = tmp_path / "board"
    with ssh_transport(sshd, root) as a, ssh_transport(sshd, root) as b:
        with BoardLease(a, board="b", run_id="run-a"):
            with pytest.raises(BoardBusy, match=rf"board b \({sshd.label}\) is in use by run run-a from host"):
                BoardLease(b, board="b", run_id="run-b").acquire()
            assert lease_holder(b)["run_id"] == "run-a"
        assert lease_holder(b) is None
    args = (f"SSHTransport({sshd.url!r}, identity={str(sshd.user_key)!r}, known_hosts={str(sshd.known_hosts)!r}, "
            f"remote_root={str(root)!r}, sweep=False)")
    dead_owner_lease(args, root)
    assert (root / "board.lease" / "owner").is_file()
    assert sorted(race(lambda: ssh_transport(sshd, root), n=6)) == ["busy"] * 5 + ["won"]


def test_exclusive_transport_needs_no_lease(tmp_path):
    transport = LocalTransport(root=str(tmp_path))
    transport.exclusive = True  # what the rpc transport declares: the tracker's allocation is the lease
    with BoardLease(transport, board="b", run_id="r"):
        BoardLease(transport, board="b", run_id="r2").acquire()
    assert not list(tmp_path.iterdir())


# -- status ------------------------------------------------------------------------------------------------------


def test_profile_mismatch():
    assert profile_mismatch(load_target("rpi5"), "aarch64") is None
    assert profile_mismatch(load_target("rpi5"), "arm64") is None
    assert profile_mismatch(load_target("rpi5"), "x86_64") == ("board reports x86_64 but profile rpi5 targets aarch64 "
                                                               "(mtriple aarch64-linux-gnu)")
    assert profile_mismatch(load_target("local"), "x86_64") is None
    assert "armv7l" in profile_mismatch(load_target("rpi4"), "armv7l")
    assert profile_mismatch(load_target("rpi5"), None) is None


def write_farm(folder: Path, sshd, sshd2, dead_port: int) -> Path:
    (folder / "ssh_config").write_text("")
    boards = []
    for name, server, profile in (("loop-a", sshd, "local"), ("loop-b", sshd2, "local"), ("fake-pi", sshd2, "rpi5")):
        boards.append(f"""
[[board]]
name = "{name}"
profile = "{profile}"
url = "{server.url}"
identity = "{server.user_key}"
known_hosts = "{server.known_hosts}"
remote_root = "{folder / name}"
python = "{sys.executable}"
tags = ["loop"]
""")
    boards.append(f"""
[[board]]
name = "gone"
profile = "local"
url = "ssh://nobody@127.0.0.1:{dead_port}"
tags = ["loop"]

[[board]]
name = "here"
profile = "local"
url = "local"
tags = ["loop", "host"]
""")
    path = folder / "farm.toml"
    path.write_text('[farm]\nname = "loopback"\nssh_config = "ssh_config"\n' + "".join(boards))
    return path


@pytest.mark.slow
def test_farm_status(sshd, sshd2, tmp_path):
    farm_file = write_farm(tmp_path, sshd, sshd2, free_port())
    farm = load_farm(farm_file)
    # another run holds loop-b
    holder = farm.board("loop-b").transport(run_name="other")
    with BoardLease(holder, board="loop-b", run_id="other-run"):
        start = time.monotonic()
        res = sparsebench("farm", "status", "--farm", str(farm_file), "--timeout", "5")
        took = time.monotonic() - start
    holder.close()
    assert res.returncode == 3, res.stdout + res.stderr
    out = res.stdout
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["board", "url", "profile", "reachable"]
    row = {line.split()[0]: line for line in lines[1:6]}
    assert row["loop-a"].rstrip().endswith("OK") and "x86_64" in row["loop-a"]
    assert row["here"].rstrip().endswith("OK")
    assert "run other-run host" in row["loop-b"]
    assert " no " in row["gone"]
    problems = [line for line in lines if line.startswith("board ")]
    assert any(p.startswith("board fake-pi: board reports x86_64 but profile rpi5 targets aarch64") and " -- " in p
               for p in problems), out
    assert any(p.startswith("board gone: unreachable:") and " -- " in p for p in problems), out
    assert any(p.startswith("board loop-b: held by run other-run from host") and " -- " in p for p in problems), out
    assert not any(p.startswith(("board loop-a", "board here")) for p in problems)
    assert lines[-1] == "farm loopback: 2 of 5 boards usable"
    shared = [line for line in lines if line.startswith("warning: boards ")]
    assert len(shared) == 1 and "loop-a" in shared[0] and "here" in shared[0] and "are one machine" in shared[0], out
    assert took < 60  # the boards are checked in parallel
    assert "Traceback" not in res.stderr

    # --json, a selection by glob: all usable -> exit 0
    res = sparsebench("farm", "status", "--farm", str(farm_file), "--boards", "loop-a", "her*", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert (doc["farm"], doc["usable"], doc["unusable"]) == ("loopback", 2, 0)
    assert [b["board"] for b in doc["boards"]] == ["loop-a", "here"]
    a = doc["boards"][0]
    assert {"board", "url", "profile", "usable", "reachable", "python", "tvm", "machine", "sensors", "load",
            "governor", "holder", "problems"} <= set(a)
    assert a["usable"] and a["reachable"] and a["machine"] == "x86_64" and a["tvm"] and a["problems"] == []
    assert a["holder"] is None and a["python"] == "{}.{}.{}".format(*sys.version_info[:3])


def test_check_board_never_raises(tmp_path):
    (tmp_path / "farm.toml").write_text(f"""
[[board]]
name = "gone"
profile = "local"
url = "ssh://nobody@127.0.0.1:{free_port()}"
""")
    status = check_board(load_farm(tmp_path / "farm.toml").boards[0], timeout_s=3)
    assert not status.usable and not status.reachable
    assert status.problems[0].startswith("unreachable: connect: device nobody@127.0.0.1:")
