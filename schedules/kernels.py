"""One way to make any of our kernels for a given weight: the rewrite emits them, the chooser times them.

A *candidate* is ``(kind, block)``: ``("dense", None)``, ``("bsr", (r, c))`` or ``("nm", (n, m))`` (at most n
nonzeros in every m consecutive weights along K), and on CUDA ``("tvm", None)``: TVM's default schedule of the
dense layer (dlight), which the rewrite leaves to TVM's own pipeline. ``("bsr", (1, 1))`` at batch 1 is stored and
run as SELL-C-sigma (`schedules.sell`), a CSR variant with a vector lane; at larger batches as BSR.
:func:`make_kernel` turns a candidate plus a [N, K] weight and batch M into the PrimFunc and the constant arrays it
takes after ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import bsr, cuda, dense, nm, sell
from .cpu import NO_EPILOGUE, CpuInfo, Epilogue
from .cuda import GpuInfo

Candidate = tuple[str, "tuple[int, int] | None"]

#: Block shapes the chooser may time, largest first; the BSR kernel's vector lane runs along r.
BSR_BLOCKS = ((16, 1), (8, 1), (4, 1), (1, 1))
#: A block shape is worth timing only if storing the weight in it adds at most this much (zero padding).
BLOCK_FILL_LIMIT = 1.5
#: N:M patterns looked for, sparsest first; a weight gets the first one it satisfies as a candidate.
NM_PATTERNS = ((1, 4), (2, 8), (2, 4), (4, 8))
#: Below this fraction of zeros no sparse format can win (indices cost more than the skipped work): not timed.
MIN_ZEROS = 0.2


@dataclass(frozen=True)
class KernelImpl:
    """A kernel ready to emit: ``func(x, *consts, y)``; ``weight_bytes`` = bytes of ``consts``.

    ``block`` is (r, c) for "bsr", (n, m) for "nm", None for "dense" and "tvm"; ``nnz_blocks`` counts stored
    r x c blocks ("bsr") or stored value slots ("nm").
    """

    kind: str
    block: tuple[int, int] | None
    func: object  # tvm.tirx.PrimFunc
    consts: tuple[np.ndarray, ...]
    nnz_blocks: int
    weight_bytes: int
    name: str


def candidates(weight: np.ndarray, *, limit: float = BLOCK_FILL_LIMIT) -> list[Candidate]:
    """Dense, plus (for weights at least ``MIN_ZEROS`` zero) every BSR block shape that fits K and stores at
    most ``limit`` x the nonzeros (1x1, CSR, always qualifies), plus the sparsest N:M pattern of
    ``NM_PATTERNS`` the weight satisfies along K, if any."""
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
    pattern = nm_pattern(weight)
    if pattern is not None:
        out.append(("nm", pattern))
    return out


def cuda_candidates(weight: np.ndarray, *, limit: float = BLOCK_FILL_LIMIT) -> list[Candidate]:
    """What may run a layer on a CUDA target: our dense kernel, TVM's default schedule, and the BSR blocks of
    `candidates` (there is no N:M CUDA kernel)."""
    ours = [c for c in candidates(weight, limit=limit) if c[0] != "nm"]
    return ours[:1] + [("tvm", None)] + ours[1:]


def nm_pattern(weight: np.ndarray) -> tuple[int, int] | None:
    """The first (sparsest) pattern of ``NM_PATTERNS`` that ``weight`` satisfies along K, or None."""
    return next((p for p in NM_PATTERNS if nm.satisfies_nm(weight, *p)), None)


def make_kernel(candidate: Candidate, weight: np.ndarray, m: int, cpu: CpuInfo | GpuInfo,
                ep: Epilogue = NO_EPILOGUE) -> KernelImpl:
    """The PrimFunc and constants computing ``x[m, K] · weightᵀ`` with ``candidate``, then `ep` (bias, ReLU).

    `cpu` describes the target: a `CpuInfo` (LLVM CPU kernels) or a `cuda.GpuInfo` (CUDA
    kernels: dense and BSR, and ``("tvm", None)``, TVM's own dlight-scheduled kernel, for timing
    it). With ``ep.bias`` the kernel takes the bias [N] as one more argument after ``consts``
    (the caller passes it; it is not among ``consts``).
    """
    kind, block = candidate
    n, k = weight.shape
    if isinstance(cpu, GpuInfo):
        return _make_cuda_kernel(candidate, weight, m, cpu, ep)
    if kind == "dense":
        tiling = dense.choose_tiling(m, cpu)
        packed = dense.pack_weight(weight, tiling.vn)
        return KernelImpl("dense", None, dense.dense_func(m, n, k, tiling, ep), (packed,), 0, int(packed.nbytes),
                          f"dense_{m}x{n}x{k}{ep.suffix}")
    if kind == "bsr" and tuple(block) == (1, 1) and m == 1:
        # unstructured at batch 1: CSR's sliced-ELLPACK variant, whose vector lane is rows (see sell.py)
        sliced = sell.to_sell(weight, sell.choose_layout(cpu))
        return KernelImpl("bsr", (1, 1), sell.sell_func(sliced, ep), (sliced.values, sliced.cols, sliced.slice_ptr,
                          sliced.perm), sliced.nnz, int(sliced.nbytes), f"csr_{n}x{k}{ep.suffix}")
    if kind == "bsr":
        matrix = bsr.to_bsr(weight, block)
        func = bsr.bsr_func(m, matrix, bsr.choose_tiling(m, block, cpu), ep)
        return KernelImpl("bsr", tuple(block), func, (matrix.data, matrix.indices, matrix.indptr),
                          matrix.nnz_blocks, int(matrix.nbytes), f"bsr_{n}x{k}_b{block[0]}x{block[1]}{ep.suffix}")
    if kind == "nm":
        layout = nm.choose_layout(*block, cpu)
        matrix = nm.to_nm(weight, *block, layout)
        func = nm.nm_func(m, matrix, nm.choose_tiling(m, layout, cpu), ep)
        return KernelImpl("nm", tuple(block), func, (matrix.values, matrix.index), int(matrix.values.size),
                          int(matrix.nbytes), f"nm_{n}x{k}_{block[0]}_{block[1]}{ep.suffix}")
    raise ValueError(f"unknown kernel kind {kind!r}; known: dense, bsr, nm")


def _make_cuda_kernel(candidate: Candidate, weight: np.ndarray, m: int, gpu: GpuInfo, ep: Epilogue) -> KernelImpl:
    kind, block = candidate
    n, k = weight.shape
    if kind == "tvm":
        func, consts = cuda.tvm_default_func(m, weight, gpu.device_target(), ep)
        return KernelImpl("tvm", None, func, consts, 0, sum(int(c.nbytes) for c in consts),
                          f"tvm_dense_{m}x{n}x{k}{ep.suffix}")
    if kind == "dense":
        packed = cuda.pack_dense(weight)
        return KernelImpl("dense", None, cuda.dense_func(m, n, k, ep), (packed,), 0, int(packed.nbytes),
                          f"cuda_dense_{m}x{n}x{k}{ep.suffix}")
    if kind == "bsr":
        matrix = bsr.to_bsr(weight, block)
        return KernelImpl("bsr", tuple(block), cuda.bsr_func(m, matrix, ep), (matrix.data, matrix.indices,
                          matrix.indptr), matrix.nnz_blocks, int(matrix.nbytes),
                          f"cuda_bsr_{n}x{k}_b{block[0]}x{block[1]}{ep.suffix}")
    raise ValueError(f"kernel kind {kind!r} has no CUDA kernel; known on CUDA: dense, bsr, tvm")


def label(candidate: Candidate) -> str:
    """``dense``, ``tvm``, ``bsr 16x1`` or ``nm 2:4``: how a candidate is named in records and reports."""
    kind, block = candidate
    if block is None:
        return kind
    return f"nm {block[0]}:{block[1]}" if kind == "nm" else f"{kind} {block[0]}x{block[1]}"
