"""The README's demo, as a new user runs it (the quick sweep: two MLPs, a CNN and an encoder block), checked against
what the report must show."""

import csv

import pytest

from conftest import sparsebench


@pytest.mark.slow
def test_demo_quick_report(tmp_path):
    out, db = tmp_path / "demo", tmp_path / "results.db"
    proc = sparsebench("demo", "--quick", "--out", str(out), "--db", str(db), "--no-progress", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert not [r for r in rows if r["verdict"] == "ERROR"], [r["error"] for r in rows if r["error"]]

    digits = [r for r in rows if r["model"] == "digits-mlp"]
    levels = {float(r["sparsity_target"]) for r in digits}
    assert len(levels) >= 4 and {0.0, 0.9} <= levels
    for r in digits:
        assert float(r["latency_p50_ms"]) > 0 and r["accuracy"] != "" and r["verdict"] in ("VALID", "INVALID")
    dense = next(r for r in digits if r["method"] == "dense")
    assert float(dense["accuracy"]) >= 0.95
    # recovered by default ([sparsify.finetune]): every sparse digits row has its one-shot accuracy and training time
    for r in digits:
        if float(r["sparsity_target"]) > 0:  # not the dense runtimes (ours, the peers')
            assert r["accuracy_oneshot"] != "" and float(r["finetune_s"]) > 0, r
    block90 = next(r for r in digits if r["method"] == "block" and float(r["sparsity_target"]) == 0.9)
    assert float(block90["accuracy"]) >= 0.95 > float(block90["accuracy_oneshot"])

    ffn = [r for r in rows if r["model"] == "ffn-768"]
    assert {int(r["batch"]) for r in ffn} == {1, 16}
    assert {float(r["sparsity_target"]) for r in ffn} == levels
    for r in ffn:
        assert r["max_abs_err"] != "" and r["accuracy"] == ""  # no labels: fidelity to dense instead
        assert r["accuracy_oneshot"] == "" and r["finetune_s"] == ""  # finetune = false: one-shot variants
        assert float(r["latency_p50_ms"]) > 0

    # the conv and attention models: their own levels (16x1 blocks at 0.5 and 0.9), the CNN with its accuracy, the
    # encoder block by fidelity
    cnn = [r for r in rows if r["model"] == "digits-cnn"]
    assert {float(r["sparsity_target"]) for r in cnn} == {0.0, 0.5, 0.9}
    assert all(r["accuracy"] != "" for r in cnn)
    assert float(next(r for r in cnn if r["method"] == "dense")["accuracy"]) >= 0.95
    encoder = [r for r in rows if r["model"] == "tiny-encoder"]
    assert {float(r["sparsity_target"]) for r in encoder} == {0.0, 0.5, 0.9}
    assert all(r["max_abs_err"] != "" and r["accuracy"] == "" for r in encoder)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
