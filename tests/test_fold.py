"""Tests of harness/models/fold.py: shape arithmetic folds to constants at static shapes, weights keep their names
and values, outputs equal the original's (onnxruntime), and the folded model imports into TVM."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from harness.models.fold import MAX_FOLDED_ELEMENTS, fold_static  # noqa: E402


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _mask_model(big: int = 0):
    """What torch exports for an attention mask and a reshape: Shape -> Gather -> Unsqueeze -> Concat ->
    ConstantOfShape / Reshape, around a MatMul with a weight initializer ``w`` [16, 16] (and, with ``big``, an
    Expand to [big, 16] from a constant)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "zero_axes"], ["b1"]),
             helper.make_node("Unsqueeze", ["seq", "zero_axes"], ["s1"]),
             helper.make_node("Constant", [], ["zero_axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Concat", ["b1", "s1"], ["bs"], axis=0),
             helper.make_node("ConstantOfShape", ["bs"], ["ones"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Concat", ["b1", "s1", "minus1"], ["shape3"], axis=0),
             helper.make_node("Reshape", ["h", "shape3"], ["h3"]),
             helper.make_node("Unsqueeze", ["ones", "two"], ["ones3"]),
             helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array([2], np.int64))),
             helper.make_node("Mul", ["h3", "ones3"], ["y"])]
    # topological order for onnxruntime: constants first
    nodes = [n for n in nodes if n.op_type == "Constant"] + [n for n in nodes if n.op_type != "Constant"]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if big:
        inits.append(numpy_helper.from_array(np.array([big, 16], np.int64), "big_shape"))
        inits.append(numpy_helper.from_array(np.ones((1, 16), np.float32), "row"))
        nodes.append(helper.make_node("Expand", ["row", "big_shape"], ["big"]))
        outputs.append(helper.make_tensor_value_info("big", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 16])],
                              outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_arithmetic_folds_and_outputs_match():
    model = _mask_model()
    folded = fold_static(model, {"x": [2, 5, 16]}, {"x": "float32"})
    ops = {node.op_type for node in folded.graph.node}
    assert not ops & {"Shape", "Gather", "Concat", "ConstantOfShape", "Unsqueeze"}, ops
    assert [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim] == [2, 5, 16]
    x = np.random.default_rng(1).normal(size=(2, 5, 16)).astype(np.float32)
    np.testing.assert_array_equal(_run(folded, {"x": x})[0], _run(model, {"x": x})[0])


def test_weights_keep_their_names_and_values_and_the_input_model_is_untouched():
    model = _mask_model()
    before = model.SerializeToString()
    folded = fold_static(model, {"x": [1, 3, 16]})
    assert model.SerializeToString() == before
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) >= 2}
    kept = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    for name, value in weights.items():
        np.testing.assert_array_equal(kept[name], value)
    assert any(node.op_type == "MatMul" and "w" in node.input for node in folded.graph.node)


def test_large_results_stay_computed():
    """A constant result over MAX_FOLDED_ELEMENTS would bloat the model: it is left to run time."""
    big = MAX_FOLDED_ELEMENTS // 16 + 1
    folded = fold_static(_mask_model(big=big), {"x": [1, 3, 16]})
    assert any(node.op_type == "Expand" for node in folded.graph.node)
    assert all(numpy_helper.to_array(i).size <= MAX_FOLDED_ELEMENTS or i.name == "w" for i in folded.graph.initializer)


def test_wrong_dtype_is_refused():
    with pytest.raises(ValueError, match="float32"):
        fold_static(_mask_model(), {"x": [1, 3, 16]}, {"x": "int64"})


def test_folded_model_imports_into_tvm_and_matches():
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = _mask_model()
    x = np.random.default_rng(2).normal(size=(2, 4, 16)).astype(np.float32)
    mod = from_onnx(fold_static(model, {"x": [2, 4, 16]}), shape_dict={"x": [2, 4, 16]}, keep_params_in_input=False)
    ex = tvm.compile(mod, target="llvm")
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    np.testing.assert_allclose(out.numpy(), _run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_hf_bert_legacy_export_folds_imports_and_matches(tmp_path):
    """A HF transformers BertModel through the legacy torch.onnx exporter (what TVM's importer failed on at
    ConstantOfShape): folded outputs equal the original's in onnxruntime, and the TVM build matches them."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    bert = transformers.BertModel(config).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = bert

        def forward(self, input_ids, attention_mask):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state, out.pooler_output

    ids = torch.randint(0, 100, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.int64)
    path = tmp_path / "bert.onnx"
    torch.onnx.export(Wrapped(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state", "pooler_output"], dynamo=False)
    model = onnx.load(str(path))
    shapes = {"input_ids": [1, 16], "attention_mask": [1, 16]}
    folded = fold_static(model, shapes, {"input_ids": "int64", "attention_mask": "int64"})
    assert not {n.op_type for n in folded.graph.node} & {"Shape", "ConstantOfShape"}
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy().copy()}
    feeds["attention_mask"][0, 12:] = 0
    ref = _run(model, feeds)
    for a, b in zip(_run(folded, feeds), ref):
        np.testing.assert_array_equal(a, b)
    mod = from_onnx(folded, shape_dict=shapes, dtype_dict={k: "int64" for k in shapes}, keep_params_in_input=False)
    ex = tvm.compile(mod, target="llvm")
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-4)
