"""Unstructured (1x1-block) sparse fp32 matrix-vector product y[1, N] = x[1, K] @ W[N, K]^T, batch 1.

CSR at batch 1 has no natural vector lane: a row's nonzeros need x at scattered columns, and
vectorising along a row leaves a horizontal sum and a scalar tail on every row. We store the
weight as SELL-C-sigma (sliced ELLPACK, Kreutzer et al. 2014) instead, still one value and one
column index per nonzero:

* rows are sorted by their number of nonzeros within windows of `sigma` rows (so neighbours
  have similar lengths, while every part of the matrix keeps its share of long and short rows
  and a static split over threads stays balanced);
* C = vector-width consecutive sorted rows form a slice, padded to its longest row (rounded up
  to `unroll`) with zero values pointing at column 0;
* slot j of a slice holds the j-th nonzero of each of its C rows: ``values[slot, C]`` and
  ``cols[slot, C]`` (uint16 when K <= 65536, else int32), so one vector FMA advances C rows.

The lane is the slice's C rows: accumulators map one-to-one to outputs (no horizontal sum), and
x is gathered per slot -- with AVX2 gather instructions, lane by lane elsewhere. `perm` maps
sorted rows back to W's rows for the final stores.

With AVX-512 a *windowed* form replaces the gather: a slice's slots are grouped by 32-column
window of x, each window is held in two registers, and one ``vpermi2ps`` per slot picks every
lane's x. The index shrinks to a byte; each (slice, window) is padded to its fullest row
there, which at 90 % zeros roughly doubles the stored slots but still costs several times
less than a gather (768x768 at 90 %: 7.7 µs against 21 µs, one thread of a Zen 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from .cpu import ACC_SCOPE, NO_EPILOGUE, CpuInfo, Epilogue, epilogue, finish

#: Gather intrinsics by (isa, lanes), with their argument lists.
_GATHERS = {
    ("avx512", 16): "llvm.x86.avx512.mask.gather.dps.512",  # (src, ptr, idx i32x16, mask i1x16, scale i32)
    ("avx2", 8): "llvm.x86.avx2.gather.d.ps.256",  # (src, ptr, idx i32x8, mask f32x8 sign bits, scale i8)
}
#: Sorting window in slices: long enough to group similar rows, short enough to keep thread chunks balanced.
SIGMA_SLICES = 8
#: Independent accumulators per slice (two FMA chains in flight per thread).
UNROLL = 2


#: Two-register permutes: (isa, lanes) -> LLVM intrinsic (a, int32 idx, b) -> concat(a, b)[idx].
_PERMUTES2 = {("avx512", 16): "llvm.x86.avx512.vpermi2var.ps.512"}
#: Accumulators of the windowed form (one per window in flight; windows are short loops).
WINDOW_UNROLL = 4


@dataclass(frozen=True)
class SellLayout:
    """How the slices are stored and walked.

    Attributes:
        c: slice height, the vector lane (rows per slice).
        sigma: rows per sorting window.
        unroll: accumulators per slice; plain form: slot counts are padded to a multiple of it;
            windowed form: the number of column windows is.
        gather: plain form's gather intrinsic, or None (lanes loaded one by one).
        window: 0 for the plain form; else the windowed form's columns per window (2 * c): a
            slice's slots are grouped by window, and each slot's x comes from a two-register
            permute of the window (``permute``) instead of a gather from memory.
        permute: the windowed form's two-register permute intrinsic.
    """

    c: int
    sigma: int
    unroll: int
    gather: str | None
    window: int = 0
    permute: str | None = None


def choose_layout(cpu: CpuInfo) -> SellLayout:
    """Windowed form where a two-register permute exists (AVX-512), else the plain form with the target's gather.

    On the Zen 4 we measured, a 16-lane gather cost about as much as loading the lanes one by one,
    while a permute is one instruction: the windowed form pays ~1.5-3x zero padding (the longest
    row of the slice within each 32-column window) and still does several times less work.
    """
    permute = _PERMUTES2.get((cpu.isa, cpu.lanes))
    if permute is not None:
        return SellLayout(cpu.lanes, SIGMA_SLICES * cpu.lanes, WINDOW_UNROLL, None, 2 * cpu.lanes, permute)
    return SellLayout(cpu.lanes, SIGMA_SLICES * cpu.lanes, UNROLL, _GATHERS.get((cpu.isa, cpu.lanes)))


@dataclass(frozen=True)
class SellMatrix:
    """A [N, K] weight in SELL-C-sigma form.

    Attributes:
        shape: (N, K) of the dense weight.
        layout: the SellLayout it was built for.
        values: float32 [slots, C]. Plain form: the slots of slice s are slice_ptr[s]:slice_ptr[s+1];
            windowed form: those of slice s in window w are slice_ptr[s*W + w]:slice_ptr[s*W + w + 1]
            (W = `windows`).
        cols: plain form: uint16 (K <= 65536) or int32 [slots, C], column of each value (0 for
            padding); windowed form: uint8, column relative to the window start.
        slice_ptr: int32 [slices + 1] (plain) or [slices * windows + 1] (windowed).
        perm: int32 [slices * C]: row of W held by sorted row i (-1 past N).
        nnz: nonzeros of the weight (the slots hold nnz plus padding).
    """

    shape: tuple[int, int]
    layout: SellLayout
    values: np.ndarray
    cols: np.ndarray
    slice_ptr: np.ndarray
    perm: np.ndarray
    nnz: int

    @property
    def slices(self) -> int:
        """Slices of C rows."""
        return len(self.perm) // self.layout.c

    @property
    def windows(self) -> int:
        """Column windows per slice (windowed form; 1 for the plain form)."""
        lay = self.layout
        if not lay.window:
            return 1
        return -(-(-(-self.shape[1] // lay.window)) // lay.unroll) * lay.unroll

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays: values + cols + slice_ptr + perm."""
        return self.values.nbytes + self.cols.nbytes + self.slice_ptr.nbytes + self.perm.nbytes

    def to_dense(self) -> np.ndarray:
        """The dense [N, K] weight (for tests and checks)."""
        n, k = self.shape
        lay = self.layout
        out = np.zeros((len(self.perm), max(k, self.windows * lay.window)), np.float32)
        segment = np.repeat(np.arange(len(self.slice_ptr) - 1), np.diff(self.slice_ptr))
        slice_of, window_of = segment // self.windows, segment % self.windows
        rows = slice_of[:, None] * lay.c + np.arange(lay.c)[None, :]
        cols = self.cols.astype(np.int64) + (window_of * lay.window)[:, None]
        np.add.at(out, (rows, cols), self.values)
        out = out[:, :k]
        dense = np.zeros((n, k), np.float32)
        valid = self.perm >= 0
        dense[self.perm[valid]] = out[valid]
        return dense


def to_sell(weight: np.ndarray, layout: SellLayout) -> SellMatrix:
    """Convert a dense [N, K] weight to SELL-C-sigma for `layout`."""
    n, k = weight.shape
    c, sigma, unroll = layout.c, layout.sigma, layout.unroll
    slices = -(-n // c)
    counts = np.count_nonzero(weight, axis=1)
    # sort rows by length (longest first) inside each window of sigma rows; stable for reproducibility
    perm = np.concatenate([start + np.argsort(-counts[start:start + sigma], kind="stable")
                           for start in range(0, n, sigma)]) if n else np.zeros(0, np.int64)
    perm = np.concatenate([perm, np.full(slices * c - n, -1)]).astype(np.int32)
    if layout.window:
        return _windowed(weight, layout, perm)
    lengths = np.where(perm >= 0, counts[np.maximum(perm, 0)], 0).reshape(slices, c).max(axis=1)
    lengths = -(-lengths // unroll) * unroll
    slice_ptr = np.zeros(slices + 1, np.int32)
    slice_ptr[1:] = np.cumsum(lengths)
    col_dtype = np.uint16 if k <= 1 << 16 else np.int32
    values = np.zeros((int(slice_ptr[-1]), c), np.float32)
    cols = np.zeros((int(slice_ptr[-1]), c), col_dtype)
    for i, row in enumerate(perm):
        if row < 0:
            continue
        nz = np.flatnonzero(weight[row])
        start = slice_ptr[i // c]
        values[start:start + len(nz), i % c] = weight[row, nz]
        cols[start:start + len(nz), i % c] = nz
    return SellMatrix((n, k), layout, values, cols, slice_ptr, perm, int(counts.sum()))


def _windowed(weight: np.ndarray, layout: SellLayout, perm: np.ndarray) -> SellMatrix:
    """The windowed form: per slice and column window, as many slots as the slice's fullest row there."""
    n, k = weight.shape
    c, width = layout.c, layout.window
    windows = -(-(-(-k // width)) // layout.unroll) * layout.unroll
    slices = len(perm) // c
    rows = np.zeros((slices * c, windows * width), np.float32)
    rows[perm >= 0, :k] = weight[perm[perm >= 0]]
    nonzero = rows.reshape(slices, c, windows, width) != 0
    per_lane = nonzero.sum(axis=3)  # [slices, c, windows]
    lengths = per_lane.max(axis=1)  # [slices, windows]
    slice_ptr = np.zeros(slices * windows + 1, np.int32)
    slice_ptr[1:] = np.cumsum(lengths.ravel())
    values = np.zeros((int(slice_ptr[-1]), c), np.float32)
    cols = np.zeros((int(slice_ptr[-1]), c), np.uint8)
    # the j-th nonzero of lane l in (slice s, window w) goes to slot slice_ptr[s*windows + w] + j
    s_idx, lane, w_idx, col = np.nonzero(nonzero.transpose(0, 1, 2, 3))
    rank = np.cumsum(nonzero, axis=3)[s_idx, lane, w_idx, col] - 1
    slot = slice_ptr[s_idx * windows + w_idx] + rank
    values[slot, lane] = rows[s_idx * c + lane, w_idx * width + col]
    cols[slot, lane] = col
    return SellMatrix((n, k), layout, values, cols, slice_ptr, perm, int(np.count_nonzero(weight)))


def sell_func(matrix: SellMatrix, ep: Epilogue = NO_EPILOGUE) -> tvm.tirx.PrimFunc:
    """TensorIR kernel (x[1, K], values, cols, slice_ptr, perm, [bias]) -> y[1, N], parallel over slices."""
    if matrix.layout.window:
        return _windowed_func(matrix, ep)
    n, k = matrix.shape
    lay = matrix.layout
    c, ku = lay.c, lay.unroll
    slots = matrix.values.shape[0]
    slices = len(matrix.slice_ptr) - 1
    col_dtype = str(matrix.cols.dtype)
    gather = lay.gather
    fvec, ivec = f"float32x{c}", f"int32x{c}"

    def gathered(x, cols, p):
        """x[0, cols[p, 0:c]] as one vector: a gather instruction where the target has one."""
        idx = T.Cast(ivec, cols[p, T.ramp(0, 1, c)])
        if gather == "llvm.x86.avx512.mask.gather.dps.512":
            return T.call_llvm_pure_intrin(fvec, gather, T.broadcast(T.float32(0), c), T.address_of(x[0, 0]), idx,
                                           T.broadcast(T.bool(True), c), T.int32(4))
        if gather == "llvm.x86.avx2.gather.d.ps.256":
            all_lanes = T.reinterpret(fvec, T.broadcast(T.int32(-1), c))
            return T.call_llvm_pure_intrin(fvec, gather, T.broadcast(T.float32(0), c), T.address_of(x[0, 0]), idx,
                                           all_lanes, T.int8(4))
        return x[0, idx]  # TVM loads the lanes one by one

    @T.prim_func(private=True)
    def sell(
        x: T.Buffer((1, k), "float32"),
        values: T.Buffer((slots, c), "float32"),
        cols: T.Buffer((slots, c), col_dtype),
        slice_ptr: T.Buffer((slices + 1,), "int32"),
        perm: T.Buffer((slices * c,), "int32"),
        bias: T.Buffer((n,), "float32"),
        y: T.Buffer((1, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for s in T.parallel(slices):
            acc = T.alloc_buffer((ku, c), "float32", scope=ACC_SCOPE)
            for u in T.unroll(ku):
                acc[u, T.ramp(0, 1, c)] = T.broadcast(T.float32(0), c)
            for j in range((slice_ptr[s + 1] - slice_ptr[s]) // ku):
                for u in T.unroll(ku):
                    acc[u, T.ramp(0, 1, c)] = acc[u, T.ramp(0, 1, c)] + values[
                        slice_ptr[s] + j * ku + u, T.ramp(0, 1, c)
                    ] * gathered(x, cols, slice_ptr[s] + j * ku + u)
            for u in T.unroll(1, ku):
                acc[0, T.ramp(0, 1, c)] = acc[0, T.ramp(0, 1, c)] + acc[u, T.ramp(0, 1, c)]
            for lane in T.unroll(c):  # unrolled: a constant lane keeps acc in registers
                if perm[s * c + lane] >= 0:
                    y[0, perm[s * c + lane]] = epilogue(ep, acc[0, lane], bias, perm[s * c + lane])

    return finish(sell, ep)


def _windowed_func(matrix: SellMatrix, ep: Epilogue) -> tvm.tirx.PrimFunc:
    """The windowed form's kernel: per window, x[window] in two registers, one permute + FMA per slot."""
    n, k = matrix.shape
    lay = matrix.layout
    c, ku, width, permute = lay.c, lay.unroll, lay.window, lay.permute
    slots = matrix.values.shape[0]
    slices, windows = matrix.slices, matrix.windows
    kp = windows * width
    fvec, ivec = f"float32x{c}", f"int32x{c}"

    @T.prim_func(private=True)
    def sell_windowed(
        x: T.Buffer((1, k), "float32"),
        values: T.Buffer((slots, c), "float32"),
        cols: T.Buffer((slots, c), "uint8"),
        slice_ptr: T.Buffer((slices * windows + 1,), "int32"),
        perm: T.Buffer((slices * c,), "int32"),
        bias: T.Buffer((n,), "float32"),
        y: T.Buffer((1, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        if kp != k:
            xp = T.alloc_buffer((1, kp), "float32")
            for kk in range(kp):
                xp[0, kk] = T.if_then_else(kk < k, x[0, T.min(kk, k - 1)], T.float32(0))
        else:
            xp = T.decl_buffer((1, kp), "float32", data=x.data)
        for s in T.parallel(slices):
            acc = T.alloc_buffer((ku, c), "float32", scope=ACC_SCOPE)
            for u in T.unroll(ku):
                acc[u, T.ramp(0, 1, c)] = T.broadcast(T.float32(0), c)
            for wo in range(windows // ku):
                for u in T.unroll(ku):
                    for j in range(slice_ptr[s * windows + wo * ku + u], slice_ptr[s * windows + wo * ku + u + 1]):
                        acc[u, T.ramp(0, 1, c)] = acc[u, T.ramp(0, 1, c)] + values[j, T.ramp(0, 1, c)] * (
                            T.call_llvm_pure_intrin(
                                fvec,
                                permute,
                                xp[0, T.ramp((wo * ku + u) * width, 1, c)],
                                T.Cast(ivec, cols[j, T.ramp(0, 1, c)]),
                                xp[0, T.ramp((wo * ku + u) * width + c, 1, c)],
                            )
                        )
            for u in T.unroll(1, ku):
                acc[0, T.ramp(0, 1, c)] = acc[0, T.ramp(0, 1, c)] + acc[u, T.ramp(0, 1, c)]
            for lane in T.unroll(c):
                if perm[s * c + lane] >= 0:
                    y[0, perm[s * c + lane]] = epilogue(ep, acc[0, lane], bias, perm[s * c + lane])

    return finish(sell_windowed, ep)
