"""``sparsebench run CONFIG --farm``: real boards on this machine -- two (or one) real sshd on 127.0.0.1 and the
local transport -- a real small model compiled with TVM, real SQLite. A board killed mid-run (its sshd gone) is
quarantined and its group measured elsewhere; a farm of one lost board stops with exit 4 and --resume finishes."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import ROOT, start_test_sshd, write_config
from test_ssh_faults import after, kill_sshd, restart_sshd

from harness.farm.inventory import Board


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """targets/local.toml with short reconnects: a lost board is given up in about a second."""
    path = tmp_path_factory.mktemp("profile") / "quick.toml"
    text = (ROOT / "targets" / "local.toml").read_text().replace('name = "local"', 'name = "quick"')
    path.write_text(text.replace("[device]\n", "[device]\nreconnect_attempts = 1\nreconnect_backoff_s = 0.2\n",
                                1))
    return path


@pytest.fixture(scope="module")
def own_sshd(tmp_path_factory):
    """A second sshd, this module's own: the tests kill and restart it."""
    server = start_test_sshd(tmp_path_factory, "farm-sshd")
    yield server
    kill_sshd(server)


def ssh_board(name, server, profile, root: Path) -> Board:
    return Board(name=name, profile=str(profile), url=server.url, python=sys.executable,
                 identity=(str(server.user_key),), known_hosts=str(server.known_hosts), remote_root=str(root))


def config(tmp_path, small_model, *, batches=(1, 2, 3, 4), min_s=0.05):
    model, eval_set = small_model
    return write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db", levels=(0, 0.9),
                        methods=("unstructured",), batch=batches, min_s=min_s, min_runs=5)


def rows(db: Path, run_id: str) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    out = [dict(r) for r in conn.execute("SELECT * FROM results WHERE run_id=?", (run_id,))]
    conn.close()
    return out


def run_row(db: Path, run_id: str) -> dict:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    out = dict(conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone())
    conn.close()
    return out


def notes(db: Path, run_id: str) -> list[str]:
    conn = sqlite3.connect(db)
    out = [r[0] for r in conn.execute("SELECT note FROM notes WHERE run_id=? ORDER BY rowid", (run_id,))]
    conn.close()
    return out


def farm_run(cfg_path: Path, boards, capsys, **kw) -> tuple[int, str, str]:
    from harness.config import load_config
    from harness.farm.run import run_farm

    cfg = load_config(cfg_path)
    code = run_farm(cfg, boards, db=cfg.db, progress=False, farm_name="t", **kw)
    err = capsys.readouterr().err
    run_id = err.split("run ", 1)[1].split(":", 1)[0]
    return code, run_id, err


RUNNER = """
import dataclasses, json, sys
from test_farm_run import Board
from harness.config import load_config
from harness.farm.run import run_farm
a = json.loads(sys.argv[1])
boards = [Board(**{**b, "identity": tuple(b["identity"]), "tags": tuple(b["tags"])}) for b in a["boards"]]
cfg = load_config(a["cfg"])
sys.exit(run_farm(cfg, boards, db=cfg.db, resume=a["resume"], progress=False, farm_name="t", kernels=a["kernels"]))
"""


def farm_process(cfg_path: Path, boards, *, resume=None, kernels="tvm-default") -> tuple[int, str, str]:
    """run_farm in its own process (as the CLI runs it: a lost board's lease stays behind with that process's pid,
    which a later process takes over once that pid is gone)."""
    import dataclasses
    import json
    import os
    import subprocess

    arg = json.dumps({"cfg": str(cfg_path), "resume": resume, "kernels": kernels,
                      "boards": [dataclasses.asdict(b) for b in boards]})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", RUNNER, arg], capture_output=True, text=True, env=env, timeout=300)
    run_id = proc.stderr.split("run ", 1)[1].split(":", 1)[0] if "run " in proc.stderr else ""
    return proc.returncode, run_id, proc.stderr


def assert_groups_whole(found: list[dict]) -> None:
    """Every group's sparse row is on a board that also measured its dense row."""
    dense = {(r["model"], r["batch"], r["device"]) for r in found if r["method"] == "dense"}
    for r in found:
        assert (r["model"], r["batch"], r["device"]) in dense, r["variant_key"]


@pytest.mark.slow
def test_three_boards_share_the_groups(sshd, own_sshd, profile, small_model, tmp_path, capsys):
    boards = [ssh_board("ssh-a", sshd, profile, tmp_path / "a"), ssh_board("ssh-b", own_sshd, profile, tmp_path / "b"),
              Board(name="here", profile=str(profile), url="local")]
    code, run_id, err = farm_run(config(tmp_path, small_model), boards, capsys)
    assert code == 0, err
    found = rows(tmp_path / "r.db", run_id)
    assert len(found) == 8 and all(r["verdict"] != "ERROR" for r in found), [r["error"] for r in found]
    assert {r["target"] for r in found} == {"quick"}
    per_board = {}
    for r in found:
        per_board.setdefault(r["device"], []).append(r)
    assert set(per_board) <= {sshd.label, own_sshd.label, "localhost"} and len(per_board) >= 2, set(per_board)
    assert_groups_whole(found)
    assert run_row(tmp_path / "r.db", run_id)["target"] == "farm:t"
    said = notes(tmp_path / "r.db", run_id)
    assert any(n.startswith("farm t: 3 board(s): ssh-a (quick,") for n in said), said
    assert "warning: boards ssh-a, ssh-b, here are one machine" in err, err  # loopback boards share this machine
    names = {r["device"]: json.loads(r["device_meta_json"] or "{}").get("board") for r in found}
    expected = {sshd.label: "ssh-a", own_sshd.label: "ssh-b", "localhost": "here"}
    assert all(names[d] == expected[d] for d in names), names  # each row names its board from the farm file
    for name in ("ssh-a", "ssh-b", "here"):
        assert any(n.startswith(f"board {name} (") and " row(s), busy " in n for n in said), said
    assert any(n.startswith("kernel selection for profile quick done on board ssh-a, reused by its 3") for n in said)


@pytest.mark.slow
def test_a_board_lost_mid_run_is_quarantined_its_group_measured_elsewhere(own_sshd, profile, small_model, tmp_path,
                                                                          capsys):
    root = tmp_path / "b"
    boards = [ssh_board("doomed", own_sshd, profile, root), Board(name="here", profile=str(profile), url="local")]
    thread = after(lambda pid: kill_sshd(own_sshd), root, settle=0.5)
    try:
        code, run_id, err = farm_run(config(tmp_path, small_model, batches=(1, 2, 3), min_s=1.5), boards, capsys,
                                     kernels="tvm-default")
        thread.join()
    finally:
        restart_sshd(own_sshd)
    assert "error" not in thread.box, thread.box
    assert code == 0, err
    found = rows(tmp_path / "r.db", run_id)
    assert len(found) == 6 and all(r["verdict"] != "ERROR" for r in found)
    assert {r["device"] for r in found} == {"localhost"}  # the doomed board's group too
    assert_groups_whole(found)
    said = notes(tmp_path / "r.db", run_id)
    assert any(n.startswith("board doomed quarantined for the run: 3 faults in a row") for n in said), said
    assert any("requeued after board doomed failed" in n for n in said), said
    assert "board doomed quarantined" in err


@pytest.mark.slow
def test_a_farm_of_one_lost_board_stops_then_resume_finishes(own_sshd, profile, small_model, tmp_path, capsys):
    root = tmp_path / "b"
    boards = [ssh_board("only", own_sshd, profile, root)]
    cfg = config(tmp_path, small_model, batches=(1, 2), min_s=1.5)
    thread = after(lambda pid: kill_sshd(own_sshd), root, settle=0.5)
    try:
        code, run_id, err = farm_process(cfg, boards)
        thread.join()
    finally:
        restart_sshd(own_sshd)
    assert code == 4 and "Traceback" not in err, err
    assert f"the same command with --resume {run_id} measures the rest" in err and "not measured" in err
    before = rows(tmp_path / "r.db", run_id)
    assert len(before) < 4
    code, again, err = farm_process(cfg, boards, resume=run_id)
    assert code == 0 and again == run_id, err
    found = rows(tmp_path / "r.db", run_id)
    assert len(found) == 4 and all(r["verdict"] != "ERROR" for r in found)


@pytest.mark.slow
def test_ctrl_c_stops_every_boards_runner_and_gives_the_leases_back(sshd, own_sshd, profile, small_model, tmp_path):
    """SIGINT while two boards measure: exit 4 with one line, every board's runner stopped, its job directory and
    the board's lease gone; --resume then measures everything."""
    import signal
    import subprocess
    import time

    from test_ssh_faults import alive, group_members, runner_pids

    roots = [tmp_path / "a", tmp_path / "b"]
    farm = tmp_path / "farm.toml"
    text = ['[farm]\nname = "ctrlc"\n']
    for name, server, root in (("ssh-a", sshd, roots[0]), ("ssh-b", own_sshd, roots[1])):
        text.append(f'[[board]]\nname = "{name}"\nprofile = "{profile}"\nurl = "{server.url}"\n'
                    f'python = "{sys.executable}"\nidentity = ["{server.user_key}"]\n'
                    f'known_hosts = "{server.known_hosts}"\nremote_root = "{root}"\n')
    farm.write_text("\n".join(text))
    cfg = config(tmp_path, small_model, min_s=2.0)
    cli = [sys.executable, "-m", "harness.cli", "run", str(cfg), "--farm", str(farm), "--no-progress"]

    def default_signals():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)

    proc = subprocess.Popen(cli, cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    deadline, pids = time.monotonic() + 240, []
    while time.monotonic() < deadline and proc.poll() is None:
        pids = [p for root in roots for p in runner_pids(root)]
        if len(pids) == 2:  # both boards measure
            break
        time.sleep(0.1)
    assert len(pids) == 2, proc.stderr.read() if proc.poll() is not None else "no runner started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 4 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("sparsebench: ")]
    assert len(lines) == 1 and "stopped: interrupted (SIGINT)" in lines[0], err
    run_id = lines[0].rsplit("--resume ", 1)[1].split()[0]
    give = time.monotonic() + 6
    while time.monotonic() < give and any(alive(p) or group_members(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if alive(p) or group_members(p)], "a board's runner still runs"
    for root in roots:
        assert not (root / "board.lease").exists(), "a board's lease was left behind"
        assert [p for p in root.glob("*/*") if p.is_dir()] == [], "job directories left on a board"

    res = subprocess.run(cli + ["--resume", run_id], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    found = rows(tmp_path / "r.db", run_id)
    assert len(found) == 8 and all(r["verdict"] != "ERROR" for r in found)
    assert_groups_whole(found)
