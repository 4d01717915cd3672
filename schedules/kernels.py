"""One way to make any of our kernels for a given weight: the rewrite emits them, the chooser times them.

A *candidate* is ``(kind, block)``: ``("dense", None)`` or ``("bsr", (r, c))``. :func:`make_kernel` turns a
candidate plus a [N, K] weight and batch M into the PrimFunc and the constant arrays it takes after ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import bsr, dense
from .cpu import CpuInfo

Candidate = tuple[str, "tuple[int, int] | None"]

#: Block shapes the chooser may time, largest first; the BSR kernel's vector lane runs along r.
BSR_BLOCKS = ((16, 1), (8, 1), (4, 1), (1, 1))
#: A block shape is worth timing only if storing the weight in it adds at most this much (zero padding).
BLOCK_FILL_LIMIT = 1.5
#: Below this fraction of zeros no sparse format can win (indices cost more than the skipped work): not timed.
MIN_ZEROS = 0.2


@dataclass(frozen=True)
class KernelImpl:
    """A kernel ready to emit: ``func(x, *consts, y)``; ``weight_bytes`` = bytes of ``consts``."""

    kind: str
    block: tuple[int, int] | None
    func: object  # tvm.tirx.PrimFunc
    consts: tuple[np.ndarray, ...]
    nnz_blocks: int
    weight_bytes: int
    name: str


def candidates(weight: np.ndarray, *, limit: float = BLOCK_FILL_LIMIT) -> list[Candidate]:
    """Dense, plus (for weights at least ``MIN_ZEROS`` zero) every BSR block shape that fits K and stores at
    most ``limit`` x the nonzeros; 1x1 (CSR) always qualifies."""
    out: list[Candidate] = [("dense", None)]
    nnz = max(int(np.count_nonzero(weight)), 1)
    if 1.0 - nnz / weight.size < MIN_ZEROS:
        return out
    k = weight.shape[1]
    for block in BSR_BLOCKS:
        if k % block[1]:
            continue
        stored = bsr.stored_blocks(weight, block) * block[0] * block[1]
        if stored <= limit * nnz or block == (1, 1):
            out.append(("bsr", block))
    return out


def make_kernel(candidate: Candidate, weight: np.ndarray, m: int, cpu: CpuInfo) -> KernelImpl:
    """The PrimFunc and constants computing ``x[m, K] · weightᵀ`` with ``candidate``."""
    kind, block = candidate
    n, k = weight.shape
    if kind == "dense":
        tiling = dense.choose_tiling(m, cpu)
        packed = dense.pack_weight(weight, tiling.vn)
        return KernelImpl("dense", None, dense.dense_func(m, n, k, tiling), (packed,), 0, int(packed.nbytes),
                          f"dense_{m}x{n}x{k}")
    if kind == "bsr":
        matrix = bsr.to_bsr(weight, block)
        func = bsr.bsr_func(m, matrix, bsr.choose_tiling(m, block, cpu))
        return KernelImpl("bsr", tuple(block), func, (matrix.data, matrix.indices, matrix.indptr),
                          matrix.nnz_blocks, int(matrix.nbytes), f"bsr_{n}x{k}_b{block[0]}x{block[1]}")
    raise ValueError(f"unknown kernel kind {kind!r}; known: dense, bsr")


def label(candidate: Candidate) -> str:
    """``dense`` or ``bsr 16x1``: how a candidate is named in records and reports."""
    kind, block = candidate
    return kind if block is None else f"{kind} {block[0]}x{block[1]}"
