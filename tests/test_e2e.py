"""End to end through the CLI, as a user runs it: real TVM compiles, the real device runner in a subprocess with
the TVM runtime only, a real SQLite file, the report. Plus the bad-input errors and an interrupted run resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time


from conftest import ROOT, sparsebench, write_config
from harness.report import CSV_COLUMNS


def test_pipeline_end_to_end(small_model, tmp_path):
    model, eval_set = small_model
    db, out = tmp_path / "r.db", tmp_path / "report"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db)
    proc = sparsebench("run", str(cfg), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    with open(out / "results.csv") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 5  # dense + 2 methods x 2 levels
    by = {(r["method"], r["sparsity_target"], r["block"]): r for r in rows}
    for r in rows:
        assert r["verdict"] in ("VALID", "INVALID") and not r["error"], r
        assert float(r["latency_p50_ms"]) > 0 and int(r["n_iter"]) >= 20
        assert r["energy_status"].startswith("unavailable") and r["energy_mj"] == ""
        assert float(r["peak_rss_mb"]) > 0 and int(r["artifact_bytes"]) > 0
    dense = by[("dense", "0.0", "")]
    assert float(dense["accuracy"]) == 1.0  # labels are the dense model's own predictions
    assert float(dense["top1_agreement"]) == 1.0 and float(dense["max_abs_err"]) == 0.0
    sparse = by[("block", "0.9", "8x1")]
    assert 0.8 < float(sparse["sparsity_actual"]) < 0.95
    assert float(sparse["max_abs_err"]) > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert (out / "summary.md").is_file()

    # the store holds the raw samples, the device metadata and the per-layer records
    conn = sqlite3.connect(db)
    n_samples = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert n_samples == sum(int(r["n_iter"]) for r in rows)
    meta, layers, ref_err = conn.execute(
        "SELECT device_meta_json, layers_json, ref_max_abs_err FROM results WHERE method='block'").fetchone()
    meta, layers = json.loads(meta), json.loads(layers)
    assert meta["tvm_runtime_only"] is True and meta["cpu_count"] >= 1 and meta["python"]
    assert [l["pruned"] for l in layers] == [True, True, False]  # prune_last defaults to false
    assert ref_err < 1e-3  # the compiled sparse model computes its own pruned weights
    # issue 10: three interleaved rounds per row, the median's interval, the C++ timer's model time
    for rounds, spread, lo, p50, hi, model_ms in conn.execute(
            "SELECT round_p50_ms_json, round_spread, latency_p50_ci_low_ms, latency_p50_ms, latency_p50_ci_high_ms, "
            "model_time_p50_ms FROM results"):
        assert len(json.loads(rounds)) >= 3 and spread >= 0 and lo <= p50 <= hi and 0 < model_ms

    # a second identical run reuses the cached artifacts; results/report commands read the store
    proc = sparsebench("results", "--db", str(db))
    assert proc.returncode == 0 and "test" in proc.stdout
    proc = sparsebench("results", "--db", str(db), "--csv", str(tmp_path / "x.csv"))
    assert proc.returncode == 0 and (tmp_path / "x.csv").read_text().startswith("run_id,model,method")
    proc = sparsebench("report", "--db", str(db), "--out", str(tmp_path / "rep2"))
    assert proc.returncode == 0 and (tmp_path / "rep2" / "report.html").is_file()


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("sparsebench: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_corrupt_onnx_is_one_clear_error(tmp_path, small_model):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(small_model[0].read_bytes()[:300])  # truncated file
    cfg = write_config(tmp_path / "c.toml", model=bad, eval_set=None, db=tmp_path / "r.db")
    line = _one_error_line(sparsebench("run", str(cfg)))
    assert "broken.onnx" in line and "corrupt" in line and "re-export" in line
    missing = write_config(tmp_path / "m.toml", model=tmp_path / "nope.onnx", eval_set=None, db=tmp_path / "r.db")
    assert "does not exist" in _one_error_line(sparsebench("run", str(missing)))


def test_bad_sparsity_unknown_target_unwritable_out(tmp_path, small_model):
    model, eval_set = small_model
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db", levels=(0, 1.0))
    assert "outside [0, 1)" in _one_error_line(sparsebench("run", str(cfg)))
    cfg = write_config(tmp_path / "t.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db", target="rpi9")
    line = _one_error_line(sparsebench("run", str(cfg)))
    assert "unknown target 'rpi9'" in line and "local" in line
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = write_config(tmp_path / "ok.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db")
    line = _one_error_line(sparsebench("run", str(cfg), "--out", str(blocker / "sub")))
    assert "not writable" in line


def test_unsupported_operator_is_named(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("FancyOp", ["x"], ["y"], domain="")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "fancy.onnx"
    path.write_bytes(model.SerializeToString())  # onnx.checker tolerates unknown ops only outside the checker
    cfg = write_config(tmp_path / "c.toml", model=path, eval_set=None, db=tmp_path / "r.db")
    line = _one_error_line(sparsebench("run", str(cfg)))
    assert "FancyOp" in line


def test_interrupted_run_resumes_without_remeasuring(tmp_path, small_model):
    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.5, 0.7, 0.9),
                       methods=("unstructured", "block:8x1"), min_s=0.4)
    total = 7
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(cfg), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.time() + 300
    kept = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                kept = sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                kept = 0
            if kept >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the harshest interruption: no cleanup code runs
    proc.wait()
    conn = sqlite3.connect(db)
    before = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT variant_key, id, measured_at FROM results")}
    assert 2 <= len(before) < total, before
    run_id = conn.execute("SELECT run_id FROM runs").fetchone()[0]
    conn.close()

    resumed = sparsebench("run", str(cfg), "--resume", run_id, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"kept {len(before)} from before" in resumed.stderr
    conn = sqlite3.connect(db)
    after = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT variant_key, id, measured_at FROM results")}
    assert len(after) == total and conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    for key, value in before.items():
        assert after[key] == value  # kept rows were not measured again
    # sparse rows measured after the resume still compare against the dense row measured before it
    assert all(r[0] is not None for r in conn.execute("SELECT top1_agreement FROM results"))

    # a changed config cannot silently resume an old run
    write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.5))
    assert "config changed" in _one_error_line(sparsebench("run", str(cfg), "--resume", run_id))
