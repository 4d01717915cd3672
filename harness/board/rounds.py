"""Rounds of timing and when they are enough: the statistics the runner needs on the device to decide whether to
extend a measurement, and that the host reports (``harness.measure.stats`` imports them from here, one source).

A row's latency is measured in several rounds, each with its own warm-up; the variants of one model and batch take
their rounds in turn (A B C A B C ...), so drift in clocks or load hits all of them alike.

Rounds *agree* when their medians lie within ±``max_spread`` of each other's middle (:func:`agreeing_rounds`, the
largest such group). A shared machine (a VM's neighbours, a daemon waking up) slows whole stretches of seconds by
10-50 %: a round taken then is *disturbed*. The row's statistics come from its agreeing rounds, the disturbed ones
are named in the record, and the measurement is *settled* only when the agreeing rounds are a majority of the
rounds taken, at least ``min_rounds`` of them, and the 95 % confidence interval of their median is narrow. An
unsettled measurement gets more rounds, up to a cap, before the host calls it INVALID with the bound that failed.
Pooling every round instead would shift the median by whatever fraction of the time a neighbour was busy, and
that is not a property of the model.
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


def agreeing_rounds(round_p50s, max_spread: float) -> list:
    """Indices (ascending) of the largest group of rounds whose medians lie within ±``max_spread`` of the group's
    middle (the highest at most ``(1 + 2·max_spread)`` times the lowest); of equally large groups the one whose
    middle is nearest the median of all rounds. Every round when there are fewer than three (nothing to outvote)."""
    k = len(round_p50s)
    if k < 3:
        return list(range(k))
    order = sorted(range(k), key=lambda i: round_p50s[i])
    centre = median(round_p50s)
    best, best_off = [], float("inf")
    for a, low_i in enumerate(order):
        top = round_p50s[low_i] * (1.0 + 2.0 * max_spread)
        group = [i for i in order[a:] if round_p50s[i] <= top]
        off = abs(median([round_p50s[i] for i in group]) - centre)
        if len(group) > len(best) or (len(group) == len(best) and off < best_off):
            best, best_off = group, off
    return sorted(best)


def rounds_needed(k: int, min_rounds: int) -> int:
    """How many of ``k`` rounds must agree: a majority, and at least ``min_rounds`` (no more than were taken)."""
    return max(k // 2 + 1, min(min_rounds, k)) if k else 1


def unsettled(round_samples, *, max_ci: float, max_spread: float, min_rounds: int = 1):
    """What keeps a measurement (its samples, one list per round) from being settled, as (bound name, value, limit)
    tuples; empty when settled. Bounds: ``"agree"`` (rounds that agree, rounds needed), ``"spread"`` (standard
    deviation of the agreeing rounds' medians), ``"ci"`` (half-width of the median's 95 % interval over the
    agreeing rounds' samples)."""
    p50s = [median(r) for r in round_samples if r]
    agree = agreeing_rounds(p50s, max_spread)
    samples = [v for i in agree for v in round_samples[i]]
    failed = []
    width = median_ci_halfwidth(samples)
    if width is None or width > max_ci:
        failed.append(("ci", width, max_ci))
    needed = rounds_needed(len(p50s), min_rounds)
    if len(agree) < needed:
        failed.append(("agree", len(agree), needed))
    spread = round_spread([p50s[i] for i in agree], median(samples) if samples else 0)
    if len(p50s) >= 2 and (spread is None or spread > max_spread):
        failed.append(("spread", spread, max_spread))
    return failed
