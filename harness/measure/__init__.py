"""Statistics, quality figures and verdicts: pure functions over measured data."""

from .stats import LatencyStats, latency_stats
from .quality import Quality, quality_figures
from .verdict import verdict

__all__ = ["LatencyStats", "latency_stats", "Quality", "quality_figures", "verdict"]
