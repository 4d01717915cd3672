"""The models people bring: several inputs of their own dtypes, a fixed batch, outputs to keep. Exports made here
(``tests/exports.py``: a BERT-style stub with int64 ids and an attention mask at batch 1, a scikit-learn MLP
through skl2onnx, a model with float16/bool/int32 inputs), checked at load, then run end to end through the CLI
with real TVM compiles; every bad input is one line and exit 2, before anything compiles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import sparsebench, write_config
from exports import CLASSES, VOCAB, bert_eval_set, bert_stub, mixed_inputs, sklearn_mlp
from harness.errors import HarnessError
from harness.models.inputs import DEFAULT_VOCAB, InputSpec, synthetic_inputs
from harness.models.onnx_io import load_model
from harness.models.reference import reference_outputs


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[Path, Path]:
    """The stub at batch 1 with a dynamic sequence length, and an evaluation set (ids, masks, labels) that sizes it."""
    folder = tmp_path_factory.mktemp("bert")
    model = bert_stub(folder / "bert.onnx")
    fixed = bert_stub(folder / "bert-fixed.onnx", seq=16)  # same weights, for the labels
    return model, bert_eval_set(folder / "bert.npz", seq=16, labels_from=fixed)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> tuple[Path, Path]:
    return sklearn_mlp(tmp_path_factory.mktemp("mlp"))


# ---------------------------------------------------------------------------------------------------------------
# loading: inputs as declared, the evaluation set by input name, outputs cut


def test_inputs_by_name_with_their_dtypes(bert):
    model, eval_set = bert
    loaded = load_model("bert", model, eval_set)
    assert loaded.inputs == (InputSpec("input_ids", "int64", (1, 16)), InputSpec("attention_mask", "int64", (1, 16)))
    assert loaded.outputs == ("logits",) and loaded.n_eval == 12
    assert {k: v.dtype for k, v in loaded.eval_inputs.items()} == {"input_ids": np.int64, "attention_mask": np.int64}
    assert loaded.eval_y is not None and len(loaded.eval_y) == 12
    with pytest.raises(HarnessError, match="input 'input_ids' has a fixed batch of 1, cannot run batch 4"):
        loaded.shapes_for_batch(4)


def test_synthetic_inputs_have_each_inputs_dtype_and_range(tmp_path):
    specs = (InputSpec("x", "float16", ("N", 8)), InputSpec("keep", "bool", ("N", 8)),
             InputSpec("ids", "int32", ("N", 3)), InputSpec("pos", "int64", ("N", 3)))
    made = synthetic_inputs(specs, vocab={"ids": 7}, ranges={"pos": 5}, n=64)
    assert [made[s.name].dtype for s in specs] == [np.float16, np.bool_, np.int32, np.int64]
    assert all(a.shape[0] == 64 for a in made.values())
    assert made["keep"].any() and not made["keep"].all()
    assert made["ids"].min() >= 0 and made["ids"].max() == 6  # the config's vocab
    assert made["pos"].max() == 4  # the embedding table's rows
    assert synthetic_inputs(specs[2:3], n=400)["ids"].max() == DEFAULT_VOCAB - 1
    again = synthetic_inputs(specs, vocab={"ids": 7}, ranges={"pos": 5}, n=64)
    assert all(np.array_equal(made[k], again[k]) for k in made)  # seeded
    # without an evaluation set, ids index the model's own embedding table: never out of range
    loaded = load_model("bert", bert_stub(tmp_path / "b.onnx", seq=16), None)
    assert loaded.eval_inputs["input_ids"].max() < VOCAB <= DEFAULT_VOCAB


def test_dynamic_dims_sized_by_the_config(tmp_path):
    model = mixed_inputs(tmp_path / "mixed.onnx")
    loaded = load_model("mixed", model, None, shapes={"ids": ["N", 3]}, vocab={"*": 4})
    assert [s.shape for s in loaded.inputs] == [("N", 8), ("N", 8), ("N", 3)]
    assert loaded.eval_inputs["ids"].max() == 3
    assert [s.shape for s in loaded.shapes_for_batch(2)] == [(2, 8), (2, 8), (2, 3)]
    with pytest.raises(HarnessError, match=r"input 'ids' dim 1 \('k'\) is dynamic.*shapes = \{ids = \[\"N\", 128\]\}"):
        load_model("mixed", model, None)
    with pytest.raises(HarnessError, match="shapes gives input 'x' dim 1 = 9, but the model fixes it to 8"):
        load_model("mixed", model, None, shapes={"x": ["N", 9], "ids": ["N", 3]})
    with pytest.raises(HarnessError, match="vocab names 'x', not an integer input of the model; its integer inputs: "
                                           "ids"):
        load_model("mixed", model, None, shapes={"ids": ["N", 3]}, vocab={"x": 3})


def test_reference_runs_at_the_models_own_batch(bert, mlp):
    """A batch-1 model refuses the whole evaluation set in one call; chunked at its batch it gets a reference."""
    import onnxruntime as ort

    model, eval_set = bert
    loaded = load_model("bert", model, eval_set)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, loaded.eval_inputs)
    ref, evaluator = reference_outputs(model, loaded.eval_inputs, 1)
    assert ref.shape == (12, CLASSES) and evaluator.startswith("onnxruntime")
    assert (ref.argmax(axis=1) == loaded.eval_y).all()
    # a dynamic-batch model: the last chunk is padded and trimmed; rows do not depend on the chunking
    mlp_model = load_model("mlp", *mlp, outputs=["probabilities"])
    one_call = reference_outputs(mlp_model.path, mlp_model.eval_inputs, 30)[0]
    chunked = reference_outputs(mlp_model.path, mlp_model.eval_inputs, 7)[0]
    assert chunked.shape == (30, 3) and np.allclose(chunked, one_call, atol=1e-6)


def test_outputs_cut_the_graph(mlp, tmp_path):
    import onnx

    from harness.compile.tvm_adapter import check_importable

    model, eval_set = mlp
    with pytest.raises(HarnessError) as err:
        check_importable(onnx.load(str(model)), "mlp")
    assert "ArrayFeatureExtractor (feeds output 'label')" in str(err.value)
    assert 'outputs = ["probabilities"]' in str(err.value)
    loaded = load_model("mlp", model, eval_set, outputs=["probabilities"])
    assert loaded.outputs == ("probabilities",) and loaded.path != model and loaded.inputs[0].name == "X"
    check_importable(onnx.load(str(loaded.path)), "mlp")
    # skl2onnx's default export wraps the probabilities in a ZipMap: the suggestion is the tensor inside
    zipmap, _ = sklearn_mlp(tmp_path, zipmap=True)
    with pytest.raises(HarnessError) as err:
        check_importable(onnx.load(str(zipmap)), "mlp")
    keep = json.loads(re.search(r"outputs = (\[.*?\])", str(err.value)).group(1))
    assert keep[0] == "out_activations_result" and "ZipMap (feeds output 'output_probability')" in str(err.value)
    cut = load_model("mlp", zipmap, eval_set, outputs=keep[:1])
    check_importable(onnx.load(str(cut.path)), "mlp")
    assert np.allclose(reference_outputs(cut.path, cut.eval_inputs, 30)[0].sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(HarnessError, match="outputs names 'probs', which the graph does not have; its outputs: "
                                           "label, probabilities"):
        load_model("mlp", model, eval_set, outputs=["probs"])


def test_build_key_covers_every_input():
    from harness.compile.cache import BuildRequest, build_key

    ids = InputSpec("input_ids", "int64", (1, 16))
    base = BuildRequest(Path("m.onnx"), "abc", (ids, InputSpec("attention_mask", "int64", (1, 16))), {"kind": "llvm"})
    others = [(ids, InputSpec("attention_mask", "int32", (1, 16))),
              (ids, InputSpec("attention_mask", "int64", (1, 32))),
              (ids, InputSpec("token_type_ids", "int64", (1, 16))), (ids,)]
    keys = {build_key(base, "0.27")} | {build_key(BuildRequest(base.onnx_path, "abc", o, base.target), "0.27")
                                        for o in others}
    assert len(keys) == 5
    assert len({base.survey_key} | {BuildRequest(base.onnx_path, "abc", o, base.target).survey_key
                                    for o in others}) == 5


# ---------------------------------------------------------------------------------------------------------------
# end to end through the CLI: real compiles, the real runner, the store


def _rows(db: Path):
    from harness.store import ResultStore

    store = ResultStore(db)
    try:
        (run,) = store.list_runs()
        return store.results(run["run_id"])
    finally:
        store.close()


def _checked(rows, n: int):
    """Every row measured (no ERROR) and its outputs checked against the reference evaluation of its variant."""
    assert len(rows) == n
    for row in rows:
        assert row.verdict != "ERROR" and not row.error, (row.variant_key, row.error)
        assert not any("reference" in r for r in row.reasons), (row.variant_key, row.reasons)
        assert row.ref_max_abs_err is not None and row.ref_max_abs_err < 1e-3, row.variant_key
    return {(r.method, r.sparsity_target, r.batch): r for r in rows}


def test_bert_stub_with_ids_and_mask_at_batch_1(bert, tmp_path):
    model, eval_set = bert
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.9),
                       methods=("block:8x1",), min_runs=10, min_s=0.02, name="bert")
    proc = sparsebench("run", str(cfg), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = _checked(_rows(db), 2)
    assert rows[("dense", 0.0, 1)].accuracy == 1.0  # the labels are the model's own predictions
    sparse = rows[("block", 0.9, 1)]
    assert sparse.top1_agreement is not None and sparse.max_abs_err > 0
    by_weight = {layer.weight: layer for layer in sparse.layers}
    assert 0.85 < by_weight["w1"].sparsity_actual < 0.95
    # the FFN's MatMuls on 3-D activations [1, seq, hidden] get our kernels (the one measured fastest here)
    assert all(by_weight[w].kernel in ("dense", "bsr", "nm") and by_weight[w].choice == "measured"
               for w in ("w1", "w2", "w_cls")), sparse.layers


def test_sklearn_classifier_keeps_its_probabilities(mlp, tmp_path):
    model, eval_set = mlp
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.5),
                       methods=("unstructured",), batch=(4,), min_runs=10, min_s=0.02, name="mlp",
                       model_extra='outputs = ["probabilities"]')
    proc = sparsebench("run", str(cfg), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = _checked(_rows(db), 2)  # 30 rows at batch 4: the last chunk padded, on the board and in the reference
    assert rows[("dense", 0.0, 4)].accuracy > 0.6  # quality of the first kept output (probabilities) vs labels


def test_float16_bool_int32_inputs_without_an_evaluation_set(tmp_path):
    model = mixed_inputs(tmp_path / "mixed.onnx")
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=None, db=db, levels=(0,), methods=(),
                       batch=(2,), min_runs=10, min_s=0.02, name="mixed",
                       model_extra='shapes = {ids = ["N", 3]}\nvocab = {ids = 10}')
    proc = sparsebench("run", str(cfg), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    _checked(_rows(db), 1)


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line naming the model, the thing and the fix; exit 2; nothing compiled


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("sparsebench: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "compile" not in proc.stderr.replace(lines[0], ""), proc.stderr
    return lines[0]


def _bad_eval(folder: Path, **arrays) -> Path:
    path = folder / "bad.npz"
    np.savez(path, **arrays)
    return path


def test_bad_inputs_are_one_line_each(bert, mlp, tmp_path):
    model, eval_set = bert
    good = dict(np.load(eval_set))
    ids, mask = good["input_ids"], good["attention_mask"]

    def run(eval_path=None, model_path=model, name="bert", **kw):
        cfg = write_config(tmp_path / "c.toml", model=model_path, eval_set=eval_path, db=tmp_path / "r.db",
                           levels=(0,), methods=(), name=name, **kw)
        return _one_error_line(sparsebench("run", str(cfg)))

    line = run(_bad_eval(tmp_path, input_ids=ids))
    assert "model bert" in line and "no array 'attention_mask' for input 'attention_mask'" in line
    assert "has: input_ids" in line and "numpy.savez" in line and "attention_mask=..." in line

    line = run(_bad_eval(tmp_path, input_ids=ids.astype(np.float32), attention_mask=mask))
    assert "model bert: input 'input_ids' expects [1, sequence] int64" in line
    assert "[N=12, 16] float32" in line and "save it as int64" in line

    line = run(_bad_eval(tmp_path, input_ids=ids[:, :8], attention_mask=mask))
    assert "model bert" in line and "dim 'sequence' is 8 for input 'input_ids' but 16 for input 'attention_mask'" \
        in line

    line = run(_bad_eval(tmp_path, input_ids=ids[:, None], attention_mask=mask))
    assert "input 'input_ids' expects [1, sequence] int64" in line and "[N=12, 1, 16] int64" in line

    line = run(None)  # no evaluation set: nothing sizes the sequence
    assert "model bert: input 'input_ids' dim 1 ('sequence'), input 'attention_mask' dim 1 ('sequence') are " \
           "dynamic" in line
    assert 'shapes = {input_ids = [1, 128], attention_mask = [1, 128]}' in line

    line = run(eval_set, batch=(4,))
    assert "model bert: input 'input_ids' has a fixed batch of 1, cannot run batch 4; use batch = [1]" in line

    line = run(None, model_extra='shapes = {input_ids = [1, 16], attention_mask = [1, 16], ids = [1, 2]}')
    assert "model bert: shapes names input(s) 'ids' the model does not have; its inputs: input_ids, attention_mask" \
        in line
    line = run(None, model_extra='shapes = {input_ids = [1, "seq"]}')
    assert "models[0] (bert): shapes.input_ids must list the input's dims" in line
    line = run(None, model_extra='vocab = 0')
    assert "models[0] (bert): vocab must be a positive integer" in line

    mlp_model, mlp_eval = mlp
    line = run(mlp_eval, model_path=mlp_model, name="mlp", model_extra='outputs = ["probs"]')
    assert "model mlp: outputs names 'probs', which the graph does not have; its outputs: label, probabilities" \
        in line
    line = run(mlp_eval, model_path=mlp_model, name="mlp")
    assert "model mlp: operator(s) ArrayFeatureExtractor (feeds output 'label') not supported" in line
    assert 'outputs = ["probabilities"]' in line
    line = run(_bad_eval(tmp_path, x=(np.load(mlp_eval)["x"] * 10).astype(np.int64)), model_path=mlp_model,
               name="mlp", model_extra='outputs = ["probabilities"]')
    assert "model mlp: input 'X' expects [N, 8] float32" in line and "int64" in line and "after scaling" in line
