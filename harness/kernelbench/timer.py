"""How one measurement is taken: a pause, warm-up calls, then each call timed on its own, retried while noisy.

Python callables (numpy, scipy, onnxruntime) are timed with ``perf_counter`` around one call; functions TVM built
(`schedules.build.BoundCall`) with TVM's C++ timer, one call per sample. The pause lets other thread pools stop
spinning: TVM, OpenBLAS and onnxruntime all busy-wait after work, and on two cores a spinning pool halves whoever
runs next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .plan import Plan


@dataclass(frozen=True)
class Timing:
    """Per-call times of one measurement, in microseconds; `attempts` = measurements taken to get it."""

    median_us: float
    p90_us: float
    n: int
    min_us: float = 0.0
    attempts: int = 1

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        """The Timing of per-call times given in seconds."""
        us = np.asarray(seconds, dtype=np.float64) * 1e6
        return cls(float(np.median(us)), float(np.percentile(us, 90)), int(len(us)), float(us.min()))


class Clock:
    """Times callables under one Plan: pause, warm up, estimate, then time each call."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def steady(self, measure: Callable[[], Timing]) -> Timing:
        """`measure` again (after a pause) while its median says another process interfered; the best median wins."""
        best = None
        for attempt in range(1, self.plan.attempts + 1):
            if attempt > 1:
                time.sleep(0.5)
            timing = replace(measure(), attempts=attempt)
            best = timing if best is None or timing.median_us < best.median_us else replace(best, attempts=attempt)
            if timing.median_us <= self.plan.noisy_ratio * timing.min_us:
                break
        return best

    def _runs(self, estimate_s: float, min_runs: int) -> int:
        extra = int(self.plan.budget_s / max(estimate_s, 1e-7))
        return max(min_runs, min(self.plan.max_runs, extra))

    def python(self, call: Callable[[], object], min_runs: int | None = None) -> Timing:
        """Time a Python callable, one perf_counter pair per call."""
        return self.steady(lambda: self._python(call, min_runs))

    def _python(self, call: Callable[[], object], min_runs: int | None) -> Timing:
        time.sleep(self.plan.settle_s)
        start = time.perf_counter()
        for _ in range(self.plan.warmup):
            call()
        estimate = (time.perf_counter() - start) / max(self.plan.warmup, 1)
        samples = []
        for _ in range(self._runs(estimate, min_runs or self.plan.min_runs)):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        return Timing.of(samples)

    def tvm(self, call, min_runs: int | None = None, warmup: int | None = None) -> Timing:
        """Time a function TVM built (a `schedules.build.BoundCall`) with TVM's timer, one call per sample."""
        return self.steady(lambda: self._tvm(call, min_runs, warmup))

    def _tvm(self, call, min_runs: int | None, warmup: int | None) -> Timing:
        time.sleep(self.plan.settle_s)
        warm = self.plan.warmup if warmup is None else warmup
        estimate = min(call.time_s(max(warm, 1)))
        return Timing.of(call.time_s(self._runs(estimate, min_runs or self.plan.min_runs)))
