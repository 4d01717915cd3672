"""Tests of schedules/generic.py and schedules/graph_fastmath.py: every operator the rewrite leaves to TVM gets a
CPU schedule, outputs match onnxruntime, a function no rule takes still compiles (real TVM builds of small ONNX
graphs)."""

from __future__ import annotations

import platform

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from harness.compile import tvm_adapter  # noqa: E402
from harness.models.fold import fold_static  # noqa: E402
from schedules import rewrite_module  # noqa: E402
from schedules.cpu import cpu_info  # noqa: E402
from schedules.generic import ScheduleReport, cpu_pipeline, schedule_func  # noqa: E402
from schedules.graph_fastmath import use_fast_math  # noqa: E402

# the host's own vector width: SSE2 code runs on every x86-64 machine
HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3", "mattr": ["+avx2", "+fma"], "num-cores": 2}
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}
on_x86 = pytest.mark.skipif(platform.machine() != "x86_64", reason="runs x86-64 code")


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _info(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _compile_and_run(model, feeds, target=HOST, rewrite=True):
    """(outputs, ScheduleReport) of our CPU pipeline on `model`, and onnxruntime's outputs."""
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    dtypes = {k: str(v.dtype) for k, v in feeds.items()}
    mod = from_onnx(fold_static(model, shapes, dtypes), shape_dict=shapes, dtype_dict=dtypes,
                    keep_params_in_input=False)
    tgt = tvm_adapter.make_target(target)
    if rewrite:
        mod, _ = rewrite_module(mod, tgt)
    report = ScheduleReport()
    ex = tvm.compile(mod, target=tgt, relax_pipeline=cpu_pipeline(tgt, report))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    outs = [o.numpy() for o in out] if isinstance(out, (list, tuple)) or not hasattr(out, "numpy") else [out.numpy()]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return outs, ref, report


def _close(outs, ref, rtol=1e-5):
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r, rtol=rtol, atol=rtol * max(1.0, float(np.abs(r).max())))


@on_x86
def test_elementwise_chain_transpose_gelu_clip():
    """Add, ReLU, transpose, erf-GELU, Clip and a cast: every function scheduled, outputs as onnxruntime's."""
    rng = np.random.default_rng(0)
    bias = numpy_helper.from_array(rng.normal(size=(32,)).astype(np.float32), "bias")
    lo, hi = numpy_helper.from_array(np.float32(-1.5), "lo"), numpy_helper.from_array(np.float32(2.0), "hi")
    half, root = numpy_helper.from_array(np.float32(0.5), "half"), numpy_helper.from_array(np.float32(2 ** -0.5), "r")
    one = numpy_helper.from_array(np.float32(1.0), "one")
    nodes = [helper.make_node("Add", ["x", "bias"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Transpose", ["b"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Mul", ["t", "r"], ["s"]), helper.make_node("Erf", ["s"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["t", "e1"], ["g0"]),
             helper.make_node("Mul", ["g0", "half"], ["g"]), helper.make_node("Clip", ["g", "lo", "hi"], ["y"]),
             helper.make_node("Tanh", ["x"], ["z"])]
    model = _model(nodes, [_info("x", [2, 24, 32])], [_info("y", [2, 32, 24]), _info("z", [2, 24, 32])],
                   [bias, lo, hi, half, root, one])
    outs, ref, report = _compile_and_run(model, {"x": rng.normal(size=(2, 24, 32)).astype(np.float32) * 3})
    _close(outs, ref)
    assert report.rules and None not in report.rules.values(), report.rules


@on_x86
def test_softmax_and_layer_norm_are_row_reductions():
    rng = np.random.default_rng(1)
    scale = numpy_helper.from_array(rng.normal(size=(64,)).astype(np.float32), "scale")
    shift = numpy_helper.from_array(rng.normal(size=(64,)).astype(np.float32), "shift")
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=-1),
             helper.make_node("LayerNormalization", ["x", "scale", "shift"], ["n"], axis=-1, epsilon=1e-5)]
    model = _model(nodes, [_info("x", [2, 16, 64])], [_info("s", [2, 16, 64]), _info("n", [2, 16, 64])],
                   [scale, shift])
    x = (rng.normal(size=(2, 16, 64)) * 4).astype(np.float32)
    outs, ref, report = _compile_and_run(model, {"x": x})
    _close(outs, ref, rtol=2e-5)
    assert set(report.rules.values()) == {"row_reduction"}, report.rules


@on_x86
@pytest.mark.parametrize("target", [HOST, pytest.param(AVX2, id="avx2")])
def test_attention_matmuls_of_two_activations(target):
    """Q.K^T (+ mask) and P.V, batched over heads: the matmul rule's register tiles, any vector width."""
    if "avx2" in target.get("mattr", []) and "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("host cannot run AVX2 code")
    rng = np.random.default_rng(2)
    mask = numpy_helper.from_array(rng.normal(size=(1, 1, 32, 32)).astype(np.float32), "mask")
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s0"]), helper.make_node("Add", ["s0", "mask"], ["s"]),
             helper.make_node("MatMul", ["s", "v"], ["y"])]
    model = _model(nodes, [_info("q", [1, 2, 32, 16]), _info("k", [1, 2, 16, 32]), _info("v", [1, 2, 32, 16])],
                   [_info("y", [1, 2, 32, 16])], [mask])
    feeds = {name: rng.normal(size=shape).astype(np.float32)
             for name, shape in (("q", (1, 2, 32, 16)), ("k", (1, 2, 16, 32)), ("v", (1, 2, 32, 16)))}
    outs, ref, report = _compile_and_run(model, feeds, target)
    _close(outs, ref, rtol=1e-4)
    assert report.counts()["matmul"] == 2, report.rules


@on_x86
def test_pooling_and_residual():
    """Max pool (padded), residual add + ReLU, global average pool: the CNN parts around the convolutions."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["p", "r"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("GlobalAveragePool", ["b"], ["y"])]
    model = _model(nodes, [_info("x", [1, 8, 32, 32]), _info("r", [1, 8, 16, 16])], [_info("y", [1, 8, 1, 1])])
    feeds = {"x": rng.normal(size=(1, 8, 32, 32)).astype(np.float32),
             "r": rng.normal(size=(1, 8, 16, 16)).astype(np.float32)}
    outs, ref, report = _compile_and_run(model, feeds)
    _close(outs, ref)
    assert None not in report.rules.values(), report.rules


def test_aarch64_cross_compile_schedules_everything():
    """The pass reads the vector width from the target (NEON: 4 lanes), never from the host."""
    rng = np.random.default_rng(4)
    scale = numpy_helper.from_array(np.ones(64, np.float32), "scale")
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("LayerNormalization", ["p", "scale"], ["y"], axis=-1)]
    model = _model(nodes, [_info("q", [1, 2, 64, 16]), _info("k", [1, 2, 16, 64])], [_info("y", [1, 2, 64, 64])],
                   [scale])
    del rng
    mod = from_onnx(model, shape_dict={"q": [1, 2, 64, 16], "k": [1, 2, 16, 64]}, keep_params_in_input=False)
    target = tvm_adapter.make_target(AARCH64)
    assert cpu_info(target).lanes == 4
    report = ScheduleReport()
    ex = tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target, report))
    assert ex is not None
    assert report.counts()["matmul"] == 1 and None not in report.rules.values(), report.rules


def test_tvm_compile_uses_the_cpu_pipeline_only_for_llvm(monkeypatch):
    """An LLVM target gets our pipeline through the adapter; a CUDA target keeps TVM's (dlight GPU rules)."""
    import schedules.generic as generic

    seen = []
    real = generic.cpu_pipeline
    monkeypatch.setattr(generic, "cpu_pipeline", lambda target, report=None: seen.append(target) or real(target))
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    mod = from_onnx(_model(nodes, [_info("x", [4, 16])], [_info("y", [4, 16])]), keep_params_in_input=False)
    tvm_adapter.tvm_compile(mod, HOST)
    assert len(seen) == 1
    tvm_adapter.tvm_compile(mod, {"kind": "cuda", "arch": "sm_87", "host": HOST})
    assert len(seen) == 1


def test_a_function_no_rule_takes_is_left_unscheduled_and_still_compiles():
    """A loop nest without blocks (dlight's analysis refuses it) stays as written; the compile does not fail."""
    from tvm.script import tirx as T

    @T.prim_func
    def opaque(x: T.Buffer((16,), "float32"), y: T.Buffer((16,), "float32")):
        for i in range(16):
            y[i] = x[i] * T.float32(2)

    scheduled, rule = schedule_func(opaque, cpu_info(tvm_adapter.make_target(HOST)))
    assert scheduled is None and rule is None
    lib = tvm.compile(opaque, target=tvm_adapter.make_target(HOST))
    x = np.arange(16, dtype=np.float32)
    y = tvm.runtime.tensor(np.zeros(16, np.float32))
    lib["opaque"](tvm.runtime.tensor(x), y)
    np.testing.assert_array_equal(y.numpy(), 2 * x)


def test_fast_math_matches_libm():
    """The polynomial exp / erf / tanh / sigmoid stay within 1e-6 relative of numpy / the erf series."""
    from math import erf

    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def f(a: T.Buffer((256,), "float32"), e: T.Buffer((256,), "float32"), r: T.Buffer((256,), "float32"),
          t: T.Buffer((256,), "float32"), s: T.Buffer((256,), "float32")):
        for i in range(256):
            with T.sblock("b"):
                v = T.axis.spatial(256, i)
                e[v] = T.exp(a[v])
                r[v] = T.erf(a[v])
                t[v] = T.tanh(a[v])
                s[v] = T.sigmoid(a[v])

    fast = use_fast_math(f)
    assert "T.exp" not in fast.script() and "T.erf" not in fast.script()
    lib = tvm.compile(fast, target="llvm")
    a = np.linspace(-12, 12, 256).astype(np.float32)
    outs = [tvm.runtime.tensor(np.zeros(256, np.float32)) for _ in range(4)]
    lib["f"](tvm.runtime.tensor(a), *outs)
    x = a.astype(np.float64)
    refs = [np.exp(x), np.array([erf(v) for v in x]), np.tanh(x), 1 / (1 + np.exp(-x))]
    for out, ref in zip(outs, refs):
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-7)
