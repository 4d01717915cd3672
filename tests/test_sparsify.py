"""Magnitude pruning: reached sparsity, block structure, layer selection, every ONNX weight layout."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness.config import Method
from harness.errors import HarnessError
from harness.sparsify import make_variant, prune_matrix


@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4), (8, 1)])
@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_prune_matrix_reaches_level_in_blocks(block, level):
    w = np.random.default_rng(0).normal(size=(100, 70)).astype(np.float32)  # not multiples of the block
    p = prune_matrix(w, level, block)
    assert abs((p == 0).mean() - level) < 0.03
    r, c = block
    # every block is all-zero or untouched
    for i in range(0, 100, r):
        for j in range(0, 70, c):
            blk, orig = p[i:i + r, j:j + c], w[i:i + r, j:j + c]
            assert (blk == 0).all() or np.array_equal(blk, orig)


def test_prune_keeps_largest_magnitudes():
    w = np.arange(1, 11, dtype=np.float32).reshape(1, 10)
    assert np.array_equal(prune_matrix(w, 0.5), [[0, 0, 0, 0, 0, 6, 7, 8, 9, 10]])


def test_variant_records_per_layer_and_respects_first_last(small_model, tmp_path):
    model_path, _ = small_model
    v = make_variant("small", model_path, Method("block", (8, 1)), 0.9, tmp_path, prune_first=False, prune_last=False)
    assert [l.pruned for l in v.layers] == [False, True, False]
    assert [l.weight for l in v.layers] == ["fc0.weight", "fc1.weight", "fc2.weight"]  # the compiler join's key
    assert v.layers[1].sparsity_target == 0.9 and abs(v.layers[1].sparsity_actual - 0.9) < 0.02
    assert v.layers[0].sparsity_actual == 0.0
    assert v.key == "small/block-8x1/0.9" and v.block_str == "8x1"
    # the ONNX on disk holds exactly what the record says
    model = onnx.load(str(v.onnx_path))
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "fc1.weight"))
    assert (w == 0).mean() == pytest.approx(v.layers[1].sparsity_actual)
    dense = make_variant("small", model_path, Method("unstructured"), 0.0, tmp_path)
    assert dense.method == "dense" and dense.sparsity_actual == 0.0


def test_matmul_layout_is_pruned_along_the_right_axis(tmp_path):
    from onnx import TensorProto, helper

    w = np.random.default_rng(1).normal(size=(32, 16)).astype(np.float32)  # MatMul weight [K, N]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(w, "W")])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    v = make_variant("mm", path, Method("block", (4, 1)), 0.75, tmp_path / "out", prune_last=True)
    pruned = numpy_helper.to_array(onnx.load(str(v.onnx_path)).graph.initializer[0])
    assert v.layers[0].shape == (16, 32)
    # 4x1 blocks of the [N, K] view = 4 consecutive output columns of the [K, N] MatMul weight
    blocks = pruned.T.reshape(4, 4, 32)
    assert all((b == 0).all(axis=0).sum() + (b != 0).all(axis=0).sum() == 32 for b in blocks)


def test_sparsity_out_of_range(small_model, tmp_path):
    with pytest.raises(HarnessError, match=r"outside \[0, 1\)"):
        make_variant("small", small_model[0], Method("unstructured"), 1.0, tmp_path)


def test_nm_pruning_keeps_n_largest_per_group(small_model, tmp_path):
    from harness.config import parse_method
    from harness.sparsify.prune import prune_nm

    w = np.array([[1, -5, 2, 3, 9, 0, -1, 8, 4, 1]], dtype=np.float32)  # K=10: groups of 4, last group of 2
    assert np.array_equal(prune_nm(w, 2, 4), [[0, -5, 0, 3, 9, 0, 0, 8, 4, 1]])
    method = parse_method("nm:2:4")
    assert method.fixed_level == 0.5 and method.label == "nm:2:4"
    with pytest.raises(HarnessError, match="0 < N < M"):
        parse_method("nm:4:4")
    v = make_variant("small", small_model[0], method, method.fixed_level, tmp_path, prune_last=True)
    assert v.block_str == "2:4" and v.key == "small/nm-2:4/0.5"
    assert all(abs(l.sparsity_actual - 0.5) < 1e-9 for l in v.layers)
