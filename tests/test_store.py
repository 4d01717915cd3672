"""The SQLite store: schema versioning, one transaction per result, resume bookkeeping."""

import sqlite3

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.store import SCHEMA_VERSION, ResultStore


def _row(run_id, key, verdict="VALID", **extra):
    row = {"run_id": run_id, "variant_key": key, "device": "localhost", "model": "m", "method": "dense",
           "sparsity_target": 0.0, "block": "", "batch": 1, "target": "local", "target_json": {"kind": "llvm"},
           "transport": "local", "verdict": verdict, "reasons": [], "layers": []}
    row.update(extra)
    return row


def test_store_roundtrip_and_resume_bookkeeping(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    store.create_run("r1", name="n", config_toml="", config_hash="h", target="local", target_json={}, host={},
                     harness_version="0")
    out = np.arange(6, dtype=np.float32).reshape(3, 2)
    rid = store.add_result(_row("r1", "a", latency_p50_ms=1.5), samples_ns=[3, 1, 2], outputs=out)
    store.add_result(_row("r1", "b", verdict="ERROR", error="compile: boom"))
    assert store.completed("r1") == {("a", "localhost")}  # error rows are retried on resume
    assert store.samples(rid) == [3, 1, 2]
    assert np.array_equal(store.outputs("r1", "a", "localhost"), out)
    # a retried row replaces the error row instead of duplicating it
    store.add_result(_row("r1", "b", latency_p50_ms=2.0))
    rows = store.results("r1")
    assert [r["variant_key"] for r in rows] == ["a", "b"] and rows[1]["error"] is None
    assert rows[0]["target_json"] == {"kind": "llvm"}
    assert store.resolve_run(None) == "r1"
    with pytest.raises(HarnessError, match="no run 'zz'"):
        store.resolve_run("zz")
    store.close()
    version = sqlite3.connect(tmp_path / "r.db").execute("SELECT value FROM meta").fetchone()[0]
    assert int(version) == SCHEMA_VERSION


def test_newer_schema_and_garbage_are_refused(tmp_path):
    ResultStore(tmp_path / "r.db").close()
    conn = sqlite3.connect(tmp_path / "r.db")
    conn.execute("UPDATE meta SET value='99'")
    conn.commit()
    with pytest.raises(HarnessError, match="schema version 99"):
        ResultStore(tmp_path / "r.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(HarnessError, match="not a SQLite database"):
        ResultStore(tmp_path / "junk.db")
