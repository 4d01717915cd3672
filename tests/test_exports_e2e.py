"""Real exports end to end: models made by the exporters people use (``torch.onnx.export`` of a torchvision-style
CNN and of a BERT-style encoder with int64 ids and an attention mask, skl2onnx of a scikit-learn MLP), each run
through ``sparsebench run`` as a user would -- a config with the dense model and one 90 % 16x1 block variant on the
``local`` target, real TVM compiles, the real runner -- and every row compiled, checked against onnxruntime's
evaluation of the same (pruned) model, and the report written. Speed is not asserted here: the targets live in
`sparsebench models`' JSON.

Each case compiles two builds, times their kernel candidates and runs the runner twice: 30-100 s on the shared
2-core VM, so all are marked slow (CI runs them; `-m "not slow"` skips them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import sparsebench, write_config
from exports import bert_encoder, sklearn_mlp, small_cnn
from harness.modelbench.exports import missing

pytestmark = pytest.mark.slow

NO_TORCH = missing("torch", "torchvision", "onnxscript")
needs_torch = pytest.mark.skipif(bool(NO_TORCH), reason=f"the torch exporter needs {', '.join(NO_TORCH)} "
                                                          "(the `test` extra): pip install -e '.[test]'")


def _run_dense_and_block(model: Path, eval_set: Path, tmp_path: Path, name: str, **config) -> dict:
    """`sparsebench run` on the dense model and its 90 % 16x1 block variant with a report; returns the rows by
    method after checking each one compiled, ran and matched the reference evaluation of its own ONNX."""
    from harness.store import ResultStore

    db, out = tmp_path / "r.db", tmp_path / "report"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.9),
                       methods=("block:16x1",), min_runs=10, min_s=0.02, name=name, **config)
    proc = sparsebench("run", str(cfg), "--no-progress", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    store = ResultStore(db)
    try:
        (run,) = store.list_runs()
        rows = store.results(run["run_id"])
    finally:
        store.close()
    assert sorted(r.method for r in rows) == ["block", "dense"]
    for row in rows:
        assert row.verdict != "ERROR" and not row.error, (row.variant_key, row.error)
        assert row.artifact_bytes, row.variant_key  # compiled by us
        # compared with onnxruntime on the variant's own ONNX: within ref_rtol of the output scale, or the
        # verdict would name the reference in its reasons
        assert row.ref_max_abs_err is not None, row.variant_key
        assert not any("reference" in r for r in row.reasons), (row.variant_key, row.reasons)
    assert (out / "report.html").is_file() and (out / "results.csv").is_file()
    return {r.method: r for r in rows}


def _pruned(row, at_least: float = 0.85) -> list:
    return [layer for layer in row.layers if layer.sparsity_actual >= at_least]


@needs_torch
def test_torchvision_style_cnn(tmp_path):
    """Conv 3x3, strided conv, 1x1 downsample, depthwise conv, BN, ReLU/ReLU6, max pool, global average pool and
    Linear from torch's default (dynamo) exporter at [1, 3, 32, 32]."""
    model, eval_set = small_cnn(tmp_path)
    rows = _run_dense_and_block(model, eval_set, tmp_path, "cnn")
    sparse = rows["block"]
    assert 0.8 < sparse.sparsity_actual < 0.95
    assert len(_pruned(sparse)) >= 5  # the convolutions were pruned, not only the classifier
    assert sparse.max_abs_err > 0  # pruning changed the outputs: the sparse build is not the dense one


@needs_torch
@pytest.mark.parametrize("exporter", ["default", "legacy"])
def test_bert_style_encoder_with_ids_and_mask(tmp_path, exporter):
    """int64 input_ids and attention_mask at batch 1, HF's additive mask, GELU (one Gelu op from the default
    exporter, Erf arithmetic from the legacy one), LayerNorm; the evaluation rows mask out padding."""
    model, eval_set = bert_encoder(tmp_path, exporter=exporter)
    rows = _run_dense_and_block(model, eval_set, tmp_path, "bert")
    assert rows["block"].max_abs_err > 0
    assert len(_pruned(rows["block"])) >= 10  # q, k, v, out, up, down of both layers (the first may be kept)


def test_sklearn_mlp_through_skl2onnx(tmp_path):
    model, eval_set = sklearn_mlp(tmp_path)
    rows = _run_dense_and_block(model, eval_set, tmp_path, "mlp", batch=(4,),
                                model_extra='outputs = ["probabilities"]')
    assert rows["dense"].accuracy > 0.6
