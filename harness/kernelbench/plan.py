"""What the kernel suite measures: shapes, batches, sparsities, formats, how long each measurement may take, and the
random weights it times."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SHAPES = ((768, 768), (3072, 768), (768, 3072), (1024, 1024))
BATCHES = (1, 16)
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
#: BSR block shapes timed, as (r, c) over W[N, K].
BLOCKS = ((1, 1), (4, 1), (8, 1), (16, 1), (1, 4), (4, 4))
#: The N:M pattern timed, at its own sparsity.
NM_PATTERN = (2, 4)


@dataclass(frozen=True)
class Plan:
    """What the suite measures and how long it may spend on each measurement.

    Attributes:
        shapes: weight shapes (N, K).
        batches: batch sizes M.
        sparsities: fractions of zero weights (each BSR block shape is pruned to each).
        blocks: BSR block shapes (r, c).
        nm: the N:M pattern, timed at sparsity 1 - n/m (if that sparsity is in the plan).
        min_runs: timed calls per measurement at least (the issue asks for >= 20).
        max_runs: timed calls at most.
        budget_s: seconds of timed calls per measurement beyond `min_runs` (fast kernels get more runs).
        slow_min_runs: min_runs for tvm-default when one call takes more than `slow_call_s`.
        slow_call_s: see slow_min_runs.
        warmup: untimed calls before timing.
        settle_s: pause before each measurement so other thread pools stop spinning.
        attempts: times a measurement is taken at most; another attempt (after a pause) is made
            while the median exceeds `noisy_ratio` x the fastest call, the mark of another process
            taking a core mid-run (on 2 cores a descheduled worker thread costs a whole
            scheduler time slice, milliseconds). The attempt with the lowest median is kept.
        noisy_ratio: see attempts.
        passes: rounds over all measurements (a minute or more apart); each record keeps the
            round with the lowest median. Other processes only ever add time, and on a shared
            machine a burst of theirs can cover a whole measurement.
    """

    shapes: tuple[tuple[int, int], ...] = SHAPES
    batches: tuple[int, ...] = BATCHES
    sparsities: tuple[float, ...] = SPARSITIES
    blocks: tuple[tuple[int, int], ...] = BLOCKS
    nm: tuple[int, int] | None = NM_PATTERN
    min_runs: int = 20
    max_runs: int = 200
    budget_s: float = 0.3
    slow_min_runs: int = 5
    slow_call_s: float = 0.02
    warmup: int = 5
    settle_s: float = 0.05
    attempts: int = 3
    noisy_ratio: float = 2.0
    passes: int = 2


FULL = Plan()
#: --quick: the sparsities the issue's numbers are stated at, fewer and shorter repeats.
QUICK = replace(FULL, sparsities=(0.5, 0.9), max_runs=100, budget_s=0.1, warmup=3, settle_s=0.03)


def block_pruned(n: int, k: int, block: tuple[int, int], sparsity: float, rng: np.random.Generator) -> np.ndarray:
    """A random [n, k] float32 weight with a `sparsity` fraction of its r x c blocks zeroed."""
    r, c = block
    keep = rng.random((-(-n // r), -(-k // c))) >= sparsity
    mask = np.kron(keep, np.ones(block, dtype=bool))[:n, :k]
    return rng.standard_normal((n, k)).astype(np.float32) * mask


def sparse_weights(plan: Plan, shape: tuple[int, int], sparsity: float,
                   rng: np.random.Generator) -> list[tuple[str, tuple[int, int], np.ndarray]]:
    """(format, block, weight) for every format the plan times at this sparsity."""
    from schedules.nm import prune_nm

    n, k = shape
    out = [("bsr", block, block_pruned(n, k, block, sparsity, rng)) for block in plan.blocks if k % block[1] == 0]
    if plan.nm and abs(sparsity - (1 - plan.nm[0] / plan.nm[1])) < 1e-9:
        out.append(("nm", plan.nm, prune_nm(rng.standard_normal((n, k)).astype(np.float32), *plan.nm)))
    return out
