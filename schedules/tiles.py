"""TensorIR pieces the CPU register-tile kernels (dense, BSR, N:M) share, as TVMScript macros.

Each of those kernels keeps, per parallel iteration, a tile of accumulators ``acc[ku, rows, lanes]``:
``ku`` independent partial sums (they hide FMA latency where the tile alone is too small), ``rows``
unrolled, ``lanes`` the vector lane. The kernels differ in how they fill the tile; zeroing it, summing
the partial sums into ``acc[0]`` and storing that through the epilogue are the same, and written once
here. A macro is inlined where it is called, so a kernel's TensorIR is that of the loops written out.

All loops over the tile are unrolled (the lane vectorized): constant indices let LLVM keep ``acc`` in
registers (see ``cpu.ACC_SCOPE``).
"""

from __future__ import annotations

from tvm.script import tirx as T

from .cpu import epilogue


@T.macro
def zero_tile(acc, ku, rows, lanes):
    """acc[u, a, b] = 0 for every partial sum u < ku, a < rows, b < lanes."""
    for u in T.unroll(ku):
        for a in T.unroll(rows):
            for b in T.vectorized(lanes):
                acc[u, a, b] = T.float32(0)


@T.macro
def sum_partials(acc, ku, rows, lanes):
    """acc[0] += acc[u] for u = 1 .. ku-1: the tile's total in acc[0]."""
    for u in T.unroll(1, ku):
        for a in T.unroll(rows):
            for b in T.vectorized(lanes):
                acc[0, a, b] = acc[0, a, b] + acc[u, a, b]


@T.macro
def store_tile(y, acc, ep, bias, row0, col0, rows, lanes, full, tail):
    """y[row0 + a, col0 + b] = epilogue(ep, acc[0, a, b]): the tile's rows are batch rows of y, its lanes columns.

    `full` (a TIR condition) says the tile's `lanes` columns all exist; where it is false only the
    first `tail` do (the last tile of a ragged N), stored one by one.
    """
    if full:
        for a in T.unroll(rows):
            for b in T.vectorized(lanes):
                y[row0 + a, col0 + b] = epilogue(ep, acc[0, a, b], bias, col0 + b)
    else:
        for a in T.unroll(rows):
            for b in T.unroll(tail):
                y[row0 + a, col0 + b] = epilogue(ep, acc[0, a, b], bias, col0 + b)
