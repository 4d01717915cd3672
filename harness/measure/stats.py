"""Latency statistics over per-iteration samples."""

from __future__ import annotations

import numpy as np

from ..board.rounds import CONFIDENCE, agreeing_rounds, quantile_ci_ranks, round_spread
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


def latency_stats(samples_ns: list[int] | np.ndarray, round_sizes: list[int] | None = None, *,
                  max_spread: float = 0.03) -> LatencyStats:
    """Percentiles (linear interpolation), their 95 % order-statistic confidence intervals, mean, sample std
    (ddof=1) and CVs of latencies given in nanoseconds, and the rounds' medians and spread.

    ``round_sizes`` cuts ``samples_ns`` (every round's samples, in the order taken) into rounds. The statistics then
    come from the rounds that agree (within ±``max_spread``, :func:`~harness.board.rounds.agreeing_rounds`); the
    others are *disturbed* and named in ``rounds_disturbed``. Without rounds every sample counts."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no latency samples")
    round_p50 = disturbed = spread = None
    if round_sizes:
        cuts = np.cumsum([0, *round_sizes])
        per_round = [ms[cuts[i]:cuts[i + 1]] for i in range(len(round_sizes))]
        round_p50 = tuple(float(np.median(r)) if r.size else float("nan") for r in per_round)
        agree = agreeing_rounds(round_p50, max_spread)
        disturbed = tuple(i for i in range(len(per_round)) if i not in agree)
        ms = np.concatenate([per_round[i] for i in agree])
    p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    if round_p50:
        spread = round_spread([round_p50[i] for i in agree], float(p50))
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
        round_p50_ms=round_p50, round_spread=spread, rounds_disturbed=disturbed,
    )


def model_time(repeats_ms: list[float] | None) -> dict:
    """ResultRow columns of the C++ timer's repeats (ms per call each): their median and its 95 % interval."""
    if not repeats_ms:
        return {}
    ordered = np.sort(np.asarray(repeats_ms, dtype=np.float64))
    ci = quantile_ci(ordered, 0.5) or (None, None)
    return {"model_time_p50_ms": float(np.median(ordered)), "model_time_ci_low_ms": ci[0],
            "model_time_ci_high_ms": ci[1], "model_time_repeats": int(ordered.size)}
