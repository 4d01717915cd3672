"""Exit codes that tell the truth, through the real CLI: 0 only when every planned row was measured without ERROR, 3
when the run finished with ERROR rows, 4 when it stopped early (SIGTERM, SIGINT, SIGHUP; also while models are
prepared) with one line naming the run and how to resume it; the resumed run keeps the rows from before."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT, write_config
from harness.errors import EXIT_OK, EXIT_ROWS_ERROR, EXIT_STOPPED


def _default_signals():
    # the test's own process may ignore SIGINT/SIGHUP (a background job, nohup); the CLI must see them as a user's
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ), preexec_fn=_default_signals)


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ), preexec_fn=_default_signals)


def rows(db) -> dict[str, tuple]:
    conn = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT variant_key, id, measured_at, verdict FROM results")}
    finally:
        conn.close()


def wait_for_rows(proc: subprocess.Popen, db, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                if len(rows(db)) >= n:
                    return
            except sqlite3.OperationalError:  # the schema is being created
                pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {n} rows before the run ended or {timeout} s passed: {proc.communicate()[1][-2000:]}")


def stop_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [l for l in stderr.splitlines() if l.startswith("sparsebench: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_error_rows_exit_3(tmp_path, small_model):
    """Every row ERROR (the device run times out): the run finishes, exit 3, and says which run and how to retry."""
    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.5),
                       methods=("unstructured",), extra="timeout_s = 0.01")
    proc = run("run", str(cfg), "--no-progress")
    assert proc.returncode == EXIT_ROWS_ERROR, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    stored = rows(db)
    assert len(stored) == 2 and all(v[2] == "ERROR" for v in stored.values()), stored
    run_id = sqlite3.connect(db).execute("SELECT run_id FROM runs").fetchone()[0]
    assert f"run {run_id}: 2 row(s) are ERROR" in proc.stderr and f"--resume {run_id}" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_mid_run_exits_4_and_resumes(sig, tmp_path, small_model):
    """A signal after the first rows are stored: exit 4, one line naming the run and --resume; the resumed run
    measures only the rest, keeps the rows from before and exits 0."""
    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.5, 0.9),
                       methods=("unstructured",), batch=(1, 2), min_s=0.3)
    proc = start("run", str(cfg), "--no-progress")
    wait_for_rows(proc, db, 1)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, (proc.returncode, stderr)
    line = stop_line(stderr)
    before = rows(db)
    assert 1 <= len(before) < 6, before
    run_id = sqlite3.connect(db).execute("SELECT run_id FROM runs").fetchone()[0]
    assert line.startswith(f"sparsebench: run {run_id} stopped: interrupted ({sig.name})"), line
    assert f"--resume {run_id}" in line and str(db) in line, line

    resumed = run("run", str(cfg), "--resume", run_id, "--no-progress")
    assert resumed.returncode == EXIT_OK, resumed.stderr
    after = rows(db)
    assert len(after) == 6 and all(v[2] != "ERROR" for v in after.values()), after
    assert {k: after[k] for k in before} == before  # nothing measured twice, nothing lost
    assert f"kept {len(before)} from before" in resumed.stderr


def test_interrupt_while_preparing_is_no_traceback(tmp_path, small_model):
    """SIGINT while the models are loaded (before the run exists), and SIGINT right after the run started (kernel
    selection and compiling, inside the benchmark loop): exit 4, one line, no traceback."""
    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.3),
                       methods=("block:4x1",), batch=(3,))  # a batch of its own: nothing compiled before
    proc = start("run", str(cfg), "--no-progress")
    deadline = time.time() + 120
    while not db.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the store is opened first, then the models are loaded
    time.sleep(0.3)  # past the store's schema creation, into loading the models
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, (proc.returncode, stderr)
    assert "stopped" in stop_line(stderr) and "interrupted (SIGINT)" in stderr

    proc = start("run", str(cfg), "--no-progress", "--db", str(tmp_path / "r2.db"))
    first = proc.stderr.readline()  # "run RUN_ID: N variant x batch jobs ...": the loop starts now
    assert first.startswith("run "), first + proc.communicate()[1]
    run_id = first.split()[1].rstrip(":")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, (proc.returncode, stderr)
    line = stop_line(stderr)
    assert line.startswith(f"sparsebench: run {run_id} stopped: interrupted (SIGINT)"), line
