"""Channel pruning against block sparsity end to end (both rows VALID, the decision table in the report), an as-is
model without a dense reference (its dense row: our dense kernel forced), and the one-line refusals."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from conftest import sparsebench, write_config
from harness.config import Method, parse_config
from harness.errors import HarnessError


def _rows(out):
    with open(out / "results.csv") as fh:
        return list(csv.DictReader(fh))


def test_channel_vs_block_end_to_end(tmp_path):
    db, out = tmp_path / "r.db", tmp_path / "report"
    cfg = tmp_path / "c.toml"
    write_config(cfg, model="unused", eval_set=None, db=db, levels=(0, 0.9), methods=("block:16x1", "channel"))
    # the zoo's digits-mlp (labels included) instead of a path
    cfg.write_text(cfg.read_text().replace('name = "small"\npath = "unused"', 'name = "digits-mlp"'))
    proc = sparsebench("run", str(cfg), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = {r["method"]: r for r in _rows(out)}
    assert set(rows) == {"dense", "block", "channel"}
    for method in ("block", "channel"):
        assert rows[method]["verdict"] == "VALID", rows[method]
        assert float(rows[method]["accuracy"]) > 0
    assert abs(float(rows["channel"]["sparsity_actual"]) - 0.9) < 0.01
    assert "channel 0.9: 2 chain(s) cut" in proc.stderr
    summary = (out / "summary.md").read_text()
    table = summary.split("## Channel pruning vs sparse kernels")[1].split("\n## ")[0]
    assert "| 90% | channel | VALID |" in table and "| 90% | block 16x1 | VALID |" in table
    assert "112,200 (10.0%)" in table  # the channel model's parameters, of dense's
    assert "digits-mlp · batch 1 · localhost, 90%:" in table
    html = (out / "report.html").read_text()
    assert 'id="channel-vs-sparse"' in html and "Activation sparsity" in html and "300/1024 outputs kept" in html


def test_asis_without_dense_reference_forces_our_dense_kernel(tmp_path, small_model):
    from harness.sparsify import make_variant

    model, eval_set = small_model
    pruned = make_variant("small", model, Method("block", (8, 1)), 0.9, tmp_path / "v")
    db, out = tmp_path / "r.db", tmp_path / "report"
    cfg = write_config(tmp_path / "c.toml", model=pruned.onnx_path, eval_set=eval_set, db=db, methods=("as-is",))
    proc = sparsebench("run", str(cfg), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = {r["method"]: r for r in _rows(out)}
    assert set(rows) == {"dense", "as-is"} and rows["as-is"]["verdict"] != "ERROR", rows
    assert rows["as-is"]["block"] == "8x1"  # the pattern found, in the block column
    assert "no dense model given" in proc.stderr and "8x1 blocks" in proc.stderr
    conn = sqlite3.connect(db)
    layers = {m: json.loads(j) for m, j in conn.execute("SELECT method, layers_json FROM results")}
    assert all(l["kernel"] == "dense" and "forced" in l["rule"] for l in layers["dense"])
    assert [l["pattern"] for l in layers["as-is"]] == ["8x1 blocks", "8x1 blocks", "dense"]
    assert "no dense model given" in (out / "summary.md").read_text()


def test_asis_on_a_dense_model_is_one_line(tmp_path, small_model):
    model, eval_set = small_model
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=tmp_path / "r.db", methods=("as-is",))
    proc = sparsebench("run", str(cfg), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsebench: error:") and "Traceback" not in proc.stderr
    assert "model small" in lines[0] and "as-is" in lines[0] and "block:16x1" in lines[0]
    assert not (tmp_path / "r.db").exists() or "compile" not in proc.stderr


def test_dense_key_needs_asis(tmp_path):
    data = {"models": [{"name": "digits-mlp", "dense": "d.onnx"}]}
    with pytest.raises(HarnessError, match="dense = ... names the dense reference"):
        parse_config(data, base=tmp_path)
    spec = parse_config({"models": [{"name": "digits-mlp", "dense": "d.onnx", "methods": ["as-is"]}]},
                        base=tmp_path).models[0]
    assert spec.dense_path == (tmp_path / "d.onnx").resolve() and spec.methods == (Method("as-is"),)
