"""`sparsebench models`: model selection, interleaved timing, the targets and the table; a real run of the suite
through the CLI (slow: real exports, kernel selection and compiles)."""

from __future__ import annotations

import json
import time

import pytest

from conftest import sparsebench
from harness.errors import HarnessError
from harness.modelbench import FULL, SuiteModel, format_table, model_suite, pick, suite_models, target_checks
from harness.modelbench.exports import missing
from harness.modelbench.timing import RoundPlan, interleaved, paired_ratio


def test_pick_models_by_name():
    names = [m.name for m in suite_models()]
    assert names[:2] == ["digits-mlp", "ffn-768"]  # the zoo first
    assert {"small-cnn", "resnet18", "mobilenet_v2", "bert-encoder", "sklearn-mlp"} <= set(names)
    assert [m.name for m in pick("sklearn-mlp, digits-mlp")] == ["digits-mlp", "sklearn-mlp"]  # suite order
    assert [m.name for m in pick(None)] == names
    with pytest.raises(HarnessError, match="unknown model.*'resnet50' for --models; known: digits-mlp, ffn-768"):
        pick("digits-mlp,resnet50")


def test_interleaved_rounds_pair_the_engines():
    """Two engines of known speed: per-call medians, the round-by-round ratio, each engine's turn sized to the
    budget."""
    plan = RoundPlan(rounds=4, budget_s=0.02, warmup_s=0.0, settle_s=0.0)
    timings, rounds = interleaved({"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.001)}, plan)
    assert len(rounds) == 4 and all(set(r) == {"slow", "fast"} for r in rounds)
    assert 3.5 < timings["slow"]["median_ms"] < 8 and 0.9 < timings["fast"]["median_ms"] < 4
    assert timings["slow"]["p10_ms"] <= timings["slow"]["median_ms"] <= timings["slow"]["p90_ms"]
    assert timings["fast"]["n"] > timings["slow"]["n"] >= 4
    ratio = paired_ratio(rounds, "slow", "fast")
    assert ratio["min"] <= ratio["median"] <= ratio["max"] and ratio["median"] > 1.5
    assert paired_ratio(rounds, "slow", "absent") is None


def _doc(**ratios) -> dict:
    """A suite document of one measured CNN, one MLP and one skipped model."""
    timing = {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.2, "min_ms": 0.8, "n": 10}
    built = {"compiled": True, "error": None, "correct": True, "max_rel_err": 1e-7, "timing": timing}

    def model(name, kind, r):
        return {"model": name, "kind": kind, "status": "ok", "dense": built, "sparse": built,
                "ort": {"timing": timing}, "ratios": r, "compile_wall_s": 3.0}

    return {"meta": {"plan": {"batch": 1, "sparsity": 0.9, "block": [16, 1], "dense_target": 1.5},
                     "cpu_model": "cpu", "cpus": 2, "tvm_version": "0.27", "tvm_threads": 2, "ort_threads": 2,
                     "seconds": 10, "loadavg_start": 1.0, "loadavg_end": 1.0},
            "models": [model("cnn", "cnn", ratios),
                       model("mlp", "mlp", {"dense_over_ort": 1.2, "sparse_over_ort": 2.0, "sparse_over_dense": 1.1}),
                       {"model": "bert", "kind": "transformer", "status": "skipped", "reason": "needs torch"}]}


def test_targets_pass_and_fail():
    good = target_checks(_doc(dense_over_ort=1.4, sparse_over_ort=0.5, sparse_over_dense=0.3))
    assert [c["ok"] for c in good] == [True, True, True, True]
    assert good[1]["detail"] == "cnn 1.40; mlp 1.20"  # every model, the skipped one left out
    assert good[2]["detail"] == "cnn 0.30"  # CNNs only
    bad = {c["claim"]: c["ok"] for c in target_checks(_doc(dense_over_ort=1.6, sparse_over_ort=0.97,
                                                           sparse_over_dense=0.5))}
    assert list(bad.values()) == [True, False, True, False]  # 0.97: within the noise margin, not faster
    doc = _doc(dense_over_ort=1.0, sparse_over_ort=1.0, sparse_over_dense=1.0)
    doc["models"][0] = {"model": "cnn", "kind": "cnn", "status": "error", "error": "compile: boom"}
    checks = target_checks(doc)
    assert not checks[0]["ok"] and "cnn dense no, sparse no (compile: boom)" in checks[0]["detail"]
    assert len(checks) == 2  # no CNN measured: no CNN claims


def test_table_rows_and_targets():
    doc = _doc(dense_over_ort=1.4, sparse_over_ort=0.5, sparse_over_dense=0.3)
    doc["targets"] = target_checks(doc)
    text = format_table(doc)
    assert "cnn            cnn         yes/ok 1e-07" in text and "1 [0.9-1.2]" in text
    assert "bert           transformer skipped: needs torch" in text
    assert "[PASS] dense TVM build within 1.5x of onnxruntime" in text


def test_a_model_that_cannot_be_made_is_skipped_with_the_reason():
    """No exporter here: a skipped record naming the package, nothing compiled, the suite goes on."""
    model = SuiteModel("ghost", "cnn", "test", "needs a package nobody has", requires=("no_such_exporter_pkg",))
    doc = model_suite([model], FULL, log=lambda _: None)
    (record,) = doc["models"]
    assert record["status"] == "skipped" and "no_such_exporter_pkg" in record["reason"]
    assert doc["targets"] == [] and doc["format"] == "sparsebench-models/1"
    assert "in-process" in doc["meta"]["measured"] and doc["meta"]["tvm_threads"] == doc["meta"]["ort_threads"]


@pytest.mark.slow
@pytest.mark.skipif(bool(missing("torch", "torchvision", "onnxscript", "skl2onnx")), reason="needs the test extra's "
                    "exporters (torch, torchvision, onnxscript, skl2onnx): pip install -e '.[test]'")
def test_models_command_end_to_end(tmp_path):
    """`sparsebench models --quick` on a torch CNN export and the skl2onnx MLP: both compiled, correct, timed."""
    out = tmp_path / "models.json"
    proc = sparsebench("models", "--quick", "--models", "small-cnn,sklearn-mlp", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert [m["model"] for m in doc["models"]] == ["small-cnn", "sklearn-mlp"]
    for m in doc["models"]:
        assert m["status"] == "ok", m
        for which in ("dense", "sparse"):
            assert m[which]["compiled"] and m[which]["correct"], (m["model"], which, m[which])
            assert m[which]["timing"]["n"] >= 5
        assert m["ort"]["timing"]["median_ms"] > 0 and m["ratios"]["dense_over_ort"] > 0
    assert doc["models"][0]["sparse_layers"]["pruned"] >= 5
    assert any(k.startswith("conv") for k in doc["models"][0]["dense"]["kernels"])
    claims = [c["claim"] for c in doc["targets"]]
    assert len(claims) == 4 and "small-cnn" in doc["targets"][3]["detail"]
    assert "small-cnn" in proc.stdout and "issue #9 targets" in proc.stdout


def test_cli_has_models_command():
    from harness.cli import build_parser

    args = build_parser().parse_args(["models", "--quick", "--models", "small-cnn,ffn-768", "--json", "m.json"])
    assert args.quick and args.models == "small-cnn,ffn-768" and str(args.json) == "m.json"
    assert args.func.__name__ == "cmd_models"
