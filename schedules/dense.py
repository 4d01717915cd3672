"""Dense fp32 matmul y[M, N] = x[M, K] @ W[N, K]^T with a weight packed at compile time.

The weight is stored as W_packed[N/vn, K, vn] so that one vector of `vn` consecutive output
columns is contiguous for every k: the micro-kernel broadcasts x[m, k], loads one row of the
packed block and accumulates into an mt x vn register tile. N is padded up to a multiple of vn
with zero rows; the padded outputs are computed and never stored.

Like the BSR kernels, this is an explicit TensorIR loop nest (parallel, unrolled and vectorized
loops over a local accumulator) rather than a default loop nest transformed by `s_tir.Schedule`;
the two formats then share one micro-kernel shape and one set of tiling rules (cpu.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from .cpu import ACC_SCOPE, NO_EPILOGUE, TARGET_CHAINS, CpuInfo, Epilogue, finish, largest_divisor_at_most
from .tiles import store_tile, sum_partials, zero_tile


@dataclass(frozen=True)
class DenseTiling:
    """Register tiling of the dense micro-kernel.

    Attributes:
        vn: output columns per packed weight block (a multiple of the vector width).
        mt: batch rows per register tile; divides M.
        ku: independent partial sums along K, used when mt * vn is too small a tile to hide
            FMA latency on its own (batch 1).
    """

    vn: int
    mt: int
    ku: int


def choose_tiling(m: int, cpu: CpuInfo) -> DenseTiling:
    """Pick a register tile for batch `m` on `cpu`: two vectors wide, as many rows as fit."""
    vectors = 2
    registers = cpu.accumulator_registers
    mt = largest_divisor_at_most(m, registers // vectors)
    ku = max(1, min(registers, TARGET_CHAINS) // (mt * vectors))
    return DenseTiling(vn=vectors * cpu.lanes, mt=mt, ku=ku)


def pack_weight(weight: np.ndarray, vn: int) -> np.ndarray:
    """Pack W[N, K] into W_packed[ceil(N/vn), K, vn] (float32), zero-padding the last block."""
    n, k = weight.shape
    blocks = -(-n // vn)
    padded = np.zeros((blocks * vn, k), dtype=np.float32)
    padded[:n] = weight
    return np.ascontiguousarray(padded.reshape(blocks, vn, k).transpose(0, 2, 1))


def dense_kernel(m: int, n: int, k: int, vn: int, body) -> tvm.tirx.PrimFunc:
    """The PrimFunc (x[M, K], W_packed[ceil(N/vn), K, vn], bias[N], y[M, N]) whose body is the `T.macro`
    ``body(x, w, bias, y)``: the packed weight's interface in one place, for the CPU and CUDA kernels."""
    blocks = -(-n // vn)

    @T.prim_func(private=True)
    def dense(
        x: T.Buffer((m, k), "float32"),
        w: T.Buffer((blocks, k, vn), "float32"),
        bias: T.Buffer((n,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        body(x, w, bias, y)

    return dense


def dense_func(m: int, n: int, k: int, tiling: DenseTiling, ep: Epilogue = NO_EPILOGUE) -> tvm.tirx.PrimFunc:
    """TensorIR kernel (x[M, K], W_packed[N/vn, K, vn], [bias]) -> y[M, N], parallel over weight blocks."""
    vn, mt, ku = tiling.vn, tiling.mt, tiling.ku
    blocks = -(-n // vn)
    full_blocks = n // vn
    k_main = k // ku * ku

    @T.macro
    def body(x, w, bias, y):
        for nb in T.parallel(blocks):
            acc = T.alloc_buffer((ku, mt, vn), "float32", scope=ACC_SCOPE)
            for mo in range(m // mt):
                zero_tile(acc, ku, mt, vn)
                for ko in range(k_main // ku):
                    for u in T.unroll(ku):
                        for mi in T.unroll(mt):
                            for v in T.vectorized(vn):
                                acc[u, mi, v] = acc[u, mi, v] + x[mo * mt + mi, ko * ku + u] * w[nb, ko * ku + u, v]
                for kt in range(k - k_main):
                    for mi in T.unroll(mt):
                        for v in T.vectorized(vn):
                            acc[0, mi, v] = acc[0, mi, v] + x[mo * mt + mi, k_main + kt] * w[nb, k_main + kt, v]
                sum_partials(acc, ku, mt, vn)
                store_tile(y, acc, ep, bias, mo * mt, nb * vn, mt, vn, nb < full_blocks, n - full_blocks * vn)

    return finish(dense_kernel(m, n, k, vn, body), ep)
