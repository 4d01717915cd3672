"""The SQLite store: schema versioning, one transaction per result, resume bookkeeping."""

import json
import sqlite3
from dataclasses import replace

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.records import EnergyRecord, LayerRecord, ResultRow
from harness.store import SCHEMA_VERSION, ResultStore


def _row(run_id, key, verdict="VALID", **extra) -> ResultRow:
    return ResultRow(run_id=run_id, variant_key=key, device="localhost", model="m", method="dense",
                     sparsity_target=0.0, block="", batch=1, target="local", target_json={"kind": "llvm"},
                     transport="local", verdict=verdict, **extra)


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
    assert [r.variant_key for r in rows] == ["a", "b"] and rows[1].error is None
    assert rows[0].target_json == {"kind": "llvm"} and rows[0].id == rid and rows[0].measured_at
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


def test_typed_row_roundtrip(tmp_path):
    """Every nested record comes back as it went in (JSON columns), and None stays None."""
    store = ResultStore(tmp_path / "r.db")
    store.create_run("r1", name="n", config_toml="", config_hash="h", target="local", target_json={}, host={},
                     harness_version="0")
    energy = EnergyRecord.from_json({"status": "ok", "energy_per_inference_mj": 1.5, "rails": ["VDD"],
                                     "board_serial": "X1"})
    layer = LayerRecord(layer="fc1", weight="fc1.weight", shape=(8, 4), sparsity_target=0.5, sparsity_actual=0.5,
                        pruned=True, kernel="bsr", block=(4, 1), choice="measured", alternatives_us={"dense": 2.0},
                        extra={"candidates_us": {"bsr 4x1": 1.0}})
    row = _row("r1", "a", reasons=("why",), layers=(layer,), overhead={"run_s": 0.5},
               measured_at="2025-01-01T00:00:00+0000").with_energy(energy)
    rid = store.add_result(row)
    (back,) = store.results("r1")
    assert back == replace(row, id=rid)
    assert back.energy_mj == 1.5 and back.energy.extra == {"board_serial": "X1"} and back.energy.rails == ("VDD",)
    assert back.device_meta is None and back.latency is None


#: The schema of version 1 (sparsebench 0.1), as it created stores; kept here to test the migration.
_SCHEMA_V1 = """
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
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    variant_key TEXT NOT NULL,        -- model/method/level@bBATCH
    device TEXT NOT NULL,
    model TEXT NOT NULL,
    model_sha256 TEXT,
    variant_sha256 TEXT,
    method TEXT NOT NULL,
    sparsity_target REAL NOT NULL,
    sparsity_actual REAL,
    block TEXT NOT NULL,
    batch INTEGER NOT NULL,
    target TEXT NOT NULL,
    target_json TEXT NOT NULL,
    transport TEXT NOT NULL,
    latency_p50_ms REAL, latency_p90_ms REAL, latency_p99_ms REAL, latency_mean_ms REAL, latency_std_ms REAL,
    latency_min_ms REAL, latency_max_ms REAL,
    latency_cv REAL,                  -- std/mean without outliers (above max(Q3 + 3 IQR, 2 p50))
    latency_cv_all REAL,              -- std/mean over every sample
    n_outliers INTEGER, n_iter INTEGER, warmup_runs INTEGER,
    accuracy REAL, top1_agreement REAL, max_abs_err REAL, ref_max_abs_err REAL,
    energy_mj REAL, energy_status TEXT,  -- energy per inference (mJ, total) and "ok" / "unavailable: why" / ...
    energy_json TEXT,                 -- the full energy record: method, rails, idle/active W, samples, calibration
    artifact_key TEXT, artifact_bytes INTEGER, compile_s REAL, peak_rss_mb REAL,
    verdict TEXT NOT NULL,            -- VALID | INVALID | ERROR
    reasons_json TEXT NOT NULL,
    error TEXT,
    layers_json TEXT NOT NULL,        -- per layer: shape, target/actual sparsity, kernel chosen
    device_meta_json TEXT,            -- collected on the device by the runner
    overhead_json TEXT,               -- harness step timings (s): build, upload, run, fetch, clean, ...
    tvm_version TEXT,
    measured_at TEXT NOT NULL,
    UNIQUE (run_id, variant_key, device)
);
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
"""

_V1_ENERGY = {"status": "ok", "method": "hwmon", "rails": ["in"], "total_rail": "in", "calibration": None,
              "energy_per_inference_mj": 2.5, "energy_above_idle_per_inference_mj": 1.0, "idle_w": 3.0,
              "active_w": 5.0, "power_cv": 0.01, "rails_active_w": {"in": 5.0}, "idle_s": 1.5, "window_s": 2.0,
              "iterations": 4000, "idle_samples": 150, "samples": 200, "rate_hz": 100.0, "requested_rate_hz": 100.0,
              "sensor_update_s": 0.01, "sensor_update_source": "declared", "sensor_detail": {"path": "/sys/x"}}
_V1_LAYERS = [{"layer": "fc1", "shape": [256, 784], "sparsity_target": 0.9, "sparsity_actual": 0.9, "pruned": True,
               "kernel": "bsr", "block": [8, 1], "choice": "rule", "rule": "density 0.10 < 0.5"},
              {"layer": "fc2", "shape": [10, 256], "sparsity_target": 0.0, "sparsity_actual": 0.0, "pruned": False,
               "kernel": "dense", "block": None}]


def _v1_store(path):
    """A store as sparsebench 0.1 wrote it: the v1 schema, one run, a measured row and an ERROR row."""
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_V1)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO runs VALUES ('r1', 'old', '2025-01-01T00:00:00+0000', '', 'h', 'local', '{}', '{}', "
                 "'0.1')")
    common = {"run_id": "r1", "device": "localhost", "model": "digits-mlp", "method": "block",
              "sparsity_target": 0.9, "block": "8x1", "batch": 1, "target": "local",
              "target_json": json.dumps({"kind": "llvm"}), "transport": "local",
              "measured_at": "2025-01-01T00:00:01+0000"}
    measured = {**common, "variant_key": "digits-mlp/block-8x1/0.9@b1", "sparsity_actual": 0.89,
                "latency_p50_ms": 0.5, "latency_p90_ms": 0.6, "latency_p99_ms": 0.7, "latency_mean_ms": 0.55,
                "latency_std_ms": 0.05, "latency_min_ms": 0.4, "latency_max_ms": 0.9, "latency_cv": 0.02,
                "latency_cv_all": 0.03, "n_outliers": 0, "n_iter": 200, "warmup_runs": 10, "accuracy": 0.97,
                "energy_mj": 2.5, "energy_status": "ok", "energy_json": json.dumps(_V1_ENERGY),
                "artifact_key": "abc", "artifact_bytes": 1000, "compile_s": 1.5, "peak_rss_mb": 50.0,
                "verdict": "VALID", "reasons_json": "[]", "layers_json": json.dumps(_V1_LAYERS),
                "device_meta_json": json.dumps({"machine": "x86_64", "cpu_count": 2, "loadavg": [0.1, 0.2, 0.3]}),
                "overhead_json": json.dumps({"compile_cached": False, "run_s": 1.0}), "tvm_version": "0.27"}
    error = {**common, "variant_key": "digits-mlp/block-8x1/0.95@b1", "energy_status": "unavailable: not measured",
             "energy_json": "null", "verdict": "ERROR", "error": "compile: boom", "reasons_json": "[]",
             "layers_json": "[]", "device_meta_json": "null", "overhead_json": json.dumps({"compile_cached": False})}
    nm = {**error, "variant_key": "digits-mlp/nm-2of4/0.5@b1", "method": "nm", "block": "2:4"}
    for row in (measured, error, nm):
        conn.execute(f"INSERT INTO results ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                     tuple(row.values()))
    conn.commit()
    conn.close()


def _columns(path) -> dict[str, tuple[str, bool]]:
    conn = sqlite3.connect(path)
    try:
        return {r[1]: (r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(results)")}
    finally:
        conn.close()


def test_results_table_is_generated_from_result_row(tmp_path):
    ResultStore(tmp_path / "r.db").close()
    expected = {"id": ("INTEGER", False)}
    expected.update({c.name: (c.sql_type, c.not_null) for c in ResultRow.columns()})
    assert _columns(tmp_path / "r.db") == expected


def test_v1_store_is_migrated_and_reads_back_typed(tmp_path):
    _v1_store(tmp_path / "old.db")
    ResultStore(tmp_path / "new.db").close()
    store = ResultStore(tmp_path / "old.db")
    assert _columns(tmp_path / "old.db") == _columns(tmp_path / "new.db")  # the migration reaches today's schema
    version = store.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 8
    assert store.notes("r1") == []  # version 3: the notes table exists
    measured, error, nm = store.results("r1")
    assert nm.variant_key == "digits-mlp/nm-2:4/0.5@b1"  # one spelling of N:M, old keys included
    assert measured.latency.p50_ms == 0.5 and measured.latency.n == 200 and measured.build.compile_s == 1.5
    assert measured.build.toolchain is None  # not recorded before version 2
    assert measured.energy == EnergyRecord.from_json(_V1_ENERGY) and measured.energy.extra == {}
    assert measured.energy.per_inference_mj == measured.energy_mj == 2.5
    assert measured.device_meta.machine == "x86_64" and measured.device_meta.loadavg == (0.1, 0.2, 0.3)
    fc1, fc2 = measured.layers
    assert fc1 == LayerRecord(layer="fc1", shape=(256, 784), sparsity_target=0.9, sparsity_actual=0.9, pruned=True,
                              kernel="bsr", block=(8, 1), choice="rule", rule="density 0.10 < 0.5")
    assert fc1.weight is None and fc2.kernel == "dense" and fc2.block is None  # old layers keep what they had
    assert error.verdict == "ERROR" and error.energy is None and error.device_meta is None and error.layers == ()
    # the migrated store takes new rows and keeps the old ones
    store.add_result(_row("r1", "new", toolchain="gcc"))
    assert [r.variant_key for r in store.results("r1")][-1] == "new" and len(store.results("r1")) == 4
    store.close()


def test_v1_store_reports_after_migration(tmp_path):
    """`sparsebench report` and `results` on a store made by version 1, as a user upgrading would run them."""
    from conftest import sparsebench

    _v1_store(tmp_path / "old.db")
    proc = sparsebench("report", "--db", str(tmp_path / "old.db"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "digits-mlp/block-8x1/0.9@b1" in page and "rule: density 0.10 &lt; 0.5" in page and "x86_64" in page
    proc = sparsebench("results", "r1", "--db", str(tmp_path / "old.db"))
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert header.startswith("run_id,model,method") and len(lines) == 3
    assert any(",0.5,0.6,0.7,0.55,0.02,200,0.97," in line for line in lines)


def test_run_notes_are_kept_once_in_order(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    store.create_run("r1", name="n", config_toml="", config_hash="h", target="local", target_json={}, host={},
                     harness_version="x")
    store.add_note("r1", "peer onnxruntime: unavailable on board (not installed)")
    store.add_note("r1", "second")
    store.add_note("r1", "peer onnxruntime: unavailable on board (not installed)")  # a resume says it again
    assert store.notes("r1") == ["peer onnxruntime: unavailable on board (not installed)", "second"]
    assert store.notes("other") == []
    store.close()
