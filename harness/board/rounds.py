"""Rounds of timing and when they are enough: the statistics the runner needs on the device to decide whether to
extend a measurement, and that the host reports (``harness.measure.stats`` imports them from here, one source).

A row's latency is measured in several rounds, each with its own warm-up; the variants of one model and batch take
their rounds in turn (A B C A B C ...), so drift in clocks or load hits all of them alike. A measurement is
*settled* when the 95 % confidence interval of its median is narrow and its rounds agree; an unsettled one gets more
rounds, up to a cap, before the host calls it INVALID with the bound that failed.
"""

from __future__ import annotations

from math import exp, lgamma, log

#: Confidence of every interval we report for a percentile.
CONFIDENCE = 0.95


def quantile_ci_ranks(n: int, q: float, confidence: float = CONFIDENCE):
    """1-based ranks (l, u) of the order statistics bracketing the q-quantile with at least ``confidence``, or
    ``None`` when ``n`` is too small for an interval at that confidence (e.g. a p99 from 50 samples).

    Distribution-free: the number B of samples below the true q-quantile is Binomial(n, q) whatever the latency
    distribution, and [x_(l), x_(u)] covers the quantile when l <= B < u, so l and u come from the binomial CDF at
    (1 - confidence)/2 and (1 + confidence)/2 (exact, no normal approximation).
    """
    if n < 1 or not 0.0 < q < 1.0:
        return None
    alpha = (1.0 - confidence) / 2
    log_q, log_p = log(q), log(1.0 - q)
    base = lgamma(n + 1)
    cdf, lo, hi = 0.0, None, None
    for k in range(n + 1):  # P(B <= k), accumulated
        cdf += exp(base - lgamma(k + 1) - lgamma(n - k + 1) + k * log_q + (n - k) * log_p)
        if cdf <= alpha:
            lo = k + 1  # the largest rank l with P(B <= l - 1) <= alpha
        if hi is None and cdf >= 1.0 - alpha:
            hi = k + 1  # the smallest rank u with P(B <= u - 1) >= 1 - alpha
            break
    if lo is None or hi is None or hi > n:
        return None
    return lo, hi


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def median_ci_halfwidth(samples) -> float | None:
    """Half the width of the median's 95 % interval relative to the median (0.01 = ±1 %), ``None`` without one."""
    ordered = sorted(samples)
    ranks = quantile_ci_ranks(len(ordered), 0.5)
    mid = median(ordered) if ordered else 0
    if ranks is None or mid <= 0:
        return None
    return (ordered[ranks[1] - 1] - ordered[ranks[0] - 1]) / 2.0 / mid


def round_spread(round_p50s, pooled_p50: float) -> float | None:
    """How far the rounds' medians disagree: their sample standard deviation relative to the pooled median (0.02 =
    a round's median typically lies within ±2 %); ``None`` with fewer than two rounds. A standard deviation, not the
    range: the range of k rounds grows with k, so extending a measurement would make it look worse."""
    k = len(round_p50s)
    if k < 2 or pooled_p50 <= 0:
        return None
    mean = sum(round_p50s) / k
    return (sum((v - mean) ** 2 for v in round_p50s) / (k - 1)) ** 0.5 / pooled_p50


def unsettled(samples, round_p50s, *, max_ci: float, max_spread: float):
    """What keeps a measurement from being settled, as (bound name, value, limit) tuples; empty when settled."""
    failed = []
    width = median_ci_halfwidth(samples)
    if width is None or width > max_ci:
        failed.append(("ci", width, max_ci))
    spread = round_spread(round_p50s, median(samples) if samples else 0)
    if spread is None or spread > max_spread:
        failed.append(("spread", spread, max_spread))
    return failed
