"""A peer runtime's row (onnxruntime) end to end through `sparsebench run` on the local target: the dense model run
on the device by the same runner and timing rules, checked against the reference like any row, shown in the
report next to our builds; off with ``peers = []``; skipped with a note (not an error) where the device lacks it."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import sys

from conftest import sparsebench, write_config


def _rows(db) -> dict[str, dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["variant_key"]: dict(r) for r in conn.execute("SELECT * FROM results")}
    finally:
        conn.close()


def test_peer_row_measured_checked_and_reported(small_model, tmp_path):
    model, eval_set = small_model
    db, out = tmp_path / "r.db", tmp_path / "report"
    # no [compare] table: the default peers; batch 3 pads the last chunk of the 40 evaluation rows
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.9),
                       methods=("block:8x1",), batch=(1, 3), peers=None)
    proc = sparsebench("run", str(cfg), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "unavailable" not in proc.stderr
    rows = _rows(db)
    assert len(rows) == 6  # (dense, onnxruntime, block 90%) x 2 batches
    for batch in (1, 3):
        peer, dense = rows[f"small/onnxruntime/0@b{batch}"], rows[f"small/dense/0@b{batch}"]
        assert peer["method"] == "onnxruntime" and peer["batch"] == batch and peer["error"] is None
        assert peer["verdict"] in ("VALID", "INVALID") and peer["sparsity_target"] == 0.0
        assert peer["sparsity_actual"] == 0.0 and peer["block"] == ""
        # no compile: no artifact, no compile time
        assert peer["artifact_key"] is None and peer["artifact_bytes"] is None and peer["compile_s"] is None
        # the same iteration rules as our rows: warm-up runs and at least min_runs timed iterations
        assert peer["warmup_runs"] >= 2 and peer["n_iter"] >= 20 and dense["n_iter"] >= 20
        # outputs checked against the reference evaluation and against our dense build, like any row
        assert peer["ref_max_abs_err"] is not None and peer["ref_max_abs_err"] < 1e-4
        assert peer["top1_agreement"] == 1.0 and peer["accuracy"] == 1.0 and peer["max_abs_err"] < 1e-4
        assert not any("reference" in r for r in json.loads(peer["reasons_json"])), peer["reasons_json"]
        meta = json.loads(peer["device_meta_json"])
        assert meta["onnxruntime"]  # the runner that timed it (with our builds, in interleaved rounds) had it loaded
        overhead = json.loads(peer["overhead_json"])
        assert overhead["device_measure_s"] > 0 and "compile_cached" not in overhead

    with open(out / "results.csv") as fh:
        methods = [r["method"] for r in csv.DictReader(fh)]
    assert methods.count("onnxruntime") == 2
    html = (out / "report.html").read_text()
    assert "speedup vs best dense" in html and "best dense runtime" in html
    assert re.search(r"×(?: \[[^<\]]*\])?(?: no significant difference)? \((onnxruntime|dense)\)", html)
    summary = (out / "summary.md").read_text()
    assert "speedup vs best dense" in summary and "## Against the best dense runtime" in summary

    # --resume treats the peer row like any other: kept, not measured again
    run_id = sqlite3.connect(db).execute("SELECT run_id FROM runs").fetchone()[0]
    again = sparsebench("run", str(cfg), "--resume", run_id, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "measured 0, kept 6 from before" in again.stderr
    assert {k: v["id"] for k, v in _rows(db).items()} == {k: v["id"] for k, v in rows.items()}


def test_no_peers_no_peer_row(small_model, tmp_path):
    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0,), peers=[])
    proc = sparsebench("run", str(cfg), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert list(_rows(db)) == ["small/dense/0@b1"]


def test_unknown_peer_is_one_line(small_model, tmp_path):
    model, eval_set = small_model
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db",
                       peers=["tensorrt"])
    proc = sparsebench("run", str(cfg))
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("sparsebench: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "unknown peer 'tensorrt'; known: onnxruntime" in lines[0]


def test_peer_missing_on_the_device_is_a_note_not_an_error(small_model, tmp_path):
    """A device Python whose onnxruntime does not import (a stub package shadows it): no peer row, no ERROR, one
    note on stderr and in the report."""
    model, eval_set = small_model
    stub = tmp_path / "stub" / "onnxruntime"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'onnxruntime'\")\n")
    python = tmp_path / "device-python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={stub.parent} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    db, out = tmp_path / "r.db", tmp_path / "report"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0,),
                       peers=["onnxruntime"])
    proc = sparsebench("run", str(cfg), "--python", str(python), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    notes = [l for l in proc.stderr.splitlines() if l.startswith("peer onnxruntime: unavailable on ")]
    assert len(notes) == 1 and notes[0].endswith("(not installed)"), proc.stderr
    rows = _rows(db)
    assert list(rows) == ["small/dense/0@b1"] and rows["small/dense/0@b1"]["verdict"] != "ERROR"
    assert notes[0] in (out / "report.html").read_text() and notes[0] in (out / "summary.md").read_text()
