"""SQLite results store.

One row per (run, variant@batch, device) in ``results`` with every figure and its environment, the raw
per-iteration latencies in ``samples``, and the evaluation outputs (``.npy`` bytes) in ``outputs`` so a resumed
run can still compare sparse variants against a dense variant measured before the interruption. The ``results``
columns are :class:`harness.records.ResultRow`'s fields; rows go in and come out as ``ResultRow``.

Each result is committed on its own: an interrupted run keeps everything it finished.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from ..records import ResultRow

SCHEMA_VERSION = 5

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


_SCHEMA = _TABLES.format(results=results_ddl(), notes=_NOTES)

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


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4,
                                                               4: _v4_to_v5}


def new_run_id() -> str:
    """Sortable, unique enough: ``YYYYmmdd-HHMMSS-xxxx``."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class ResultStore:
    """Open (creating or migrating) a results database."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), timeout=30)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.row_factory = sqlite3.Row
            self._init_schema()
        except (OSError, sqlite3.OperationalError) as err:
            raise HarnessError(f"cannot open results store {self.path}: {err}; choose a writable path with --db") from None
        except sqlite3.DatabaseError as err:
            raise HarnessError(f"results store {self.path} is not a SQLite database ({err}); move it away or use --db") from None

    def _init_schema(self) -> None:
        row = self.conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if row is None:
            with self.conn:
                self.conn.executescript(_SCHEMA)
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        version = int(self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise HarnessError(
                f"results store {self.path} has schema version {version}, newer than this sparsebench "
                f"({SCHEMA_VERSION}); upgrade sparsebench or use another --db"
            )
        with self.conn:
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](self.conn)
                version += 1
                self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))

    def close(self) -> None:
        self.conn.close()

    # runs ---------------------------------------------------------------------------------------------------------

    def create_run(self, run_id: str, *, name: str, config_toml: str, config_hash: str, target: str,
                   target_json: dict, host: dict, harness_version: str) -> None:
        with self.conn:
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
        with self.conn:
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
        """Insert (or replace an earlier error row for) one result, its samples and outputs, in one transaction."""
        record = row.to_db()
        if not record["measured_at"]:
            record["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        columns = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        with self.conn:
            self.conn.execute("DELETE FROM results WHERE run_id=? AND variant_key=? AND device=?",
                              (row.run_id, row.variant_key, row.device))
            cur = self.conn.execute(f"INSERT INTO results ({columns}) VALUES ({marks})", tuple(record.values()))
            result_id = cur.lastrowid
            if samples_ns:
                self.conn.executemany("INSERT INTO samples VALUES (?, ?, ?)",
                                      ((result_id, i, int(v)) for i, v in enumerate(samples_ns)))
            if outputs is not None:
                self.conn.execute("INSERT INTO outputs VALUES (?, ?)", (result_id, _npy_bytes(outputs)))
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
