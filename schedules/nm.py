"""N:M structured sparse fp32 matmul y[M, N] = x[M, K] @ W[N, K]^T (2:4 and general N:M along K).

A weight is N:M sparse along K when every group of m consecutive columns of a row (the last
group zero-padded) holds at most n nonzeros. We store n slots per group: the values and each
value's position, so the weight costs n/m of its dense bytes plus one byte per slot.

Layout (the vector lane runs over `vn` consecutive output rows, as in the packed dense kernel):
``values[ceil(N/vn), slots, vn]`` float32 and ``index[ceil(N/vn), slots, vn]`` uint8, slot
``s`` of a row block belonging to group ``s // n``. Groups are walked in *windows* of ``W``
columns of x (``W // m`` whole groups); ``index`` is a value's column relative to its window.
Each slot then needs x at a different column per lane: on x86 the window of x sits in one
vector register and a variable permute (``vpermps``) picks every lane's element, one
instruction per slot and batch row; elsewhere the lanes are loaded one by one (TVM's
scalarised indirect load), which is correct everywhere and slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from .cpu import ACC_SCOPE, NO_EPILOGUE, TARGET_CHAINS, CpuInfo, Epilogue, finish, largest_divisor_at_most
from .tiles import store_tile, sum_partials, zero_tile

#: Variable permutes over one vector register: (isa, lanes) -> LLVM intrinsic (a, int32 idx) -> a[idx].
_PERMUTES = {
    ("avx512", 16): "llvm.x86.avx512.permvar.sf.512",
    ("avx2", 8): "llvm.x86.avx2.permps",
}


def _groups(weight: np.ndarray, m: int) -> np.ndarray:
    """[N, ceil(K/m), m] view of the weight, zero-padded along K to whole groups."""
    n_rows, k = weight.shape
    groups = -(-k // m)
    padded = np.zeros((n_rows, groups * m), dtype=weight.dtype)
    padded[:, :k] = weight
    return padded.reshape(n_rows, groups, m)


def satisfies_nm(weight: np.ndarray, n: int, m: int) -> bool:
    """Whether every group of `m` consecutive elements along K (axis 1) of [N, K] `weight` has <= `n` nonzeros."""
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < n <= m, got {n}:{m}")
    return bool((np.count_nonzero(_groups(weight, m), axis=2) <= n).all())


def prune_nm(weight: np.ndarray, n: int, m: int) -> np.ndarray:
    """Magnitude N:M pruning along K: in each group of `m` consecutive columns of a row keep the `n` largest |w|.

    Returns a new array of `weight`'s shape and dtype; ties keep the earlier column. A last group
    shorter than `m` (K not a multiple of m) keeps at most `n` of its columns too.
    """
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < n <= m, got {n}:{m}")
    groups = _groups(weight, m)
    # stable sort on -|w|: the first n positions of each group are the ones kept
    order = np.argsort(-np.abs(groups), axis=2, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    pruned = np.where(keep, groups, 0).reshape(weight.shape[0], -1)[:, : weight.shape[1]]
    return np.ascontiguousarray(pruned, dtype=weight.dtype)


@dataclass(frozen=True)
class NMLayout:
    """How an N:M weight is laid out for one CPU.

    Attributes:
        n, m: at most n nonzeros per m consecutive columns.
        vn: output rows per vector (the lane).
        window: columns of x one permute chooses from (a whole vector register, or m).
        stride: columns of x per window step (``window // m`` whole groups).
        permute: LLVM intrinsic of the variable permute, or None (lanes loaded one by one).
    """

    n: int
    m: int
    vn: int
    window: int
    stride: int
    permute: str | None

    @property
    def slots_per_window(self) -> int:
        """Stored values per row per window step."""
        return self.stride // self.m * self.n


def choose_layout(n: int, m: int, cpu: CpuInfo) -> NMLayout:
    """The N:M layout for `cpu`: a register-wide window and a permute on x86 AVX2/AVX-512, else a window of m."""
    permute = _PERMUTES.get((cpu.isa, cpu.lanes))
    if permute is not None and m <= cpu.lanes:
        return NMLayout(n, m, cpu.lanes, cpu.lanes, cpu.lanes // m * m, permute)
    return NMLayout(n, m, cpu.lanes, m, m, None)


@dataclass(frozen=True)
class NMMatrix:
    """A [N, K] N:M sparse weight in the kernel's layout.

    Attributes:
        shape: (N, K) of the dense weight.
        layout: the NMLayout it was packed for.
        values: float32 [ceil(N/vn), slots, vn]; slot s of row block b for lane v is row b*vn + v.
        index: uint8 [ceil(N/vn), slots, vn]; column of the value relative to its window start
            (window w starts at column w * layout.stride; slot s is in window s // slots_per_window).
    """

    shape: tuple[int, int]
    layout: NMLayout
    values: np.ndarray
    index: np.ndarray

    @property
    def windows(self) -> int:
        """Window steps along K."""
        return self.values.shape[1] // self.layout.slots_per_window

    @property
    def padded_k(self) -> int:
        """Columns of x the kernel reads (K zero-padded so the last window's full register load stays in bounds)."""
        lay = self.layout
        return (self.windows - 1) * lay.stride + lay.window

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays: values + index."""
        return self.values.nbytes + self.index.nbytes

    def to_dense(self) -> np.ndarray:
        """The dense [N, K] weight (for tests and checks)."""
        lay = self.layout
        blocks, slots, vn = self.values.shape
        spw = lay.slots_per_window
        starts = (np.arange(slots) // spw * lay.stride)[None, :, None]
        cols = starts + self.index.astype(np.int64)
        out = np.zeros((blocks, vn, self.padded_k), np.float32)
        b, s, v = np.meshgrid(np.arange(blocks), np.arange(slots), np.arange(vn), indexing="ij")
        np.add.at(out, (b, v, cols), self.values)
        n_rows, k = self.shape
        return out.reshape(blocks * vn, -1)[:n_rows, :k]


def to_nm(weight: np.ndarray, n: int, m: int, layout: NMLayout) -> NMMatrix:
    """Pack an N:M sparse [N, K] weight (see `satisfies_nm`) into `layout`. Raises ValueError if it is not N:M."""
    if (layout.n, layout.m) != (n, m):
        raise ValueError(f"layout is for {layout.n}:{layout.m}, not {n}:{m}")
    if not satisfies_nm(weight, n, m):
        raise ValueError(f"weight is not {n}:{m} sparse along K")
    n_rows, k = weight.shape
    vn = layout.vn
    blocks = -(-n_rows // vn)
    groups_per_window = layout.stride // m
    windows = -(-(-(-k // m)) // groups_per_window)
    groups = windows * groups_per_window
    padded = np.zeros((blocks * vn, groups * m), np.float32)
    padded[:n_rows, :k] = weight
    grouped = padded.reshape(blocks * vn, groups, m)
    # the n kept positions of each group, nonzeros first (in column order), then zeros to fill the slots
    pos = np.argsort(grouped == 0, axis=2, kind="stable")[:, :, :n]
    vals = np.take_along_axis(grouped, pos, axis=2)
    col_in_window = (np.arange(groups) % groups_per_window * m)[None, :, None] + pos
    values = vals.reshape(blocks, vn, groups * n).transpose(0, 2, 1)
    index = col_in_window.reshape(blocks, vn, groups * n).transpose(0, 2, 1)
    return NMMatrix(
        (n_rows, k),
        layout,
        np.ascontiguousarray(values, dtype=np.float32),
        np.ascontiguousarray(index, dtype=np.uint8),
    )


@dataclass(frozen=True)
class NMTiling:
    """Register tiling: `mt` batch rows per tile (divides M), `ku` partial sums per row (batch-1 latency)."""

    mt: int
    ku: int


def choose_tiling(m: int, layout: NMLayout, cpu: CpuInfo) -> NMTiling:
    """mt batch rows share each slot's values and indices; each row keeps one x window and ku accumulators."""
    registers = cpu.accumulator_registers
    mt = largest_divisor_at_most(m, max(1, registers // 3))
    ku = max(1, min(TARGET_CHAINS, (registers - mt) // mt) // mt)
    spw = layout.slots_per_window
    return NMTiling(mt=mt, ku=largest_divisor_at_most(spw, ku))


def nm_func(m: int, matrix: NMMatrix, tiling: NMTiling, ep: Epilogue = NO_EPILOGUE) -> tvm.tirx.PrimFunc:
    """TensorIR kernel (x[M, K], values, index, [bias]) -> y[M, N], parallel over blocks of vn rows."""
    lay = matrix.layout
    n_rows, k = matrix.shape
    blocks, slots, vn = matrix.values.shape
    spw, windows, stride, width = lay.slots_per_window, matrix.windows, lay.stride, lay.window
    kp = matrix.padded_k
    full_blocks = n_rows // vn
    mt, ku = tiling.mt, tiling.ku
    permute = lay.permute
    ivec, fvec = f"int32x{vn}", f"float32x{vn}"

    @T.prim_func(private=True)
    def nm(
        x: T.Buffer((m, k), "float32"),
        values: T.Buffer((blocks, slots, vn), "float32"),
        index: T.Buffer((blocks, slots, vn), "uint8"),
        bias: T.Buffer((n_rows,), "float32"),
        y: T.Buffer((m, n_rows), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        if kp != k:
            xp = T.alloc_buffer((m, kp), "float32")
            for mm in T.parallel(m):
                for kk in range(kp):
                    xp[mm, kk] = T.if_then_else(kk < k, x[mm, T.min(kk, k - 1)], T.float32(0))
        else:
            xp = T.decl_buffer((m, kp), "float32", data=x.data)
        for nb in T.parallel(blocks):
            acc = T.alloc_buffer((ku, mt, vn), "float32", scope=ACC_SCOPE)
            for mo in range(m // mt):
                zero_tile(acc, ku, mt, vn)
                for w in range(windows):
                    for s in T.unroll(spw):
                        for mi in T.unroll(mt):
                            if permute is not None:
                                acc[s % ku, mi, T.ramp(0, 1, vn)] = acc[s % ku, mi, T.ramp(0, 1, vn)] + values[
                                    nb, w * spw + s, T.ramp(0, 1, vn)
                                ] * T.call_llvm_pure_intrin(
                                    fvec,
                                    permute,
                                    xp[mo * mt + mi, T.ramp(w * stride, 1, width)],
                                    T.Cast(ivec, index[nb, w * spw + s, T.ramp(0, 1, vn)]),
                                )
                            else:
                                for v in T.vectorized(vn):
                                    acc[s % ku, mi, v] = acc[s % ku, mi, v] + values[nb, w * spw + s, v] * xp[
                                        mo * mt + mi, w * stride + T.Cast("int32", index[nb, w * spw + s, v])
                                    ]
                sum_partials(acc, ku, mt, vn)
                store_tile(y, acc, ep, bias, mo * mt, nb * vn, mt, vn, nb < full_blocks, n_rows - full_blocks * vn)

    return finish(nm, ep)
