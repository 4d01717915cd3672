"""The results store under concurrency and I/O errors: real SQLite files, real processes, real full and read-only
file systems (a small tmpfs, where this machine lets us mount one).

Each case asserts the one-line message (a HarnessError naming the file and the fix) and that every row committed
before is still there."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.records import ResultRow
from harness.store import SCHEMA_VERSION, ResultStore

ROOT = Path(__file__).resolve().parent.parent


def _row(key: str, run_id: str = "r1") -> ResultRow:
    return ResultRow(run_id=run_id, variant_key=key, device="localhost", model="m", method="dense",
                     sparsity_target=0.0, block="", batch=1, target="local", target_json={"kind": "llvm"},
                     transport="local", verdict="VALID")


def _new_run(store: ResultStore, run_id: str = "r1") -> None:
    store.create_run(run_id, name="n", config_toml="", config_hash="h", target="local", target_json={}, host={},
                     harness_version="0")


def _keys(path: Path, run_id: str = "r1") -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT variant_key FROM results WHERE run_id=? ORDER BY id", (run_id,))]
    finally:
        conn.close()


# concurrent creators ---------------------------------------------------------------------------------------------

def _open_at_once(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        ResultStore(path).close()
        results.put("ok")
    except Exception as err:  # noqa: BLE001 - the test reports whatever went wrong
        results.put(f"{type(err).__name__}: {err}")


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    """Many processes open the same *new* database at the same moment, many times: every one succeeds, and the
    database is complete (schema version, WAL). Before, one could fail with "not a SQLite database ... move it
    away" about a valid file (the schema was created statement by statement, outside one transaction, so a second
    creator's INSERT of the schema version failed -- an IntegrityError, reported as a file that is no database)."""
    ctx = multiprocessing.get_context("fork")
    n, rounds = 6, 25
    failures = []
    for i in range(rounds):
        path = str(tmp_path / f"r{i}.db")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, results)) for _ in range(n)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join()
        failures += [r for r in outcomes if r != "ok"]
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchall() == [(str(SCHEMA_VERSION),)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    assert failures == []


def test_a_writer_waits_for_another_process_lock_instead_of_failing(tmp_path):
    """Busy timeout: a row stored while another process holds the write lock for a moment waits and lands; a
    reader is not blocked by that writer (WAL)."""
    db = tmp_path / "r.db"
    store = ResultStore(db)
    _new_run(store)
    store.add_result(_row("a"))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys, time
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")  # without WAL this would lock readers out too
        print("locked", flush=True)
        time.sleep(1.5)
        conn.execute("COMMIT")
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    start = time.monotonic()
    assert [r.variant_key for r in store.results("r1")] == ["a"]  # reading while the other holds the lock
    assert time.monotonic() - start < 0.5
    start = time.monotonic()
    store.add_result(_row("b"))
    assert time.monotonic() - start > 0.5  # it waited for the lock
    assert holder.wait(timeout=30) == 0
    assert _keys(db) == ["a", "b"]
    store.close()


def test_schema_5_store_is_migrated_to_leases(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    _new_run(store)
    store.add_result(_row("a"))
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE leases")
    for column in ("accelerator", "accuracy_oneshot", "finetune_s", "recovery_json"):  # what schemas 7 and 8 added
        conn.execute(f"ALTER TABLE results DROP COLUMN {column}")
    conn.execute("UPDATE meta SET value='5'")
    conn.commit()
    conn.close()
    store = ResultStore(db)
    store.acquire_lease("r1")
    assert store.conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION) == "8"
    assert [r.variant_key for r in store.results("r1")] == ["a"]
    store.close()


# the run lease ---------------------------------------------------------------------------------------------------

_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from harness.store import ResultStore
store = ResultStore({db!r})
store.acquire_lease("r1")
print("held", flush=True)
sys.stdin.readline()  # until the test closes stdin{after}
"""


def _holder(db: Path, after: str = "") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=str(ROOT), db=str(db), after=after)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_lease_is_refused_a_dead_one_taken_over(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    _new_run(store)
    holder = _holder(db)
    with pytest.raises(HarnessError) as err:
        store.acquire_lease("r1")
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"run r1 is being measured by pid {holder.pid} on host ") and " since " in line
    assert "wait for it" in line
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the lease stays in the table, its process is gone
    holder.wait()
    store.acquire_lease("r1")  # taken over
    row = store.conn.execute("SELECT pid FROM leases WHERE run_id='r1'").fetchone()
    assert row[0] == os.getpid()
    store.add_result(_row("a"))  # refreshes the heartbeat of the lease it holds
    store.close()
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0  # released at close


def test_a_lease_is_released_at_exit_without_close(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    _new_run(store)
    holder = _holder(db, after="\nprint('bye')")  # the process ends normally, never calling close()
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    assert store.conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
    store.acquire_lease("r1")
    store.close()


def test_an_expired_lease_of_another_host_is_taken_over_a_fresh_one_is_not(tmp_path):
    from harness.store.sqlite import LEASE_TTL_S

    db = tmp_path / "r.db"
    store = ResultStore(db)
    _new_run(store)
    now = time.time()
    with store.conn:
        store.conn.execute("INSERT INTO leases VALUES ('r1', 'elsewhere', 4242, '', 'x', ?, ?)", (now - 60, now - 5))
    with pytest.raises(HarnessError, match="run r1 is being measured by pid 4242 on host elsewhere"):
        store.acquire_lease("r1")
    with store.conn:
        store.conn.execute("UPDATE leases SET heartbeat=?", (now - LEASE_TTL_S - 1,))
    store.acquire_lease("r1")
    store.close()


def test_a_process_whose_lease_was_taken_over_stops_and_keeps_its_row(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    _new_run(store)
    store.acquire_lease("r1")
    with store.conn:  # another process took the run over (this one sent no heartbeat for too long)
        store.conn.execute("UPDATE leases SET host='elsewhere', pid=4242, token='theirs'")
    with pytest.raises(HarnessError, match="run r1 was taken over by pid 4242 on host elsewhere"):
        store.add_result(_row("a"))
    assert _keys(db) == ["a"]
    store.close()
    assert sqlite3.connect(db).execute("SELECT token FROM leases").fetchone()[0] == "theirs"  # theirs stays


# I/O errors ------------------------------------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """A 256 KiB tmpfs (a disk that can be filled, or mounted read-only); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as err:
        assert err.errno == 28
    finally:
        os.close(fd)
    return filler


def test_full_disk_is_one_line_and_keeps_every_committed_row(tmpfs):
    db = tmpfs / "r.db"
    store = ResultStore(db)
    _new_run(store)
    store.add_result(_row("a"), samples_ns=[1, 2, 3], outputs=np.ones(10, np.float32))
    filler = _fill(tmpfs)
    with pytest.raises(HarnessError) as err:
        store.add_result(_row("b"), samples_ns=list(range(5000)), outputs=np.zeros(50_000, np.float32))
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"results store {db}: cannot store the row b (")
    assert "free space on the disk holding" in line and "--resume r1" in line
    assert [r.variant_key for r in store.results("r1")] == ["a"] and _keys(db) == ["a"]
    filler.unlink()
    store.add_result(_row("b"))  # space again: the run goes on
    store.close()
    assert _keys(db) == ["a", "b"]


def test_read_only_media_opens_for_reading_and_a_write_says_what_to_fix(tmpfs):
    db = tmpfs / "r.db"
    store = ResultStore(db)
    _new_run(store)
    store.add_result(_row("a"))
    store.close()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    store = ResultStore(db)  # reports still work
    assert [r.variant_key for r in store.results("r1")] == ["a"]
    writes = (lambda: store.add_result(_row("b")), lambda: store.acquire_lease("r1"), lambda: _new_run(store, "r2"))
    for write in writes:
        with pytest.raises(HarnessError) as err:
            write()
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"results store {db}: cannot ")
        assert "readonly" in line and "writable" in line
    store.close()
    with pytest.raises(HarnessError) as err:
        ResultStore(tmpfs / "new.db")  # a new store in a read-only folder
    assert f"make the folder {tmpfs} writable" in str(err.value)


def _chattr(flag: str, *paths: Path) -> None:
    proc = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"chattr {flag} not possible here: {proc.stderr.strip()}")


def test_folder_made_unwritable_mid_run_loses_nothing(tmp_path):
    """The folder turns unwritable (immutable) while the run goes on: rows still land (WAL needs no new file per
    transaction); before, every row needed a new journal file and failed with a traceback."""
    folder = tmp_path / "db"
    db = folder / "r.db"
    store = ResultStore(db)
    _new_run(store)
    store.add_result(_row("a"))
    _chattr("+i", folder)
    try:
        store.add_result(_row("b"))
        store.close()
        assert _keys(db) == ["a", "b"]
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def test_database_file_made_unwritable_mid_run_is_one_line(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    _new_run(store)
    store.add_result(_row("a"))
    files = [p for p in (db, Path(f"{db}-wal")) if p.exists()]  # not -shm: it is mapped, SIGBUS if immutable
    _chattr("+i", *files)
    try:
        with pytest.raises(HarnessError) as err:
            store.add_result(_row("b"))
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"results store {db}: cannot store the row b (")
        assert "--resume r1" in line
        assert [r.variant_key for r in store.results("r1")] == ["a"]
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False)
    store.close()
    assert _keys(db) == ["a"]


# two resumes of one run, through the command line ----------------------------------------------------------------

@pytest.mark.slow
def test_second_resume_of_a_running_run_is_refused_then_a_killed_run_is_taken_over(tmp_path, small_model):
    """A run in progress holds its lease: a `--resume` of it from another process is refused with one line (before,
    both measured every missing row). Killed with SIGKILL (no cleanup runs), its lease is taken over by the next
    `--resume`, which measures only what is missing."""
    from conftest import sparsebench, write_config

    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.9),
                       methods=("unstructured",), batch=(1, 2), min_s=1.0)
    first = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(cfg), "--no-progress"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        run_id = None
        deadline = time.time() + 300
        while run_id is None and time.time() < deadline and first.poll() is None:
            try:
                conn = sqlite3.connect(db)
                row = conn.execute("SELECT run_id, pid FROM leases").fetchone()
                conn.close()
            except sqlite3.OperationalError:
                row = None
            if row:
                assert row[1] == first.pid
                run_id = row[0]
            time.sleep(0.05)
        assert run_id, first.communicate()
        second = sparsebench("run", str(cfg), "--resume", run_id, "--no-progress")
        assert first.poll() is None, "the first run ended before the second resume was refused: make it longer"
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr  # refused: nothing run
        lines = [l for l in second.stderr.splitlines() if l.startswith("sparsebench: error:")]
        assert len(lines) == 1, second.stderr
        assert f"run {run_id} is being measured by pid {first.pid} on host " in lines[0]
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and not _keys(db, run_id):
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = _keys(db, run_id)
    assert 0 < len(before) < 4, before
    resumed = sparsebench("run", str(cfg), "--resume", run_id, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"kept {len(before)} from before" in resumed.stderr
    after = _keys(db, run_id)
    assert len(after) == 4 and after[:len(before)] == before
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0  # released at the end


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_zombie_or_reused_pid_does_not_keep_a_lease(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    _new_run(store)
    holder = _holder(db)
    holder.send_signal(signal.SIGKILL)
    while not open(f"/proc/{holder.pid}/stat").read().split(")")[1].split()[0] == "Z":  # dead, not yet reaped
        time.sleep(0.01)
    store.acquire_lease("r1")  # a zombie measures nothing
    holder.wait()
    with store.conn:  # this very process, but started at another time: the pid was reused
        store.conn.execute("UPDATE leases SET token='old', pid_start='1'")
    store.acquire_lease("r1")
    store.close()


@pytest.mark.slow
def test_cli_run_whose_database_becomes_unwritable_stops_with_exit_4(tmp_path, small_model):
    """Through the command line: the database file made immutable after the first row is stored. The run stops
    with one line naming the file (exit 4, EXIT_STOPPED), no traceback, and the committed row is intact."""
    from conftest import write_config

    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.5, 0.9),
                       methods=("unstructured",), batch=(1, 2), min_s=0.5)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(cfg), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    files = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                conn = sqlite3.connect(db)
                stored = conn.execute("SELECT run_id, variant_key FROM results").fetchall()
                conn.close()
            except sqlite3.OperationalError:
                stored = []
            if stored:
                break
            time.sleep(0.05)
        assert stored and proc.poll() is None, proc.communicate()
        files = [p for p in (db, Path(f"{db}-wal")) if p.exists()]  # not -shm: it is mapped
        _chattr("+i", *files)
        _, err = proc.communicate(timeout=300)
    finally:
        if files:
            subprocess.run(["chattr", "-i", *map(str, files)], check=False)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 4 and "Traceback" not in err, err
    lines = [l for l in err.splitlines() if "cannot store the row" in l]
    assert len(lines) == 1 and str(db) in lines[0] and "--resume" in lines[0], err
    run_id = stored[0][0]
    assert set(_keys(db, run_id)) >= {key for _, key in stored}  # what was committed before stays
