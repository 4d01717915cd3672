"""VALID / INVALID with the reasons, in the spirit of MLPerf LoadGen: a number only counts with its verdict.

The statistic we print is the median, so the verdict asks what limits trust in the median: its 95 % confidence
interval (precision) and the agreement of the timing rounds (reproducibility: drift and load between rounds), plus
enough samples and outputs checked against the reference. The CV and the outlier count describe the tail; they are
reported, not gates (thousands of samples pin a µs-scale median to well under 1 % whatever the tail).
"""

from __future__ import annotations

from .quality import Quality
from ..board.rounds import rounds_needed
from .stats import LatencyStats


def verdict(stats: LatencyStats, quality: Quality, *, min_valid_runs: int, ref_rtol: float, max_ci: float = 0.03,
            max_spread: float = 0.03, min_rounds: int = 1, clock_range_khz: tuple[int, int] | None = None,
            max_clock_change: float = 0.05) -> tuple[str, list[str]]:
    """(``"VALID"`` | ``"INVALID"``, reasons). Each reason names the bound that failed, by how much, and what to do.

    Args:
        max_ci: largest half-width of the median's 95 % interval, relative to the median.
        max_spread: how far a round's median may lie from the others' (rounds outside are disturbed, left out of the
            statistics; a majority of rounds must agree), and the largest standard deviation of the agreeing
            rounds' medians, relative to the median.
        min_rounds: rounds that must agree (``[measure].rounds``).
        clock_range_khz: lowest and highest CPU clock seen around the rounds (``None``: not exposed).
        max_clock_change: largest (high - low) / high of those clocks.
    """
    reasons = []
    if stats.n < min_valid_runs:
        reasons.append(f"too few iterations: {stats.n} < {min_valid_runs}; raise [measure].min_runs or min_s")
    if stats.p50_ci_low_ms is None or stats.p50_ci_high_ms is None:
        reasons.append(f"no 95 % interval of the median from {stats.n} samples; raise [measure].min_runs")
    else:
        half = (stats.p50_ci_high_ms - stats.p50_ci_low_ms) / 2 / stats.p50_ms if stats.p50_ms > 0 else float("inf")
        if half > max_ci:
            reasons.append(f"median not precise enough: 95 % CI ±{half:.1%} > ±{max_ci:.1%} "
                           f"(by {half / max_ci:.1f}x) after {len(stats.round_p50_ms or ())} round(s); the device was "
                           "noisy: close other load, pin clocks, or raise [measure].min_s / max_rounds")
    rounds = len(stats.round_p50_ms or ())
    if min_rounds > 1 and rounds < min(min_rounds, 2):
        reasons.append(f"only {rounds} timing round(s): reproducibility unchecked; [measure].rounds >= 2")
    disturbed = set(stats.rounds_disturbed or ())
    needed = rounds_needed(rounds, min_rounds)
    if rounds and rounds - len(disturbed) < needed:
        p50s = ", ".join(f"{v:.4g}" + ("*" if i in disturbed else "") for i, v in enumerate(stats.round_p50_ms))
        reasons.append(f"rounds disagree: only {rounds - len(disturbed)} of {rounds} rounds' medians ({p50s} ms; * "
                       f"outside) agree within ±{max_spread:.1%}, {needed} needed (a majority, at least "
                       f"{min(min_rounds, rounds)}): load or clocks changed during the run; close other load, pin "
                       "clocks, raise [measure].max_rounds, and rerun")
    elif stats.round_spread is not None and stats.round_spread > max_spread:
        p50s = ", ".join(f"{v:.4g}" for i, v in enumerate(stats.round_p50_ms) if i not in disturbed)
        reasons.append(f"rounds disagree: their medians ({p50s} ms) differ by ±{stats.round_spread:.1%} (std) > "
                       f"±{max_spread:.1%} (by {stats.round_spread / max_spread:.1f}x) after {rounds} rounds: load or "
                       "clocks changed during the run; close other load, pin clocks, and rerun")
    if clock_range_khz and clock_range_khz[1] > 0:
        low, high = clock_range_khz
        change = (high - low) / high
        if change > max_clock_change:
            reasons.append(f"CPU clocks moved during the rounds: {low / 1e3:.0f}-{high / 1e3:.0f} MHz ({change:.0%} > "
                           f"{max_clock_change:.0%}): throttling or a scaling governor; use the performance "
                           "governor (the profile's prepare commands) and keep the board cool")
    if quality.ref_max_abs_err is None:
        reasons.append("no reference outputs to check the compiled model against")
    else:
        tolerance = ref_rtol * max(quality.ref_scale or 0.0, 1.0)
        if quality.ref_max_abs_err > tolerance:
            reasons.append(
                f"outputs off the reference of the same model: max abs error {quality.ref_max_abs_err:.3g} > "
                f"{tolerance:.3g}; the compiled kernels are wrong for this variant"
            )
    return ("INVALID" if reasons else "VALID"), reasons
