"""Block-sparse (BSR) fp32 matmul y[M, N] = x[M, K] @ W[N, K]^T.

W is cut into r x c blocks over [N, K]; only blocks with a nonzero survive. Storage follows
scipy's BSR (indices = block columns, indptr = block-row offsets) except that each block is
stored transposed, data[nnzb, c, r], so the r output rows a block feeds are contiguous and
form the vector lane of the kernel.

The kernels are written as explicit TensorIR loop nests rather than derived with
`s_tir.Schedule`: the reduction runs over exactly indptr[i]..indptr[i+1] (a data-dependent
trip count), which the schedule primitives refuse, and the padded-loop form they accept
costs max_blocks_per_row iterations on every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tvm
from tvm.script import tirx as T

from .cpu import ACC_SCOPE, NO_EPILOGUE, TARGET_CHAINS, CpuInfo, Epilogue, epilogue, finish, largest_divisor_at_most
from .tiles import store_tile, sum_partials, zero_tile

# Block shapes tried by `choose_block`, largest first. All are r x 1: the lane runs along
# output rows, so taller blocks mean fuller vectors and fewer index loads.
BLOCK_CANDIDATES: tuple[tuple[int, int], ...] = ((16, 1), (8, 1), (4, 1), (1, 1))
# How much denser (at block level) than the element density a block shape may be and still
# count as "the weight was pruned in such blocks".
BLOCK_TOLERANCE = 1.15


@dataclass(frozen=True)
class BSRMatrix:
    """A [N, K] weight in block-sparse-row form.

    Attributes:
        shape: (N, K) of the dense weight.
        block: (r, c) block shape.
        data: float32 [nnzb, c, r]; block b holds W[row*r + i, indices[b]*c + j] at data[b, j, i].
        indices: int32 [nnzb] block column of each stored block.
        indptr: int32 [ceil(N / r) + 1]; blocks of block-row i are indptr[i]:indptr[i+1].
    """

    shape: tuple[int, int]
    block: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @property
    def nnz_blocks(self) -> int:
        """Number of stored (nonzero) blocks."""
        return len(self.indices)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays: values + indices + indptr."""
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes

    def to_dense(self) -> np.ndarray:
        """The dense [N, K] weight (for tests and checks)."""
        r, c = self.block
        n, k = self.shape
        rows = len(self.indptr) - 1
        cols = -(-k // c)
        blocks = np.zeros((rows, cols, r, c), dtype=np.float32)
        row_of = np.repeat(np.arange(rows), np.diff(self.indptr))
        blocks[row_of, self.indices] = self.data.transpose(0, 2, 1)
        return blocks.transpose(0, 2, 1, 3).reshape(rows * r, cols * c)[:n, :k]


def _block_mask(weight: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Boolean [ceil(N/r), ceil(K/c)]: which r x c blocks hold a nonzero (edges zero-padded)."""
    r, c = block
    n, k = weight.shape
    rows, cols = -(-n // r), -(-k // c)
    padded = np.zeros((rows * r, cols * c), dtype=bool)
    padded[:n, :k] = weight != 0
    return padded.reshape(rows, r, cols, c).any(axis=(1, 3))


def stored_blocks(weight: np.ndarray, block: tuple[int, int]) -> int:
    """How many r x c blocks BSR would store for `weight` (blocks holding at least one nonzero)."""
    return int(_block_mask(weight, block).sum())


def density(weight: np.ndarray) -> float:
    """Fraction of nonzero elements."""
    return float(np.count_nonzero(weight)) / weight.size


def choose_block(
    weight: np.ndarray,
    candidates: Sequence[tuple[int, int]] = BLOCK_CANDIDATES,
    tolerance: float = BLOCK_TOLERANCE,
) -> tuple[int, int]:
    """The largest block shape whose block density is at most `tolerance` x the element density.

    A weight pruned in r x c blocks keeps its density when counted in r x c blocks; counting it
    in larger blocks inflates it (at 90 % unstructured sparsity, 16 x 1 blocks are ~80 % dense).
    Shapes whose c does not divide K are skipped (the kernel reads whole blocks of x). Falls
    back to (1, 1), which always fits.
    """
    elem = density(weight)
    k = weight.shape[1]
    for block in sorted(candidates, key=lambda b: b[0] * b[1], reverse=True):
        if k % block[1] == 0 and _block_mask(weight, block).mean() <= tolerance * elem:
            return block
    return (1, 1)


def to_bsr(weight: np.ndarray, block: tuple[int, int]) -> BSRMatrix:
    """Convert a dense [N, K] weight to BSRMatrix with blocks of `block` = (r, c)."""
    r, c = block
    n, k = weight.shape
    if k % c:
        raise ValueError(f"block {block}: c={c} does not divide K={k}")
    rows = -(-n // r)
    padded = np.zeros((rows * r, k), dtype=np.float32)
    padded[:n] = weight
    # [rows, cols, c, r]: the transposed block layout the kernel streams.
    blocks = padded.reshape(rows, r, k // c, c).transpose(0, 2, 3, 1)
    mask = _block_mask(weight, block)
    block_rows, block_cols = np.nonzero(mask)  # row-major, so grouped by block-row
    indptr = np.zeros(rows + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(mask.sum(axis=1))
    data = np.ascontiguousarray(blocks[block_rows, block_cols], dtype=np.float32)
    return BSRMatrix((n, k), (r, c), data, block_cols.astype(np.int32), indptr)


Lane = Literal["rows", "batch"]


@dataclass(frozen=True)
class BSRTiling:
    """Register tiling of a BSR kernel.

    Attributes:
        lane: what the vector lane runs over. "rows": the r rows of a block (tall blocks).
            "batch": mt batch rows, for blocks narrower than a vector at batch > 1.
            (1 x 1 blocks at batch 1 have no good lane here: `kernels.make_kernel` stores them as
            SELL-C-sigma, `schedules.sell`; this kernel still computes them, one row at a time.)
        mt: batch rows per register tile (divides M); with "batch" they form the vector.
        ku: independent partial sums over the blocks of a row (hide FMA latency at batch 1).
    """

    lane: Lane
    mt: int
    ku: int


def choose_tiling(m: int, block: tuple[int, int], cpu: CpuInfo) -> BSRTiling:
    """Pick the BSR register tiling for batch `m` and block shape on `cpu`."""
    r = block[0]
    registers = cpu.accumulator_registers
    if m > 1 and r < cpu.lanes:
        lane: Lane = "batch"
        mt = largest_divisor_at_most(m, 2 * cpu.lanes)
        accumulators = r * -(-mt // cpu.lanes)
    else:
        lane = "rows"
        vectors = -(-r // cpu.lanes)
        mt = largest_divisor_at_most(m, registers // vectors)
        accumulators = mt * vectors
    return BSRTiling(lane=lane, mt=mt, ku=max(1, min(registers, TARGET_CHAINS) // accumulators))


def bsr_kernel(m: int, matrix: BSRMatrix, body) -> tvm.tirx.PrimFunc:
    """The PrimFunc (x[M, K], data, indices, indptr, bias[N], y[M, N]) for `matrix`'s sizes whose body is the
    `T.macro` ``body(x, data, indices, indptr, bias, y)``: BSRMatrix's arrays as kernels take them, in one
    place for the CPU and CUDA kernels."""
    n, k = matrix.shape
    r, c = matrix.block
    stored = matrix.data.shape[0]
    rows = len(matrix.indptr) - 1

    @T.prim_func(private=True)
    def bsr(
        x: T.Buffer((m, k), "float32"),
        data: T.Buffer((stored, c, r), "float32"),
        indices: T.Buffer((stored,), "int32"),
        indptr: T.Buffer((rows + 1,), "int32"),
        bias: T.Buffer((n,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        body(x, data, indices, indptr, bias, y)

    return bsr


def _transpose_tile(k: int) -> int:
    """Columns of x per step of the x -> x^T prologue: a cache line of a row of x at a time.

    Walking x down a column instead touches M lines K*4 bytes apart; with K*4 a multiple of
    4 KiB they all fall into one L1 set and every read misses. A divisor of K, so no tail.
    """
    return largest_divisor_at_most(k, 16)


def bsr_func(m: int, matrix: BSRMatrix, tiling: BSRTiling, ep: Epilogue = NO_EPILOGUE) -> tvm.tirx.PrimFunc:
    """TensorIR kernel (x[M, K], data, indices, indptr, [bias]) -> y[M, N] for `matrix`'s sizes.

    Per block-row i (in parallel) and tile of mt batch rows: an accumulator tile of r block rows
    x mt batch rows, ku partial sums, fed by the blocks indptr[i]..indptr[i+1]. The vector lane
    runs along the r rows of a block (lane "rows", x^T broadcast) or along the batch rows (lane
    "batch", block values broadcast).

    x is read as x^T[K, M]: at batch > 1 a prologue transposes it so that the batch values of
    one column (what a block multiplies) share a cache line instead of sitting K floats apart;
    at batch 1, x[1, K] already is x^T[K, 1] and is used in place.
    """
    n, k = matrix.shape
    r, c = matrix.block
    rows = len(matrix.indptr) - 1
    full_rows = n // r
    mt, ku = tiling.mt, tiling.ku
    kt_len = _transpose_tile(k)
    by_rows = tiling.lane == "rows"
    # The accumulator tile's axes a (unrolled) and b (the vector lane) are (batch row, block row) with
    # lane "rows", (block row, batch row) with lane "batch". TVMScript calls the Python functions below
    # while it parses the kernel: they pick indices and leave no trace in the TensorIR.
    tile = (mt, r) if by_rows else (r, mt)

    def batch_row(a, b):
        return a if by_rows else b

    def block_row(a, b):
        return b if by_rows else a

    def term(data, xt, indices, j, ci, a, b, mo):
        """Block j's value at (column ci, tile element a, b) times the x it multiplies."""
        return data[j, ci, block_row(a, b)] * xt[indices[j] * c + ci, mo * mt + batch_row(a, b)]

    @T.macro
    def body(x, data, indices, indptr, bias, y):
        if m > 1:
            xt = T.alloc_buffer((k, m), "float32")
            for kt in T.parallel(k // kt_len):
                for mm, kk in T.grid(m, kt_len):
                    xt[kt * kt_len + kk, mm] = x[mm, kt * kt_len + kk]
        else:
            xt = T.decl_buffer((k, m), "float32", data=x.data)
        for i in T.parallel(rows):
            acc = T.alloc_buffer((ku, *tile), "float32", scope=ACC_SCOPE)
            for mo in range(m // mt):
                zero_tile(acc, ku, *tile)
                # ku blocks per step, each into its own partial sum; a bound test skips the
                # overhang of the last step (cheaper than a separate tail loop, and predictable).
                for jo in range((indptr[i + 1] - indptr[i] + ku - 1) // ku):
                    for u in T.unroll(ku):
                        if jo * ku + u < indptr[i + 1] - indptr[i]:
                            for ci in T.unroll(c):
                                for a in T.unroll(tile[0]):
                                    for b in T.vectorized(tile[1]):
                                        acc[u, a, b] = acc[u, a, b] + term(
                                            data, xt, indices, indptr[i] + jo * ku + u, ci, a, b, mo
                                        )
                sum_partials(acc, ku, *tile)
                if by_rows:
                    store_tile(y, acc, ep, bias, mo * mt, i * r, mt, r, i < full_rows, n - full_rows * r)
                else:  # the lane runs down a column of y: store one by one, skipping rows past N
                    for mi in T.unroll(mt):
                        for ri in T.unroll(r):
                            if i * r + ri < n:
                                y[mo * mt + mi, i * r + ri] = epilogue(ep, acc[0, ri, mi], bias, i * r + ri)

    return finish(bsr_kernel(m, matrix, body), ep)
