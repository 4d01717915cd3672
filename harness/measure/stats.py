"""Latency statistics over per-iteration samples."""

from __future__ import annotations

import numpy as np

from ..records import LatencyStats


#: An outlier is an interruption (a preempted thread, a page-fault storm), not the model's latency: a sample
#: above both Tukey's outer fence (Q3 + 3·IQR) and twice the median. The second bound matters for the tight
#: distributions of µs-scale kernels, where Q3 + 3·IQR is only a few percent above the median.
OUTLIER_FENCE = 3.0
OUTLIER_MIN_RATIO = 2.0


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
