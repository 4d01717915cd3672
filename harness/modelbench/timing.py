"""Interleaved A/B timing of several engines running the same model in this process.

Every round runs each engine for a few calls, one after the other, rotating which goes first; each call is timed
on its own (``perf_counter_ns``). A burst from another process then lands in every engine's samples alike instead
of in one engine's whole measurement, and the per-round ratios pair calls made seconds apart. A short pause before
each engine's turn lets the previous engine's thread pool stop spinning (TVM and onnxruntime both busy-wait after
work; on two cores a spinning pool halves whoever runs next).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RoundPlan:
    """How long the interleaved rounds of one model take.

    Attributes:
        rounds: rounds over all engines.
        budget_s: seconds of calls per engine per round aimed at (each engine gets at least one call a round).
        max_calls: calls per engine per round at most.
        warmup_s: untimed calls per engine before the first round, for at least this long (and at least one).
        settle_s: pause before each engine's turn, seconds.
    """

    rounds: int = 11
    budget_s: float = 0.3
    max_calls: int = 200
    warmup_s: float = 0.3
    settle_s: float = 0.05


def summary(samples_s: list[float]) -> dict:
    """Median and spread of per-call times: ``median_ms``, ``p10_ms``, ``p90_ms``, ``min_ms``, ``n``."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"median_ms": round(float(np.median(ms)), 4), "p10_ms": round(float(np.percentile(ms, 10)), 4),
            "p90_ms": round(float(np.percentile(ms, 90)), 4), "min_ms": round(float(ms.min()), 4), "n": int(ms.size)}


def interleaved(engines: dict[str, Callable[[], object]], plan: RoundPlan) -> tuple[dict, list[dict]]:
    """Time ``engines`` (name -> one synchronous call) in interleaved rounds.

    Returns (per engine: :func:`summary` of all its calls; per round: each engine's median ms that round).
    """
    calls = {}
    for name, call in engines.items():  # warm up, and size each engine's turn from its warm-up speed
        start, count = time.perf_counter(), 0
        while count == 0 or time.perf_counter() - start < plan.warmup_s:
            call()
            count += 1
        per_call = (time.perf_counter() - start) / count
        calls[name] = max(1, min(plan.max_calls, int(plan.budget_s / max(per_call, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in engines}
    rounds = []
    names = list(engines)
    for number in range(plan.rounds):
        order = names[number % len(names):] + names[:number % len(names)]
        medians = {}
        for name in order:
            time.sleep(plan.settle_s)
            call, got = engines[name], []
            for _ in range(calls[name]):
                start = time.perf_counter_ns()
                call()
                got.append((time.perf_counter_ns() - start) / 1e9)
            samples[name].extend(got)
            medians[name] = round(float(np.median(got)) * 1e3, 4)
        rounds.append(medians)
    return {name: summary(s) for name, s in samples.items()}, rounds


def paired_ratio(rounds: list[dict], slow: str, fast: str) -> dict | None:
    """``slow``'s time over ``fast``'s, round by round: median, min and max of the per-round ratios (> 1: ``fast``
    is faster). None when either engine is missing."""
    ratios = [r[slow] / r[fast] for r in rounds if r.get(slow) and r.get(fast)]
    if not ratios:
        return None
    return {"median": round(float(np.median(ratios)), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
