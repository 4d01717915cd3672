"""Latency statistics over per-iteration samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


#: An outlier is an interruption (a preempted thread, a page-fault storm), not the model's latency: a sample
#: above both Tukey's outer fence (Q3 + 3·IQR) and twice the median. The second bound matters for the tight
#: distributions of µs-scale kernels, where Q3 + 3·IQR is only a few percent above the median.
OUTLIER_FENCE = 3.0
OUTLIER_MIN_RATIO = 2.0


@dataclass(frozen=True)
class LatencyStats:
    """Summary of individually timed iterations. Times in milliseconds; CVs unitless (std / mean).

    Percentiles, mean, std, min and max use every sample. ``cv`` is computed without the outliers (above
    max(Q3 + 3·IQR, 2·p50)) and ``n_outliers`` counts them: on a shared or virtual machine a handful of 100x
    stalls among thousands of runs would otherwise dominate the std and hide how steady the rest is; the verdict
    checks the outlier count separately. ``cv_all`` is the plain CV over every sample.
    """

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float
    cv_all: float
    n_outliers: int

    def to_dict(self) -> dict:
        return asdict(self)


def _cv(values: np.ndarray) -> float:
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return std / mean if mean > 0 else float("nan")


def latency_stats(samples_ns: list[int] | np.ndarray) -> LatencyStats:
    """Percentiles (linear interpolation), mean, sample std (ddof=1) and CVs of latencies given in nanoseconds."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no latency samples")
    p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    iqr = p75 - p25
    inside = ms[ms <= max(p75 + OUTLIER_FENCE * iqr, OUTLIER_MIN_RATIO * p50)]
    return LatencyStats(
        n=int(ms.size), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0, min_ms=float(ms.min()), max_ms=float(ms.max()),
        cv=_cv(inside), cv_all=_cv(ms), n_outliers=int(ms.size - inside.size),
    )
