"""VALID / INVALID with the reasons, in the spirit of MLPerf LoadGen: a number only counts with its verdict."""

from __future__ import annotations

from .quality import Quality
from .stats import LatencyStats


def verdict(stats: LatencyStats, quality: Quality, *, min_valid_runs: int, max_cv: float,
            ref_rtol: float, max_outliers: float = 0.02) -> tuple[str, list[str]]:
    """(``"VALID"`` | ``"INVALID"``, reasons). Each reason names the failed constraint and what to do."""
    reasons = []
    if stats.n < min_valid_runs:
        reasons.append(f"too few iterations: {stats.n} < {min_valid_runs}; raise [measure].min_runs or min_s")
    if stats.cv > max_cv:
        reasons.append(
            f"latency CV {stats.cv:.1%} above {max_cv:.0%}: the device was noisy; close other load, pin clocks "
            "(performance governor) or raise [measure].min_s"
        )
    if stats.n_outliers > max_outliers * stats.n:
        reasons.append(
            f"{stats.n_outliers} of {stats.n} iterations ({stats.n_outliers / stats.n:.1%}) were outliers above "
            f"max(Q3 + 3 IQR, 2 p50) (max {stats.max_ms:.3g} ms vs p50 {stats.p50_ms:.3g} ms): something interrupted the run; "
            "close other load and rerun"
        )
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
