"""SQLite results store.

One row per (run, variant@batch, device) in ``results`` with every figure and its environment, the raw
per-iteration latencies in ``samples``, and the evaluation outputs (``.npy`` bytes) in ``outputs`` so a resumed
run can still compare sparse variants against a dense variant measured before the interruption. The ``results``
columns are :class:`harness.records.ResultRow`'s fields; rows go in and come out as ``ResultRow``.

Each result is committed on its own: an interrupted run keeps everything it finished. The database is in WAL mode
with a busy timeout, so several processes can use it at once; a run is measured by one process at a time (its
*lease*, see :meth:`ResultStore.acquire_lease`). A write that fails (read-only file or directory, full disk) is a
:class:`HarnessError` naming the file and the fix; the rows committed before it stay.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from ..records import ResultRow

SCHEMA_VERSION = 8

#: seconds a connection waits for another process's write lock before giving up
BUSY_TIMEOUT_S = 60.0
#: a run's lease is refreshed this often (seconds) by the process measuring it, and with every row it stores
LEASE_HEARTBEAT_S = 30.0
#: a lease whose heartbeat is older than this (seconds) is taken over (its process is gone or stuck)
LEASE_TTL_S = 600.0

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    config_toml TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    target TEXT NOT NULL,
    target_json TEXT NOT NULL,
    host_json TEXT NOT NULL,          -- where the harness ran (not the device: see results.device_meta_json)
    harness_version TEXT NOT NULL
);
{results}
CREATE TABLE IF NOT EXISTS samples (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    iter INTEGER NOT NULL,
    latency_ns INTEGER NOT NULL,
    PRIMARY KEY (result_id, iter)
);
CREATE TABLE IF NOT EXISTS outputs (
    result_id INTEGER PRIMARY KEY REFERENCES results(id) ON DELETE CASCADE,
    npy BLOB NOT NULL
);
{notes}
{leases}
"""

#: what a run could not do without it being a row's error (a peer runtime the device lacks); the report shows them
_NOTES = """CREATE TABLE IF NOT EXISTS notes (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    note TEXT NOT NULL,
    PRIMARY KEY (run_id, note)
);"""


def results_ddl() -> str:
    """``CREATE TABLE results``: one column per :class:`ResultRow` field (see :meth:`ResultRow.columns`)."""
    lines = ["id INTEGER PRIMARY KEY"]
    for col in ResultRow.columns():
        ref = " REFERENCES runs(run_id)" if col.name == "run_id" else ""
        lines.append(f"{col.name} {col.sql_type}{' NOT NULL' if col.not_null else ''}{ref}")
    lines.append("UNIQUE (run_id, variant_key, device)")
    return "CREATE TABLE IF NOT EXISTS results (\n    " + ",\n    ".join(lines) + "\n);"


#: who is measuring a run now: host, pid (and that process's start time, against pid reuse), refreshed heartbeat
_LEASES = """CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start TEXT NOT NULL,          -- the process's start time (/proc/PID/stat), '' where unknown
    token TEXT NOT NULL,              -- unique per holder: only the holder refreshes or releases it
    started REAL NOT NULL,            -- unix time the lease was taken
    heartbeat REAL NOT NULL           -- unix time it was last refreshed
);"""

_SCHEMA = _TABLES.format(results=results_ddl(), notes=_NOTES, leases=_LEASES)


def _statements(script: str) -> list[str]:
    """``script`` cut into single statements (``executescript`` would commit the open transaction)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return [s for s in out if s]

def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """2: the toolchain that built the artifact; layers_json records gain "weight" (old ones keep what they had);
    N:M variant keys spelled like everything else (``model/nm-2of4/0.5`` -> ``model/nm-2:4/0.5``)."""
    conn.execute("ALTER TABLE results ADD COLUMN toolchain TEXT")
    for rowid, key in conn.execute("SELECT id, variant_key FROM results WHERE variant_key LIKE '%/nm-%'").fetchall():
        conn.execute("UPDATE results SET variant_key=? WHERE id=?",
                     (re.sub(r"/nm-(\d+)of(\d+)/", r"/nm-\1:\2/", key), rowid))


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    """3: run notes (a peer runtime unavailable on the device)."""
    conn.execute(_NOTES)


#: schema version -> a function that upgrades a store from that version to the next, inside one transaction.
#: A test checks that a migrated store has exactly the columns of a new one.
def _v3_to_v4(conn: sqlite3.Connection) -> None:
    """4: 95 % confidence intervals of p50/p90/p99, the timing rounds' medians and spread, and the model time by
    TVM's C++ timer (older rows: NULL, shown as unavailable)."""
    for q in ("p50", "p90", "p99"):
        for end in ("low", "high"):
            conn.execute(f"ALTER TABLE results ADD COLUMN latency_{q}_ci_{end}_ms REAL")
    conn.execute("ALTER TABLE results ADD COLUMN round_p50_ms_json TEXT")
    conn.execute("ALTER TABLE results ADD COLUMN round_spread REAL")
    conn.execute("ALTER TABLE results ADD COLUMN clock_range_khz_json TEXT")
    for column, kind in (("model_time_p50_ms", "REAL"), ("model_time_ci_low_ms", "REAL"),
                         ("model_time_ci_high_ms", "REAL"), ("model_time_repeats", "INTEGER")):
        conn.execute(f"ALTER TABLE results ADD COLUMN {column} {kind}")


def _v4_to_v5(conn: sqlite3.Connection) -> None:
    """5: the timing rounds left out of a row's statistics as disturbed (older rows: NULL, every round counted)."""
    conn.execute("ALTER TABLE results ADD COLUMN rounds_disturbed_json TEXT")


def _v5_to_v6(conn: sqlite3.Connection) -> None:
    """6: run leases (one process measures a run at a time)."""
    conn.execute(_LEASES)


def _v6_to_v7(conn: sqlite3.Connection) -> None:
    """7: the accelerator that ran the model (``cpu``/``cuda``; older rows: NULL, they ran on the CPU)."""
    conn.execute("ALTER TABLE results ADD COLUMN accelerator TEXT")


def _v7_to_v8(conn: sqlite3.Connection) -> None:
    """8: recovery by fine-tuning: the one-shot accuracy of a fine-tuned variant, its training seconds and how it
    was recovered (older rows: NULL, one-shot variants)."""
    conn.execute("ALTER TABLE results ADD COLUMN accuracy_oneshot REAL")
    conn.execute("ALTER TABLE results ADD COLUMN finetune_s REAL")
    conn.execute("ALTER TABLE results ADD COLUMN recovery_json TEXT")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4,
                                                               4: _v4_to_v5, 5: _v5_to_v6, 6: _v6_to_v7,
                                                               7: _v7_to_v8}


def new_run_id() -> str:
    """Sortable, unique enough: ``YYYYmmdd-HHMMSS-xxxx``."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


#: SQLite primary result codes (``err.sqlite_errorcode & 0xff``) that say what went wrong with the file
_BUSY, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 8, 10, 11, 13, 14, 26


def _code(err: BaseException) -> int | None:
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _proc_stat(pid: int) -> tuple[str, str]:
    """(state, start time) of process ``pid`` from ``/proc/PID/stat`` (fields 3 and 22; the start in clock ticks
    since boot), ('', '') where unknown: a pid reused by another process does not keep a dead run's lease, nor does
    a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        fields = stat[stat.rindex(")") + 2:].split()
        return fields[0], fields[19]
    except (OSError, ValueError, IndexError):
        return "", ""


def _pid_start(pid: int) -> str:
    return _proc_stat(pid)[1]


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


class ResultStore:
    """Open (creating or migrating) a results database."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._leases: dict[str, str] = {}  # run_id -> token of the leases this store holds
        self._stop_heartbeat: threading.Event | None = None
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise HarnessError(f"cannot create the folder of results store {self.path} ({err.strerror}); "
                               "choose a writable path with --db") from None
        try:
            self.conn = self._connect()
            self._init_schema()
            self._wal()
        except sqlite3.DatabaseError as err:
            if not self._open_immutable(err):
                if getattr(self, "conn", None) is not None:
                    self.conn.close()
                raise self._error(err, "open it") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _wal(self) -> None:
        """Switch to WAL (kept in the file): readers never wait for the writer. SQLite answers "busy" at once, not
        after the busy timeout, while another connection switches too: retry for as long as the timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode = WAL").fetchall()
                return
            except sqlite3.OperationalError as err:
                if _code(err) in (_READONLY, _CANTOPEN):
                    return  # a read-only file or folder: reads still work; a write says what to fix (_error)
                if _code(err) != _BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _open_immutable(self, err: sqlite3.DatabaseError) -> bool:
        """A store on read-only media that SQLite cannot open normally (a WAL database needs its ``-shm`` file next
        to it): open it as immutable, for reading. False when that does not help either."""
        if _code(err) not in (_READONLY, _CANTOPEN) or not self.path.is_file() or not self.path.stat().st_size:
            return False
        try:
            from urllib.parse import quote

            conn = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro&immutable=1", uri=True)
            conn.row_factory = sqlite3.Row
            if self._version(conn) != SCHEMA_VERSION:
                conn.close()
                return False
        except sqlite3.DatabaseError:
            return False
        if getattr(self, "conn", None) is not None:
            self.conn.close()
        self.conn = conn
        return True

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int | None:
        """The schema version, None for a database without one (new, or being created by another process)."""
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchall():
            return None
        rows = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchall()  # all: no open read
        return int(rows[0][0]) if rows else None

    def _init_schema(self) -> None:
        """Create or migrate the schema in one transaction under the write lock, checked again once the lock is
        held: of several processes opening a new database at once, one creates it and the others find it made."""
        version = self._version(self.conn)
        if version is not None and version > SCHEMA_VERSION:
            self._newer(version)
        if version == SCHEMA_VERSION:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._version(self.conn)
            if version is None:
                for statement in _statements(_SCHEMA):
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif version > SCHEMA_VERSION:
                self._newer(version)
            while version is not None and version < SCHEMA_VERSION:
                MIGRATIONS[version](self.conn)
                version += 1
                self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise

    def _newer(self, version: int) -> None:
        raise HarnessError(
            f"results store {self.path} has schema version {version}, newer than this sparsebench "
            f"({SCHEMA_VERSION}); upgrade sparsebench or use another --db"
        )

    def _error(self, err: BaseException, doing: str, run_id: str | None = None) -> HarnessError:
        """One line for a failed open or write: the file, what failed, SQLite's words and the fix."""
        code, folder = _code(err), self.path.parent
        text = str(err)
        if code == _NOTADB or code == _CORRUPT:
            return HarnessError(f"results store {self.path} is not a SQLite database ({text}); move it away or use "
                                "--db")
        if code == _FULL or getattr(err, "errno", None) == 28:
            fix = f"free space on the disk holding {folder}"
        elif code == _READONLY:
            fix = f"make {self.path} and its folder writable (or mount it read-write), or use another --db"
        elif code == _CANTOPEN:
            fix = (f"make the folder {folder} writable (SQLite keeps {self.path.name}-wal and -shm next to the "
                   "database), or use another --db")
        elif code == _BUSY:
            fix = f"another process held it locked for {BUSY_TIMEOUT_S:.0f} s; wait for it or use another --db"
        elif code == _IOERR:
            fix = f"check the disk holding {folder} (full, read-only or failing), or use another --db"
        else:
            fix = "choose a writable path with --db"
        kept = f"; the rows stored before are kept: continue with --resume {run_id}" if run_id else ""
        name = getattr(err, "sqlite_errorname", "")
        why = f"{text}, {name}" if name else text
        return HarnessError(f"results store {self.path}: cannot {doing} ({why}); {fix}{kept}")

    @contextmanager
    def _writing(self, doing: str, run_id: str | None = None):
        """One transaction; a failed write (read-only, full disk, unwritable folder, locked) rolls back and becomes a
        :class:`HarnessError` naming the file and the fix. Rows committed before stay."""
        try:
            with self.conn:
                yield
        except sqlite3.IntegrityError:
            raise  # a bug, not the disk
        except sqlite3.DatabaseError as err:
            try:
                self.conn.rollback()
            except sqlite3.Error:
                pass
            raise self._error(err, doing, run_id) from None

    # leases -------------------------------------------------------------------------------------------------------

    def acquire_lease(self, run_id: str) -> None:
        """Take the lease of ``run_id`` for this process, or refuse with one line when another live process holds
        it (a second ``--resume`` of a run being measured). A lease of a process gone from this host, or one whose
        heartbeat is older than :data:`LEASE_TTL_S`, is taken over. Refreshed every :data:`LEASE_HEARTBEAT_S` and
        with every stored row; released by :meth:`release_lease`, :meth:`close`, or at exit."""
        host, pid, now = socket.gethostname(), os.getpid(), time.time()
        token = self._leases.get(run_id) or secrets.token_hex(8)
        with self._writing(f"take the lease of run {run_id}", run_id):
            self.conn.execute("BEGIN IMMEDIATE")
            row = self.conn.execute("SELECT * FROM leases WHERE run_id=?", (run_id,)).fetchone()
            if row is not None and row["token"] != token and self._holder_alive(row, now):
                raise HarnessError(
                    f"run {run_id} is being measured by pid {row['pid']} on host {row['host']} since "
                    f"{_stamp(row['started'])} (last heartbeat {now - row['heartbeat']:.0f} s ago); wait for it to "
                    f"finish or stop that process, then resume again (a lease without a heartbeat for "
                    f"{LEASE_TTL_S:.0f} s is taken over)")
            self.conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (run_id, host, pid, _pid_start(pid), token, now, now))
        if not self._leases:
            atexit.register(self._release_all)
        self._leases[run_id] = token
        self._start_heartbeat()

    @staticmethod
    def _holder_alive(row: sqlite3.Row, now: float) -> bool:
        if now - row["heartbeat"] > LEASE_TTL_S:
            return False  # expired: its process is gone or stuck
        if row["host"] != socket.gethostname():
            return True  # cannot look: trust the heartbeat
        try:
            os.kill(row["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, someone else's
        state, start = _proc_stat(row["pid"])
        return state != "Z" and (not row["pid_start"] or start in ("", row["pid_start"]))

    def release_lease(self, run_id: str) -> None:
        """Give up the lease of ``run_id`` (best effort: a lease left behind by a failed write is taken over as
        soon as this process is gone)."""
        token = self._leases.pop(run_id, None)
        if token is None:
            return
        if not self._leases and self._stop_heartbeat is not None:
            self._stop_heartbeat.set()
            self._stop_heartbeat = None
        try:
            with self.conn:
                self.conn.execute("DELETE FROM leases WHERE run_id=? AND token=?", (run_id, token))
        except sqlite3.Error:
            pass

    def _release_all(self) -> None:
        if not self._closed:
            for run_id in list(self._leases):
                self.release_lease(run_id)

    def _start_heartbeat(self) -> None:
        if self._stop_heartbeat is not None:
            return
        stop = self._stop_heartbeat = threading.Event()
        leases, path = self._leases, str(self.path)

        def beat() -> None:
            try:
                conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
            except sqlite3.Error:
                return
            try:
                while not stop.wait(LEASE_HEARTBEAT_S):
                    try:
                        with conn:
                            for run_id, token in list(leases.items()):
                                conn.execute("UPDATE leases SET heartbeat=? WHERE run_id=? AND token=?",
                                             (time.time(), run_id, token))
                    except sqlite3.Error:
                        pass  # the main thread's next write reports what is wrong with the store
            finally:
                conn.close()

        threading.Thread(target=beat, name=f"lease-heartbeat {self.path.name}", daemon=True).start()

    def close(self) -> None:
        """Release this store's leases and close the database."""
        self._release_all()
        self._closed = True
        self.conn.close()

    # runs ---------------------------------------------------------------------------------------------------------

    def create_run(self, run_id: str, *, name: str, config_toml: str, config_hash: str, target: str,
                   target_json: dict, host: dict, harness_version: str) -> None:
        with self._writing(f"create run {run_id}"):
            self.conn.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, time.strftime("%Y-%m-%dT%H:%M:%S%z"), config_toml, config_hash, target,
                 json.dumps(target_json), json.dumps(host), harness_version),
            )

    def get_run(self, run_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return dict(row) if row else None

    def latest_run(self) -> str | None:
        row = self.conn.execute("SELECT run_id FROM runs ORDER BY created_at DESC, run_id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def list_runs(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT r.run_id, r.name, r.created_at, r.target, COUNT(x.id) AS n_results, "
            "SUM(x.verdict='VALID') AS n_valid, SUM(x.verdict='INVALID') AS n_invalid, "
            "SUM(x.verdict='ERROR') AS n_error FROM runs r LEFT JOIN results x ON x.run_id=r.run_id "
            "GROUP BY r.run_id ORDER BY r.created_at, r.run_id"
        ).fetchall()
        return [dict(r) for r in rows]

    def resolve_run(self, run_id: str | None) -> str:
        """``run_id`` if it exists, the latest run when None; a clear error otherwise."""
        if run_id is None:
            latest = self.latest_run()
            if latest is None:
                raise HarnessError(f"results store {self.path} has no runs yet; run `sparsebench demo` first")
            return latest
        if self.get_run(run_id) is None:
            known = [r["run_id"] for r in self.list_runs()][-5:]
            raise HarnessError(f"no run {run_id!r} in {self.path}; recent runs: {', '.join(known) or 'none'}")
        return run_id

    def add_note(self, run_id: str, note: str) -> None:
        """Record one line about the run for its report (kept once, however often a resume repeats it)."""
        with self._writing(f"store a note of run {run_id}", run_id):
            self.conn.execute("INSERT OR IGNORE INTO notes VALUES (?, ?)", (run_id, note))

    def notes(self, run_id: str) -> list[str]:
        """The run's notes, in the order they were first made."""
        rows = self.conn.execute("SELECT note FROM notes WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()
        return [r[0] for r in rows]

    # results ------------------------------------------------------------------------------------------------------

    def completed(self, run_id: str) -> set[tuple[str, str]]:
        """(variant_key, device) pairs already measured (error rows are retried on resume, so not included)."""
        rows = self.conn.execute("SELECT variant_key, device FROM results WHERE run_id=? AND verdict!='ERROR'",
                                 (run_id,)).fetchall()
        return {(r[0], r[1]) for r in rows}

    def add_result(self, row: ResultRow, *, samples_ns: list[int] | None = None,
                   outputs: np.ndarray | None = None) -> int:
        """Insert (or replace an earlier error row for) one result, its samples and outputs, in one transaction
        (which also refreshes the run's lease when this store holds it). A failed write is a :class:`HarnessError`
        naming the file and the fix; the rows stored before stay. When another process took the run over (this
        one's lease expired), the row is kept and a :class:`HarnessError` stops this process."""
        record = row.to_db()
        if not record["measured_at"]:
            record["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        columns = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        token, refreshed, lost = self._leases.get(row.run_id), 1, None
        with self._writing(f"store the row {row.variant_key}", row.run_id):
            if token is not None:
                refreshed = self.conn.execute("UPDATE leases SET heartbeat=? WHERE run_id=? AND token=?",
                                              (time.time(), row.run_id, token)).rowcount
                if not refreshed:
                    lost = self.conn.execute("SELECT * FROM leases WHERE run_id=?", (row.run_id,)).fetchone()
            self.conn.execute("DELETE FROM results WHERE run_id=? AND variant_key=? AND device=?",
                              (row.run_id, row.variant_key, row.device))
            cur = self.conn.execute(f"INSERT INTO results ({columns}) VALUES ({marks})", tuple(record.values()))
            result_id = cur.lastrowid
            if samples_ns:
                self.conn.executemany("INSERT INTO samples VALUES (?, ?, ?)",
                                      ((result_id, i, int(v)) for i, v in enumerate(samples_ns)))
            if outputs is not None:
                self.conn.execute("INSERT INTO outputs VALUES (?, ?)", (result_id, _npy_bytes(outputs)))
        if not refreshed:  # the lease row is gone or another process's
            self._leases.pop(row.run_id, None)
            who = f"pid {lost['pid']} on host {lost['host']}" if lost is not None else "another process"
            raise HarnessError(f"run {row.run_id} was taken over by {who} after this process sent no heartbeat for "
                               f"{LEASE_TTL_S:.0f} s; this process stops (its rows are kept in {self.path})")
        return result_id

    def results(self, run_id: str) -> list[ResultRow]:
        """Every result row of a run, typed, in the order they were stored."""
        rows = self.conn.execute("SELECT * FROM results WHERE run_id=? ORDER BY id", (run_id,)).fetchall()
        return [ResultRow.from_db(row) for row in rows]

    def samples(self, result_id: int) -> list[int]:
        rows = self.conn.execute("SELECT latency_ns FROM samples WHERE result_id=? ORDER BY iter", (result_id,))
        return [r[0] for r in rows]

    def outputs(self, run_id: str, variant_key: str, device: str) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT o.npy FROM outputs o JOIN results r ON r.id=o.result_id "
            "WHERE r.run_id=? AND r.variant_key=? AND r.device=?", (run_id, variant_key, device)).fetchone()
        return np.load(io.BytesIO(row[0]), allow_pickle=False) if row else None
