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


#: Confidence of every interval we report for a percentile.
CONFIDENCE = 0.95


def quantile_ci_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (l, u) of the order statistics bracketing the q-quantile with at least `confidence`.

    Distribution-free: the number B of samples below the true q-quantile is Binomial(n, q) whatever the latency
    distribution, and [x_(l), x_(u)] covers the quantile when l <= B < u, so l and u are the binomial quantiles at
    (1 - confidence)/2 and (1 + confidence)/2 (exact CDF, no normal approximation). ``None`` when n is too small for
    an interval at that confidence (e.g. a p99 from 50 samples).
    """
    if n < 1 or not 0.0 < q < 1.0:
        return None
    from math import lgamma, log

    k = np.arange(n + 1)
    log_pmf = (lgamma(n + 1) - np.array([lgamma(i + 1) + lgamma(n - i + 1) for i in k])
               + k * log(q) + (n - k) * log(1.0 - q))
    cdf = np.cumsum(np.exp(log_pmf - log_pmf.max()))
    cdf /= cdf[-1]  # P(B <= k)
    alpha = (1.0 - confidence) / 2
    # l: the largest rank with P(B <= l - 1) <= alpha; u: the smallest with P(B <= u - 1) >= 1 - alpha
    below = np.nonzero(cdf <= alpha)[0]
    above = np.nonzero(cdf >= 1.0 - alpha)[0]
    if below.size == 0 or above.size == 0:
        return None
    lo, hi = int(below[-1]) + 1, int(above[0]) + 1
    if lo < 1 or hi > n:
        return None
    return lo, hi


def quantile_ci(sorted_values: np.ndarray, q: float, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The order-statistic `confidence` interval of the q-quantile of `sorted_values` (ascending), or ``None``
    when there are too few samples for one (see :func:`quantile_ci_ranks`)."""
    ranks = quantile_ci_ranks(len(sorted_values), q, confidence)
    if ranks is None:
        return None
    return float(sorted_values[ranks[0] - 1]), float(sorted_values[ranks[1] - 1])


def ratio_ci(num: tuple[float, float] | None, den: tuple[float, float] | None) -> tuple[float, float] | None:
    """Interval of num/den from the intervals of both (e.g. speedup = dense p50 / variant p50): [num_lo / den_hi,
    num_hi / den_lo]. It holds whenever both intervals do, so two independent 95 % intervals give >= 90 %."""
    if num is None or den is None or den[0] <= 0 or den[1] <= 0:
        return None
    return num[0] / den[1], num[1] / den[0]


def latency_stats(samples_ns: list[int] | np.ndarray) -> LatencyStats:
    """Percentiles (linear interpolation), their 95 % order-statistic confidence intervals, mean, sample std
    (ddof=1) and CVs of latencies given in nanoseconds."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no latency samples")
    p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    ordered = np.sort(ms)
    cis = {q: quantile_ci(ordered, q) or (None, None) for q in (0.5, 0.9, 0.99)}
    iqr = p75 - p25
    inside = ms[ms <= max(p75 + OUTLIER_FENCE * iqr, OUTLIER_MIN_RATIO * p50)]
    return LatencyStats(
        n=int(ms.size), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0, min_ms=float(ms.min()), max_ms=float(ms.max()),
        cv=_cv(inside), cv_all=_cv(ms), n_outliers=int(ms.size - inside.size),
        p50_ci_low_ms=cis[0.5][0], p50_ci_high_ms=cis[0.5][1], p90_ci_low_ms=cis[0.9][0],
        p90_ci_high_ms=cis[0.9][1], p99_ci_low_ms=cis[0.99][0], p99_ci_high_ms=cis[0.99][1],
    )
