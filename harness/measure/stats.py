"""Latency statistics over per-iteration samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of individually timed iterations. All times in milliseconds; ``cv`` = std / mean (unitless)."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float

    def to_dict(self) -> dict:
        return asdict(self)


def latency_stats(samples_ns: list[int] | np.ndarray) -> LatencyStats:
    """Percentiles (linear interpolation), mean, sample std (ddof=1) and CV of latencies given in nanoseconds."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    return LatencyStats(
        n=int(ms.size), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=mean, std_ms=std,
        min_ms=float(ms.min()), max_ms=float(ms.max()), cv=std / mean if mean > 0 else float("nan"),
    )
