"""Tests of schedules/: block choice and BSR storage (numpy only), kernel correctness against
numpy (real TVM builds), and the Relax rewrite end to end on small ONNX models."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from harness.config import cpuinfo_flags

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from harness.kernelbench.plan import block_pruned  # noqa: E402
from schedules import bsr, cuda, dense, nm, rewrite_module, sell  # noqa: E402
from schedules.build import build_kernel  # noqa: E402
from schedules.choose import rule_chooser  # noqa: E402
from schedules.cpu import cpu_info  # noqa: E402
from schedules.kernels import make_kernel  # noqa: E402

AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3", "mattr": ["+avx2", "+fma"], "num-cores": 2}
AVX512 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v4", "mattr": ["+avx512f"], "num-cores": 2}
SSE2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}



_FLAGS = cpuinfo_flags() if platform.machine() == "x86_64" else set()
needs_avx2 = pytest.mark.skipif(not {"avx2", "fma"} <= _FLAGS, reason="host cannot run x86-64-v3 code")
needs_avx512 = pytest.mark.skipif("avx512f" not in _FLAGS, reason="host cannot run AVX-512 code")

BLOCKS = [(16, 1), (8, 1), (4, 1), (1, 1), (4, 2)]
BATCHES = [1, 3, 16, 64]


def _assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    """Equal to relative 1e-5 of the output's scale (summation order differs from numpy)."""
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def _weight_cases(block: tuple[int, int]) -> dict[str, np.ndarray]:
    """[N, K] weights with N, K not multiples of the block (K even, for c = 2)."""
    rng = np.random.default_rng(sum(block))
    n, k = 70, 52
    mixed = block_pruned(n, k, block, 0.5, rng)
    mixed[: 2 * block[0]] = 0  # empty block-rows
    mixed[-1] = rng.standard_normal(k)  # a fully dense row
    return {
        "sparse90": block_pruned(n, k, block, 0.9, rng),
        "mixed_rows": mixed,
        "dense": block_pruned(n, k, block, 0.0, rng),
        "sparse99": block_pruned(n, k, block, 0.99, rng),
        "all_zero": np.zeros((n, k), np.float32),
    }


def _run_bsr(target: dict, m: int, weight: np.ndarray, block: tuple[int, int]) -> None:
    target = tvm.target.Target(target)
    matrix = bsr.to_bsr(weight, block)
    tiling = bsr.choose_tiling(m, block, cpu_info(target))
    kernel = build_kernel(bsr.bsr_func(m, matrix, tiling), target)
    x = np.random.default_rng(m).standard_normal((m, weight.shape[1])).astype(np.float32)
    y = tvm.runtime.tensor(np.full((m, weight.shape[0]), np.nan, np.float32))
    kernel(*(tvm.runtime.tensor(a) for a in (x, matrix.data, matrix.indices, matrix.indptr)), y)
    _assert_close(y.numpy(), x.astype(np.float64) @ weight.T.astype(np.float64))


def _run_dense(target: dict, m: int, n: int, k: int) -> None:
    target = tvm.target.Target(target)
    rng = np.random.default_rng(n * k + m)
    weight = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    tiling = dense.choose_tiling(m, cpu_info(target))
    kernel = build_kernel(dense.dense_func(m, n, k, tiling), target)
    y = tvm.runtime.tensor(np.full((m, n), np.nan, np.float32))
    kernel(tvm.runtime.tensor(x), tvm.runtime.tensor(dense.pack_weight(weight, tiling.vn)), y)
    _assert_close(y.numpy(), x.astype(np.float64) @ weight.T.astype(np.float64))


# --- storage and block choice (numpy only) ---------------------------------------------------


@pytest.mark.parametrize("block", [(16, 1), (8, 1), (4, 1)])
def test_choose_block_finds_pruning_block(block):
    weight = block_pruned(96, 64, block, 0.9, np.random.default_rng(1))
    assert bsr.choose_block(weight) == block


def test_choose_block_unstructured_is_1x1():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((64, 64)).astype(np.float32) * (rng.random((64, 64)) > 0.9)
    assert bsr.choose_block(weight) == (1, 1)


def test_choose_block_skips_c_not_dividing_k():
    weight = block_pruned(32, 33, (4, 2), 0.9, np.random.default_rng(3))
    assert bsr.choose_block(weight, candidates=[(4, 2), (1, 1)]) == (1, 1)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("case", ["sparse90", "mixed_rows", "dense", "all_zero"])
def test_to_bsr_round_trip(block, case):
    weight = _weight_cases(block)[case]
    matrix = bsr.to_bsr(weight, block)
    r, c = block
    assert matrix.data.shape[1:] == (c, r) and matrix.indptr[0] == 0
    assert len(matrix.indptr) == -(-weight.shape[0] // r) + 1
    np.testing.assert_array_equal(matrix.to_dense(), weight)
    assert matrix.nbytes == matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes


def test_to_bsr_rejects_c_not_dividing_k():
    with pytest.raises(ValueError, match="does not divide"):
        bsr.to_bsr(np.ones((8, 5), np.float32), (4, 2))


@pytest.mark.parametrize(
    ("target", "lanes"),
    [(AVX2, 8), (AVX512, 16), (AARCH64, 4), ({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, 4)],
)
def test_cpu_info_lanes(target, lanes):
    assert cpu_info(tvm.target.Target(target)).lanes == lanes


# --- kernels against numpy ---------------------------------------------------------------------


@needs_avx2
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize(("n", "k"), [(37, 29), (64, 48), (5, 3), (100, 130)])
def test_dense_kernel(m, n, k):
    _run_dense(AVX2, m, n, k)


@needs_avx2
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("block", BLOCKS)
def test_bsr_kernel(m, block):
    for weight in _weight_cases(block).values():
        _run_bsr(AVX2, m, weight, block)


@needs_avx512
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("block", [(16, 1), (8, 1), (1, 1)])
def test_kernels_avx512(m, block):
    _run_dense(AVX512, m, 70, 52)
    _run_bsr(AVX512, m, _weight_cases(block)["mixed_rows"], block)


# --- unstructured at batch 1 (SELL-C-sigma) ----------------------------------------------------


def _sell_cases() -> dict[str, np.ndarray]:
    """1x1-sparse weights with N, K odd sizes, empty and fully dense rows, 0 and 99 % sparsity."""
    cases = _weight_cases((1, 1))
    rng = np.random.default_rng(21)
    cases["wide"] = block_pruned(37, 301, (1, 1), 0.9, rng)  # several column windows, K not a multiple of 32
    cases["tiny"] = block_pruned(3, 5, (1, 1), 0.5, rng)
    return cases


@pytest.mark.parametrize("target", [AVX2, AVX512, SSE2], ids=["avx2", "avx512", "sse2"])
def test_sell_round_trip(target):
    layout = sell.choose_layout(cpu_info(tvm.target.Target(target)))
    for weight in _sell_cases().values():
        matrix = sell.to_sell(weight, layout)
        np.testing.assert_array_equal(matrix.to_dense(), weight)
        assert matrix.nnz == np.count_nonzero(weight)
        assert matrix.values.size >= matrix.nnz and matrix.nbytes > 0


def test_sell_layouts():
    assert sell.choose_layout(cpu_info(tvm.target.Target(AVX512))).window == 32
    plain = sell.choose_layout(cpu_info(tvm.target.Target(AVX2)))
    assert plain.window == 0 and plain.gather == "llvm.x86.avx2.gather.d.ps.256"
    assert sell.choose_layout(cpu_info(tvm.target.Target(AARCH64))).gather is None


def _run_sell(target: dict, weight: np.ndarray) -> None:
    target = tvm.target.Target(target)
    matrix = sell.to_sell(weight, sell.choose_layout(cpu_info(target)))
    kernel = build_kernel(sell.sell_func(matrix), target)
    x = np.random.default_rng(5).standard_normal((1, weight.shape[1])).astype(np.float32)
    y = tvm.runtime.tensor(np.full((1, weight.shape[0]), np.nan, np.float32))
    kernel(*(tvm.runtime.tensor(a) for a in (x, matrix.values, matrix.cols, matrix.slice_ptr, matrix.perm)), y)
    _assert_close(y.numpy(), x.astype(np.float64) @ weight.T.astype(np.float64))


@pytest.mark.parametrize(
    "target",
    [pytest.param(AVX2, marks=needs_avx2), pytest.param(AVX512, marks=needs_avx512),
     pytest.param(SSE2, marks=pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 host"))],
    ids=["avx2-gather", "avx512-windowed", "sse2-lanes"],
)
def test_sell_kernel(target):
    for weight in _sell_cases().values():
        _run_sell(target, weight)


# --- N:M structured sparsity ------------------------------------------------------------------


def _nm_cases(n: int, m: int) -> dict[str, np.ndarray]:
    """N:M weights [70, 50] (K not a multiple of m): random, with empty and full rows, 99 % zeros, all zero."""
    rng = np.random.default_rng(n * 10 + m)
    base = nm.prune_nm(rng.standard_normal((70, 50)).astype(np.float32), n, m)
    rows = base.copy()
    rows[:20] = 0  # empty rows (a whole vector block of them)
    sparse99 = base * (rng.random(base.shape) < 0.01 * m / n)  # ~99 % zeros overall
    return {"nm": base, "rows": rows, "sparse99": sparse99, "all_zero": np.zeros_like(base)}


def test_prune_nm_keeps_largest_per_group():
    w = np.array([[1.0, -4.0, 3.0, 2.0, 0.5, -0.1, 0.2]], np.float32)  # K = 7: the last group has 3 columns
    np.testing.assert_array_equal(nm.prune_nm(w, 2, 4), np.array([[0, -4.0, 3.0, 0, 0.5, 0, 0.2]], np.float32))
    assert nm.satisfies_nm(nm.prune_nm(w, 2, 4), 2, 4) and not nm.satisfies_nm(w, 2, 4)
    assert nm.satisfies_nm(nm.prune_nm(w, 1, 4), 1, 4) and not nm.satisfies_nm(nm.prune_nm(w, 2, 4), 1, 4)


def test_prune_nm_rejects_bad_pattern():
    with pytest.raises(ValueError, match="0 < n <= m"):
        nm.prune_nm(np.ones((2, 4), np.float32), 5, 4)


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4), (2, 8), (3, 5)])
@pytest.mark.parametrize("target", [AVX2, AVX512, SSE2], ids=["avx2", "avx512", "sse2"])
def test_to_nm_round_trip(pattern, target):
    layout = nm.choose_layout(*pattern, cpu_info(tvm.target.Target(target)))
    for weight in _nm_cases(*pattern).values():
        matrix = nm.to_nm(weight, *pattern, layout)
        np.testing.assert_array_equal(matrix.to_dense(), weight)
        assert matrix.values.shape[1] * layout.m == matrix.windows * layout.stride * layout.n
    with pytest.raises(ValueError, match="not 2:4"):
        nm.to_nm(np.ones((4, 8), np.float32), 2, 4, nm.choose_layout(2, 4, cpu_info(tvm.target.Target(AVX2))))


def test_nm_layout_uses_register_permutes_on_x86():
    assert nm.choose_layout(2, 4, cpu_info(tvm.target.Target(AVX512))).permute == "llvm.x86.avx512.permvar.sf.512"
    assert nm.choose_layout(2, 4, cpu_info(tvm.target.Target(AVX2))).window == 8
    assert nm.choose_layout(2, 4, cpu_info(tvm.target.Target(AARCH64))).permute is None


def _run_nm(target: dict, m: int, weights: list[np.ndarray], pattern: tuple[int, int]) -> None:
    """One build per shape serves every weight: the kernel depends on N, K and the pattern, not the values."""
    target = tvm.target.Target(target)
    cpu = cpu_info(target)
    layout = nm.choose_layout(*pattern, cpu)
    kernel = None
    for weight in weights:
        matrix = nm.to_nm(weight, *pattern, layout)
        kernel = kernel or build_kernel(nm.nm_func(m, matrix, nm.choose_tiling(m, layout, cpu)), target)
        x = np.random.default_rng(m).standard_normal((m, weight.shape[1])).astype(np.float32)
        y = tvm.runtime.tensor(np.full((m, weight.shape[0]), np.nan, np.float32))
        kernel(*(tvm.runtime.tensor(a) for a in (x, matrix.values, matrix.index)), y)
        _assert_close(y.numpy(), x.astype(np.float64) @ weight.T.astype(np.float64))


@needs_avx2
@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("pattern", [(2, 4), (1, 4), (2, 8), (3, 5)])
def test_nm_kernel(m, pattern):
    _run_nm(AVX2, m, list(_nm_cases(*pattern).values()), pattern)


@needs_avx512
@pytest.mark.parametrize("m", [1, 16, 64])
@pytest.mark.parametrize("pattern", [(2, 4), (2, 8)])
def test_nm_kernel_avx512(m, pattern):
    _run_nm(AVX512, m, list(_nm_cases(*pattern).values()), pattern)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 host")
@pytest.mark.parametrize("m", [1, 5])
def test_nm_kernel_portable_form(m):
    """Without a register permute (SSE2 here; NEON, ...) the lanes load x one by one."""
    _run_nm(SSE2, m, [_nm_cases(2, 4)["nm"]], (2, 4))


# --- Relax rewrite end to end ------------------------------------------------------------------


def _mlp(x_shape, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x -> Gemm(W1[N1, K], transB=1) + b1 -> Relu -> MatMul(W2[N1, N2])."""
    out_shape = [*x_shape[:-1], w2.shape[1]]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(a, name) for a, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mlp_weights(prune: str, n1: int = 64, k: int = 48, n2: int = 40):
    """Weights of `_mlp`; the layer named by `prune` is 90 % sparse in 8x1 blocks over [N, K]."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((n1, k)).astype(np.float32)
    w2t = rng.standard_normal((n2, n1)).astype(np.float32)  # MatMul weight as [N, K]
    if prune == "gemm":
        w1 = block_pruned(n1, k, (8, 1), 0.9, rng)
    else:
        w2t = block_pruned(n2, n1, (8, 1), 0.9, rng)
    return w1, rng.standard_normal(n1).astype(np.float32), np.ascontiguousarray(w2t.T)


def _run_vm(ex, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@needs_avx2
@pytest.mark.parametrize("prune", ["gemm", "matmul"])
def test_rewrite_mlp_end_to_end(prune):
    w1, b1, w2 = _mlp_weights(prune)
    mod = from_onnx(_mlp([16, 48], w1, b1, w2), keep_params_in_input=False)
    new_mod, records = rewrite_module(mod, tvm.target.Target(AVX2))

    sparse_layer = 0 if prune == "gemm" else 1
    assert [r["kernel"] for r in records] == ["bsr" if i == sparse_layer else "dense" for i in (0, 1)]
    assert [r["epilogue"] for r in records] == ["bias+relu", None]  # Gemm's bias and the Relu moved into layer 0
    sparse = records[sparse_layer]
    assert sparse["block"] == [8, 1] and sparse["batch"] == 16
    assert sparse["shape"] == ([64, 48] if prune == "gemm" else [40, 64])
    assert 0.05 < sparse["density"] < 0.15 and sparse["nnz_blocks"] > 0
    assert records[1 - sparse_layer]["block"] is None and records[1 - sparse_layer]["density"] == 1.0

    x = np.random.default_rng(0).standard_normal((16, 48)).astype(np.float32)
    out = _run_vm(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), x)
    np.testing.assert_allclose(out, np.maximum(x @ w1.T + b1, 0) @ w2, rtol=1e-5, atol=1e-5)


@needs_avx2
def test_rewrite_rank3_input():
    _, _, w2 = _mlp_weights("matmul")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w2"], ["y"])],
        "rank3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 40])],
        [numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    new_mod, records = rewrite_module(from_onnx(model, keep_params_in_input=False), tvm.target.Target(AVX2))
    assert records[0]["kernel"] == "bsr" and records[0]["batch"] == 6
    x = np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32)
    out = _run_vm(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), x)
    np.testing.assert_allclose(out, x @ w2, rtol=1e-5, atol=1e-5)


@needs_avx2
def test_rewrite_dynamic_batch_left_to_tvm():
    w1, b1, w2 = _mlp_weights("gemm")
    mod = from_onnx(_mlp(["batch", 48], w1, b1, w2), keep_params_in_input=False)
    new_mod, records = rewrite_module(mod, tvm.target.Target(AVX2))
    assert [r["kernel"] for r in records] == ["default", "default"]
    assert records[0]["batch"] is None
    x = np.random.default_rng(2).standard_normal((5, 48)).astype(np.float32)
    out = _run_vm(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), x)
    np.testing.assert_allclose(out, np.maximum(x @ w1.T + b1, 0) @ w2, rtol=1e-4, atol=1e-4)


# --- fused bias + ReLU --------------------------------------------------------------------------


@needs_avx2
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize(
    "candidate", [("dense", None), ("bsr", (8, 1)), ("bsr", (1, 1)), ("bsr", (2, 2)), ("nm", (2, 4))]
)
def test_kernel_epilogue_bias_relu(candidate, m):
    from schedules.cpu import Epilogue

    rng = np.random.default_rng(31)
    weight = nm.prune_nm(block_pruned(37, 40, (8, 1), 0.5, rng), 2, 4) if candidate[0] == "nm" else block_pruned(
        37, 40, candidate[1] or (1, 1), 0.7, rng)
    bias = rng.standard_normal(37).astype(np.float32)
    x = rng.standard_normal((m, 40)).astype(np.float32)
    target = tvm.target.Target(AVX2)
    for ep in (Epilogue(bias=True), Epilogue(relu=True), Epilogue(bias=True, relu=True)):
        impl = make_kernel(candidate, weight, m, cpu_info(target), ep)
        kernel = build_kernel(impl.func, target)
        y = tvm.runtime.tensor(np.full((m, 37), np.nan, np.float32))
        kernel(*(tvm.runtime.tensor(a) for a in (x, *impl.consts, *([bias] if ep.bias else []))), y)
        ref = x.astype(np.float64) @ weight.T.astype(np.float64) + (bias if ep.bias else 0)
        _assert_close(y.numpy(), np.maximum(ref, 0) if ep.relu else ref)


@needs_avx2
def test_rewrite_does_not_fuse_into_a_shared_output():
    """matmul output read twice (by the bias add and again later): the bias stays a separate add."""
    rng = np.random.default_rng(32)
    w = rng.standard_normal((24, 16)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(w))))
            z = bb.emit(relax.op.add(y, relax.const(b)))
            out = bb.emit_output(relax.op.add(z, y))
        bb.emit_func_output(out)
    new_mod, records = rewrite_module(bb.get(), tvm.target.Target(AVX2))
    assert records[0]["kernel"] == "dense" and records[0]["epilogue"] is None
    xv = rng.standard_normal((4, 16)).astype(np.float32)
    out = _run_vm(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), xv)
    np.testing.assert_allclose(out, 2 * (xv @ w.T) + b, rtol=1e-5, atol=1e-5)


# --- 1x1 convolution ----------------------------------------------------------------------------


def _conv_onnx(x_shape, w: np.ndarray, b: np.ndarray, **attrs) -> onnx.ModelProto:
    """x -> Conv(w, b, **attrs) -> Relu, NCHW (ONNX's only layout); the output shape is left to inference."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x_shape[0], w.shape[0], None, None])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@needs_avx2
@pytest.mark.parametrize(("x_shape", "sparsity"), [([2, 48, 5, 7], 0.9), ([1, 48, 6, 6], 0.0), ([3, 48, 1, 1], 0.9)])
def test_rewrite_conv1x1_nchw_onnx(x_shape, sparsity):
    rng = np.random.default_rng(11)
    w2 = block_pruned(40, 48, (8, 1), sparsity, rng)
    b = rng.standard_normal(40).astype(np.float32)
    model = _conv_onnx(x_shape, w2.reshape(40, 48, 1, 1), b)
    new_mod, records = rewrite_module(from_onnx(model, keep_params_in_input=False), tvm.target.Target(AVX2))
    assert len(records) == 1 and records[0]["op"] == "conv1x1" and records[0]["shape"] == [40, 48]
    assert records[0]["kernel"] == ("bsr" if sparsity else "dense")
    assert records[0]["batch"] == x_shape[0] * x_shape[2] * x_shape[3]
    x = rng.standard_normal(x_shape).astype(np.float32)
    out = _run_vm(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), x)
    ref = np.maximum(np.einsum("oc,bchw->bohw", w2, x) + b[None, :, None, None], 0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@needs_avx2
def test_rewrite_conv1x1_nhwc():
    rng = np.random.default_rng(12)
    w2 = nm.prune_nm(rng.standard_normal((24, 32)).astype(np.float32), 2, 4)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 5, 3, 32), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w2.reshape(24, 1, 1, 32)), data_layout="NHWC",
                                           kernel_layout="OHWI"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    new_mod, records = rewrite_module(bb.get(), tvm.target.Target(AVX2))
    assert [(r["op"], r["kernel"], r["block"], r["batch"]) for r in records] == [("conv1x1", "nm", [2, 4], 30)]
    xv = rng.standard_normal((2, 5, 3, 32)).astype(np.float32)
    out = _run_vm(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), xv)
    np.testing.assert_allclose(out, np.einsum("oc,bhwc->bhwo", w2, xv), rtol=1e-5, atol=1e-5)


@needs_avx2
@pytest.mark.parametrize("attrs, op", [({"strides": [2, 2]}, "conv1x1/s2"), ({"pads": [1, 1, 1, 1]}, "conv1x1"),
                                       ({"kernel_shape": [3, 3]}, "conv3x3")])
def test_rewrite_takes_strided_padded_and_3x3_convs(attrs, op):
    """Convs beyond the plain 1x1 get our kernels too (issue 9; tests/test_conv.py covers the geometry), named by
    their window and stride, and compute what onnxruntime computes."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(13)
    kh = attrs.get("kernel_shape", [1, 1])[0]
    w = rng.standard_normal((8, 4, kh, kh)).astype(np.float32)
    model = _conv_onnx([1, 4, 6, 6], w, np.zeros(8, np.float32), **attrs)
    mod = from_onnx(model, keep_params_in_input=False)
    new_mod, records = rewrite_module(mod, tvm.target.Target(AVX2))
    assert [(r["op"], r["kernel"], r["shape"]) for r in records] == [(op, "dense", [8, 4 * kh * kh])]
    xv = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    out = _run_vm(tvm.compile(new_mod, target=tvm.target.Target(AVX2)), xv)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_rewrite_other_gpu_targets_return_module_unchanged():
    w1, b1, w2 = _mlp_weights("gemm")
    mod = from_onnx(_mlp([4, 48], w1, b1, w2), keep_params_in_input=False)
    new_mod, records = rewrite_module(mod, tvm.target.Target({"kind": "opencl"}))
    assert new_mod.same_as(mod)
    assert [r["kernel"] for r in records] == ["default", "default"]
    assert records[0]["weight_bytes"] == w1.nbytes and records[0]["block"] is None


JETSON_GPU = {"kind": "cuda", "arch": "sm_87", "host": AARCH64}


def _ours(weight, m, cpu, *conv):
    """A chooser that takes our kernels as the CPU rule would (on CUDA the rule leaves every layer to TVM)."""
    return rule_chooser(0.5)(weight, m, None)


@pytest.mark.parametrize("batch", [1, 16])
def test_cuda_kernels_compile_for_jetson(batch, tmp_path):
    """CUDA dense and BSR kernels (threads bound over rows and blocks) build for sm_87 with no GPU here."""
    w1, b1, w2 = _mlp_weights("gemm")
    mod = from_onnx(_mlp([batch, 48], w1, b1, w2), keep_params_in_input=False)
    target = tvm.target.Target(JETSON_GPU)
    new_mod, records = rewrite_module(mod, target, chooser=_ours)
    assert [(r["kernel"], r["block"], r["epilogue"]) for r in records] == [("bsr", [8, 1], "bias+relu"),
                                                                           ("dense", None, None)]
    ex = tvm.compile(new_mod, target=target)
    modules, cuda_source = list(ex.mod.imports), None
    while modules and cuda_source is None:  # VM executable -> llvm host module -> cuda device module
        module = modules.pop()
        cuda_source = module.inspect_source() if module.kind == "cuda" else None
        modules += list(module.imports)
    assert "cuda_bsr_64x48_b8x1_bias_relu_kernel" in cuda_source and "blockIdx.x" in cuda_source
    assert "cuda_dense_" in cuda_source and ("threadIdx.y" in cuda_source) == (batch > 1)  # batch rows per block
    ex.export_library(str(tmp_path / "mlp_cuda.tar"))


@pytest.mark.parametrize("batch", [1, 16])
def test_tvm_candidate_is_the_kernel_tvms_pipeline_runs(batch):
    """The ``tvm`` candidate timed for a CUDA layer is, to the last loop, the PrimFunc TVM's default CUDA pipeline
    makes for that layer as the ONNX importer writes it (dlight's GEMV rule at batch 1, Matmul above), for Gemm
    with its bias and ReLU fused and for MatMul."""
    from tvm.relax.backend.cuda.pipeline import legalize_passes, library_dispatch_passes

    from schedules.cpu import Epilogue

    w1, b1, w2 = _mlp_weights("gemm")
    mod = from_onnx(_mlp([batch, 48], w1, b1, w2), keep_params_in_input=False)
    target = tvm.target.Target(JETSON_GPU)
    with target:
        lowered = tvm.transform.Sequential(library_dispatch_passes(target) + legalize_passes(target))(mod)
    gpu = cuda.gpu_info(target)
    for name, weight, ep in (("fused_matmul_add_relu", w1, Epilogue(bias=True, relu=True)),
                             ("matmul1", np.ascontiguousarray(w2.T), Epilogue())):
        impl = make_kernel(("tvm", None), weight, batch, gpu, ep)
        tvm.ir.assert_structural_equal(impl.func, lowered[name])
        assert impl.kind == "tvm" and [c.shape for c in impl.consts] == [weight.T.shape]  # TVM stores W as [K, N]
        assert impl.func.attrs["tirx.is_scheduled"]


def test_cuda_rule_leaves_layers_to_tvm_with_their_bias_and_relu():
    """Choosing ``tvm`` leaves the matmul to TVM's pipeline, recorded as such; its bias add and ReLU stay with it
    (no kernel of ours absorbs them), while a layer the chooser gives our BSR kernel gets them fused."""
    w1, b1, w2 = _mlp_weights("matmul")  # layer 0 dense with bias + ReLU, layer 1 90 % sparse in 8x1 blocks
    mod = from_onnx(_mlp([1, 48], w1, b1, w2), keep_params_in_input=False)
    target = tvm.target.Target(JETSON_GPU)
    same, records = rewrite_module(mod, target)  # nothing measured: the rule
    assert same.same_as(mod)
    assert [(r["kernel"], r["choice"], r["epilogue"]) for r in records] == [("tvm", "rule", None)] * 2
    assert all("TVM's default schedule" in r["rule"] and "cuda_measurements.json" in r["rule"] for r in records)

    def mixed(weight, m, cpu, *conv):
        return (("bsr", (8, 1)) if bsr.density(weight) < 0.5 else ("tvm", None)), {"choice": "measured"}

    new_mod, records = rewrite_module(mod, target, chooser=mixed)
    assert [(r["kernel"], r["block"], r["epilogue"]) for r in records] == [("tvm", None, None), ("bsr", [8, 1], None)]
    ops = [str(call.op.name) for call in _calls(new_mod["main"]) if isinstance(call.op, tvm.ir.Op)]
    assert ops.count("relax.matmul") == 1 and "relax.add" in ops and "relax.nn.relu" in ops
    tvm.compile(new_mod, target=target)  # TVM schedules its layer itself (dlight) next to our kernel


def _calls(func) -> list:
    calls = []

    @relax.expr_functor.visitor
    class _Calls(relax.PyExprVisitor):
        def visit_call_(self, call):
            calls.append(call)
            super().visit_call_(call)

    _Calls().visit_expr(func)
    return calls


@needs_avx2
def test_sparse_library_is_smaller(tmp_path):
    """The exported .so holds the compressed weight, not the dense one."""
    rng = np.random.default_rng(3)
    sizes = {}
    for sparsity in (0.0, 0.9):
        w = block_pruned(512, 512, (16, 1), sparsity, rng)
        graph = helper.make_graph(
            [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
            "one",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])],
            [numpy_helper.from_array(w, "w")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        new_mod, records = rewrite_module(from_onnx(model, keep_params_in_input=False), tvm.target.Target(AVX2))
        path = tmp_path / f"s{sparsity}.so"
        tvm.compile(new_mod, target=tvm.target.Target(AVX2)).export_library(str(path))
        sizes[sparsity] = path.stat().st_size
        assert records[0]["kernel"] == ("bsr" if sparsity else "dense")
    assert sizes[0.9] < 0.3 * sizes[0.0]


def test_aarch64_compiles_and_exports(tmp_path):
    w1, b1, w2 = _mlp_weights("matmul")
    mod = from_onnx(_mlp([16, 48], w1, b1, w2), keep_params_in_input=False)
    target = tvm.target.Target(AARCH64)
    new_mod, records = rewrite_module(mod, target)
    assert [r["kernel"] for r in records] == ["dense", "bsr"]
    ex = tvm.compile(new_mod, target=target)
    ex.export_library(str(tmp_path / "mlp.tar"))
    assert (tmp_path / "mlp.tar").stat().st_size > 0
    # NEON fused multiply-adds (vector by broadcast lane) in the generated kernels.
    assert "fmla\tv" in ex.mod.imports[0].inspect_source("asm")
