"""Quick speed check of our kernels against numpy: `python -m schedules.bench`.

Times one weight shape at a few batch sizes: numpy dense (`x @ W.T`), our packed dense kernel
and our BSR kernel on the same weight pruned in blocks. Each time is the median over `repeat`
rounds of the mean of `number` back-to-back calls, in microseconds.

TVM sizes its thread pool once per process, from TVM_NUM_THREADS or else (on x86) half the
logical CPUs, assuming SMT: a single thread on a 2-vCPU VM, while numpy uses both. We set
TVM_NUM_THREADS to the CPU count unless the caller did, before the pool exists.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tvm


def default_target() -> tvm.target.Target:
    """A portable x86-64 AVX2 target (x86-64-v3 + FMA): the reference for speed checks."""
    import tvm

    return tvm.target.Target(
        {
            "kind": "llvm",
            "mtriple": "x86_64-linux-gnu",
            "mcpu": "x86-64-v3",
            "mattr": ["+avx2", "+fma"],
            "num-cores": os.cpu_count() or 1,
        }
    )


def build_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target, name: str = "kernel"):
    """Compile one of our PrimFuncs on its own; returns the callable packed function.

    Kernels are built private (Relax names them when they are added to a module), so a
    standalone build must give them an exported symbol first.
    """
    import tvm

    return tvm.compile(func.with_attr("global_symbol", name), target=target)[name]


def block_pruned(n: int, k: int, block: tuple[int, int], sparsity: float, rng: np.random.Generator) -> np.ndarray:
    """A random [n, k] float32 weight with a `sparsity` fraction of its r x c blocks zeroed."""
    r, c = block
    keep = rng.random((-(-n // r), -(-k // c))) >= sparsity
    mask = np.kron(keep, np.ones(block, dtype=bool))[:n, :k]
    return rng.standard_normal((n, k)).astype(np.float32) * mask


def _median_us(call, number: int, repeat: int) -> float:
    call()  # warm-up: first-touch page faults, cold caches
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            call()
        rounds.append((time.perf_counter() - start) / number)
    return float(np.median(rounds)) * 1e6


def quick_compare(
    n: int = 768,
    k: int = 3072,
    batches: tuple[int, ...] = (1, 16),
    sparsity: float = 0.9,
    block: tuple[int, int] = (16, 1),
    target: tvm.target.Target | None = None,
    number: int = 10,
    repeat: int = 30,
) -> list[dict]:
    """Print and return median µs of numpy dense, our dense and our BSR kernel for W[n, k].

    The BSR kernel runs on the weight pruned to `sparsity` in `block` blocks; numpy and our
    dense kernel run on the same (pruned) weight as a plain dense matrix.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    import tvm

    from . import bsr

    target = target or default_target()
    rng = np.random.default_rng(0)
    weight = block_pruned(n, k, block, sparsity, rng)
    matrix = bsr.to_bsr(weight, block)
    print(
        f"W[{n}, {k}], {sparsity:.0%} sparse in {block[0]}x{block[1]} blocks, "
        f"{tvm.runtime.num_threads()} TVM threads, target {target}"
    )
    print(f"{'batch':>5} {'numpy us':>10} {'dense us':>10} {'bsr us':>10} {'np/dense':>9} {'np/bsr':>7}")
    rows = []
    for m in batches:
        x = rng.standard_normal((m, k)).astype(np.float32)
        row = {"n": n, "k": k, "batch": m, **_time_batch(x, weight, matrix, target, number, repeat)}
        rows.append(row)
        print(
            f"{m:>5} {row['numpy_us']:>10.1f} {row['dense_us']:>10.1f} {row['bsr_us']:>10.1f} "
            f"{row['numpy_us'] / row['dense_us']:>8.2f}x {row['numpy_us'] / row['bsr_us']:>6.2f}x"
        )
    return rows


def _time_batch(x, weight, matrix, target, number: int, repeat: int) -> dict[str, float]:
    """Median µs of numpy, our dense and our BSR kernel on one input; checks both kernels' output."""
    import tvm

    from . import bsr, dense
    from .cpu import cpu_info

    cpu = cpu_info(target)
    m = x.shape[0]
    n, k = weight.shape
    tiling = dense.choose_tiling(m, cpu)
    dense_fn = build_kernel(dense.dense_func(m, n, k, tiling), target)
    bsr_fn = build_kernel(bsr.bsr_func(m, matrix, bsr.choose_tiling(m, matrix.block, cpu)), target)
    dense_args = [tvm.runtime.tensor(a) for a in (x, dense.pack_weight(weight, tiling.vn))]
    bsr_args = [tvm.runtime.tensor(a) for a in (x, matrix.data, matrix.indices, matrix.indptr)]
    y_dense, y_bsr = (tvm.runtime.tensor(np.zeros((m, n), np.float32)) for _ in range(2))
    times = {
        "numpy_us": _median_us(lambda: x @ weight.T, number, repeat),
        "dense_us": _median_us(lambda: dense_fn(*dense_args, y_dense), number, repeat),
        "bsr_us": _median_us(lambda: bsr_fn(*bsr_args, y_bsr), number, repeat),
    }
    for y in (y_dense, y_bsr):
        np.testing.assert_allclose(y.numpy(), x @ weight.T, rtol=1e-4, atol=1e-4)
    return times


if __name__ == "__main__":
    quick_compare()
