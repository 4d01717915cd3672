"""Convolutions through the rewrite (real TVM builds, small shapes): im2col + our matmul kernels for any
kernel size, stride, padding and dilation, the depthwise kernel, bias/ReLU fused into the kernels, sparse
weights, the 3-D matmul epilogue, and one record per conv in program order; checked against onnxruntime."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from harness.config import cpuinfo_flags

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from harness.sparsify.prune import prune_matrix  # noqa: E402
from schedules import rewrite_module  # noqa: E402

AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3", "mattr": ["+avx2", "+fma"], "num-cores": 2}



pytestmark = pytest.mark.skipif(platform.machine() != "x86_64" or not {"avx2", "fma"} <= cpuinfo_flags(),
                                reason="host cannot run x86-64-v3 code")


def _conv_model(x_shape, weight, bias, *, relu=True, **attrs) -> onnx.ModelProto:
    """x -> Conv(weight, bias, **attrs) [-> Relu], NCHW; output shape left to inference."""
    nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if bias is not None else []), ["c"], **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    inits = [numpy_helper.from_array(weight, "w")] + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _check(model: onnx.ModelProto, x: np.ndarray, rtol: float = 1e-5) -> list[dict]:
    """Rewrite + compile `model`, run it on x, compare with onnxruntime (max error relative to the output's
    largest magnitude); returns the records."""
    mod = from_onnx(model, keep_params_in_input=False)
    new_mod, records = rewrite_module(mod, tvm.target.Target(AVX2))
    vm = relax.VirtualMachine(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= rtol * max(np.abs(ref).max(), 1.0)
    return records


CASES = [  # (x shape, O, kernel, stride, pad, dilation, op name)
    ([1, 3, 9, 11], 8, 3, 1, 1, 1, "conv3x3"),
    ([4, 5, 8, 7], 6, 3, 2, 1, 1, "conv3x3/s2"),
    ([1, 3, 15, 13], 16, 7, 2, 3, 1, "conv7x7/s2"),
    ([2, 8, 9, 9], 12, 1, 2, 0, 1, "conv1x1/s2"),
    ([1, 4, 6, 6], 5, 3, 1, 0, 1, "conv3x3"),
    ([1, 4, 9, 9], 5, 3, 1, 2, 2, "conv3x3/d2"),
    ([4, 16, 5, 5], 24, 1, 1, 0, 1, "conv1x1"),
    ([1, 3, 8, 8], 4, 2, 2, 0, 1, "conv2x2/s2"),  # a patch embedding: colsT has as many elements as x
]


@pytest.mark.parametrize(("x_shape", "o", "k", "stride", "pad", "dil", "op"), CASES)
def test_dense_conv_matches_onnxruntime(x_shape, o, k, stride, pad, dil, op):
    rng = np.random.default_rng(1)
    c = x_shape[1]
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    model = _conv_model(x_shape, w, b, kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4,
                        dilations=[dil] * 2)
    records = _check(model, rng.standard_normal(x_shape).astype(np.float32))
    ho = (x_shape[2] + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (x_shape[3] + 2 * pad - dil * (k - 1) - 1) // stride + 1
    assert [(r["op"], r["kernel"], r["shape"], r["batch"], r["epilogue"]) for r in records] == [
        (op, "dense", [o, c * k * k], x_shape[0] * ho * wo, "bias+relu")]


def test_asymmetric_padding_no_bias_no_relu():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 3, 3, 2)).astype(np.float32)
    model = _conv_model([2, 3, 8, 7], w, None, relu=False, kernel_shape=[3, 2], strides=[1, 2], pads=[0, 1, 2, 0])
    records = _check(model, rng.standard_normal((2, 3, 8, 7)).astype(np.float32))
    assert [(r["op"], r["epilogue"]) for r in records] == [("conv3x2/s1x2", None)]


@pytest.mark.parametrize("block", [(16, 1), (1, 1)])
def test_sparse_conv3x3(block):
    """A 90 % sparse 3x3 conv ([O, C*9] pruned in blocks) runs through the BSR kernel, bias and ReLU fused."""
    rng = np.random.default_rng(3)
    w2 = prune_matrix(rng.standard_normal((32, 16 * 9)).astype(np.float32), 0.9, block)
    b = rng.standard_normal(32).astype(np.float32)
    model = _conv_model([2, 16, 7, 6], w2.reshape(32, 16, 3, 3), b, kernel_shape=[3, 3], strides=[2, 2],
                        pads=[1, 1, 1, 1])
    records = _check(model, rng.standard_normal((2, 16, 7, 6)).astype(np.float32))
    assert [(r["op"], r["kernel"], r["epilogue"]) for r in records] == [("conv3x3/s2", "bsr", "bias+relu")]
    assert records[0]["density"] <= 0.11


@pytest.mark.parametrize(("x_shape", "stride"), [([1, 8, 9, 9], 1), ([2, 8, 13, 11], 2), ([1, 24, 40, 37], 1)])
def test_depthwise(x_shape, stride):
    rng = np.random.default_rng(4)
    c = x_shape[1]
    w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    model = _conv_model(x_shape, w, b, kernel_shape=[3, 3], strides=[stride] * 2, pads=[1] * 4, group=c)
    records = _check(model, rng.standard_normal(x_shape).astype(np.float32))
    op = "depthwise3x3" + ("/s2" if stride == 2 else "")
    assert [(r["op"], r["kernel"], r["shape"], r["epilogue"]) for r in records] == [(op, "dense", [c, 9],
                                                                                    "bias+relu")]


def test_grouped_conv_stays_with_tvm():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 2, 3, 3)).astype(np.float32)
    model = _conv_model([1, 4, 6, 6], w, np.zeros(8, np.float32), kernel_shape=[3, 3], pads=[1] * 4, group=2)
    records = _check(model, rng.standard_normal((1, 4, 6, 6)).astype(np.float32))
    assert [(r["op"], r["kernel"], r["shape"]) for r in records] == [("conv3x3 (grouped)", "default", [8, 18])]


def test_records_one_per_layer_in_order():
    """conv -> depthwise -> grouped (TVM) -> conv 1x1: four records in program order, each with its op."""
    rng = np.random.default_rng(6)
    ws = {"w0": rng.standard_normal((8, 3, 3, 3)), "w1": rng.standard_normal((8, 1, 3, 3)),
          "w2": rng.standard_normal((8, 4, 1, 1)), "w3": rng.standard_normal((4, 8, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
             helper.make_node("Conv", ["a", "w1"], ["b"], kernel_shape=[3, 3], pads=[1] * 4, group=8),
             helper.make_node("Conv", ["b", "w2"], ["c"], kernel_shape=[1, 1], group=2),
             helper.make_node("Conv", ["c", "w3"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in ws.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    records = _check(model, rng.standard_normal((1, 3, 10, 10)).astype(np.float32))
    assert [(r["layer"], r["op"], r["kernel"]) for r in records] == [
        (0, "conv3x3/s2", "dense"), (1, "depthwise3x3", "dense"), (2, "conv1x1 (grouped)", "default"),
        (3, "conv1x1", "dense")]


def test_matmul_3d_bias_relu_fused():
    """MatMul(x[B, S, K], W) + b -> Relu on 3-D activations: bias and ReLU in the kernel's store."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((32, 24)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    records = _check(model, rng.standard_normal((2, 5, 32)).astype(np.float32))
    assert [(r["kernel"], r["batch"], r["epilogue"]) for r in records] == [("dense", 10, "bias+relu")]


def test_bias_broadcast_along_width_is_not_fused():
    """add(conv, b[O]) on NCHW broadcasts along W, not the channel: it stays a separate add."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Add", ["c", "b"], ["y"])]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    records = _check(model, rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    assert records[0]["epilogue"] is None


def test_depthwise_and_pointwise_relu6_fused():
    """Conv -> Clip(0, 6) (ReLU6, MobileNet) on a depthwise and a 1x1 conv: the clip moves into both kernels."""
    rng = np.random.default_rng(9)
    ws = {"w0": rng.standard_normal((8, 1, 3, 3)), "b0": rng.standard_normal(8),
          "w1": rng.standard_normal((16, 8, 1, 1)), "b1": rng.standard_normal(16)}
    lo, hi = np.array(0.0, np.float32), np.array(6.0, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4,
                              group=8),
             helper.make_node("Clip", ["a", "lo", "hi"], ["b"]),
             helper.make_node("Conv", ["b", "w1", "b1"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in ws.items()]
    inits += [numpy_helper.from_array(lo, "lo"), numpy_helper.from_array(hi, "hi")]
    graph = helper.make_graph(nodes, "mb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 11, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    records = _check(model, 3 * rng.standard_normal((1, 8, 11, 10)).astype(np.float32))
    assert [(r["op"], r["epilogue"]) for r in records] == [("depthwise3x3/s2", "bias+relu6"), ("conv1x1", "bias+relu6")]


def test_survey_sees_convs_and_records_carry_weight_names():
    """The kernel survey is asked about every conv's [O, C*kh*kw] weight at batch B*Ho*Wo, with its (B, Ho*Wo)
    (the depthwise kernel has no alternatives: not surveyed), and records are joined to initializer names by that
    view."""
    from harness.compile.tvm_adapter import weight_names
    from schedules.choose import SurveyChooser

    rng = np.random.default_rng(10)
    ws = {"stem": rng.standard_normal((8, 3, 3, 3)), "dw": rng.standard_normal((8, 1, 3, 3)),
          "pw": rng.standard_normal((16, 8, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "stem"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
             helper.make_node("Conv", ["a", "dw"], ["b"], kernel_shape=[3, 3], pads=[1] * 4, group=8),
             helper.make_node("Conv", ["b", "pw"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in ws.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod = from_onnx(model, keep_params_in_input=False)
    survey = SurveyChooser()
    rewrite_module(mod, tvm.target.Target(AVX2), chooser=survey, survey_only=True)
    # with each conv's (images, pixels): the selection step times the conv_nchw kernel the rewrite will emit
    assert [(list(w.shape), m, conv) for w, m, _, conv in survey.layers.values()] == [([8, 27], 32, (2, 16)),
                                                                                      ([16, 8], 32, (2, 16))]
    _, records = rewrite_module(mod, tvm.target.Target(AVX2), names=weight_names(model))
    assert [(r["weight"], r["op"]) for r in records] == [("stem", "conv3x3/s2"), ("dw", "depthwise3x3"),
                                                        ("pw", "conv1x1")]


@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_nhwc_conv3x3_strided(sparsity):
    """NHWC (OHWI kernel), 3x3 stride 2: im2col rows + our matmul kernels, output straight in NHWC."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    w2 = prune_matrix(rng.standard_normal((16, 8 * 9)).astype(np.float32), sparsity, (8, 1))
    w_oihw = w2.reshape(16, 8, 3, 3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 9, 7, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(np.ascontiguousarray(w_oihw.transpose(0, 2, 3, 1))),
                                           strides=2, padding=1, data_layout="NHWC", kernel_layout="OHWI"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    new_mod, records = rewrite_module(bb.get(), tvm.target.Target(AVX2))
    assert [(r["op"], r["kernel"], r["shape"], r["batch"]) for r in records] == [
        ("conv3x3/s2", "bsr" if sparsity else "dense", [16, 72], 2 * 5 * 4)]
    xv = rng.standard_normal((2, 9, 7, 8)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(xv)).numpy()
    ref = torch.nn.functional.conv2d(torch.from_numpy(xv.transpose(0, 3, 1, 2)), torch.from_numpy(w_oihw), stride=2,
                                     padding=1).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_selection_times_the_conv_kernel_that_runs(tmp_path):
    """The timing bundle of an NCHW conv layer holds conv_nchw's kernel on x [B, K, P] (not the row-major matmul of
    the same M), and it computes the conv's GEMM."""
    from schedules.bundle import timing_bundle
    from schedules.cpu import cpu_info

    rng = np.random.default_rng(4)
    w = rng.standard_normal((16, 27)).astype(np.float32)
    w[:, ::3] = 0
    cpu = cpu_info(tvm.target.Target(AVX2))
    mod, arrays, specs = timing_bundle([("a", ("dense", None), w, 32, (2, 16)), ("b", ("bsr", (16, 1)), w, 32,
                                                                              (2, 16))], cpu)
    assert [s["out"] for s in specs] == [[[2, 16, 16], "float32"]] * 2 and arrays[specs[0]["args"][0]].shape == (2, 27, 16)
    lib = tvm.compile(mod, target=tvm.target.Target(AVX2))
    for spec in specs:
        args = [tvm.runtime.tensor(arrays[a]) for a in spec["args"]]
        out = tvm.runtime.tensor(np.zeros(spec["out"][0], np.float32))
        lib[spec["func"]](*args, out)
        x = arrays[spec["args"][0]]
        weight = np.full_like(w, 0.5) * (w != 0) if spec["id"] == "b" else np.full_like(w, 0.5)
        np.testing.assert_allclose(out.numpy(), np.einsum("ok,bkp->bop", weight, x), rtol=1e-4, atol=1e-4)
