"""Display formatting for reports.

Missing values are shown as ``n/a`` — unavailable, never zero — and numbers get a precision a reader can use
(latencies to 3 significant figures, fractions as percentages).
"""

from __future__ import annotations

import math

NA = "n/a"


def as_float(value: object) -> float | None:
    """``value`` as a finite float; ``None`` when missing, non-numeric, a bool, NaN or infinite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def sig(value: object, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures (never in exponent form for ordinary magnitudes)."""
    f = as_float(value)
    if f is None:
        return NA
    if f == 0:
        return "0"
    if abs(f) < 1e-3:
        return f"{f:.{digits - 1}e}"
    decimals = max(digits - 1 - math.floor(math.log10(abs(f))), 0)
    return f"{f:.{decimals}f}"


def pct(fraction: object, decimals: int = 1) -> str:
    """A fraction in [0, 1] as a percentage: 0.9 → ``90.0%``."""
    f = as_float(fraction)
    return NA if f is None else f"{f * 100:.{decimals}f}%"


def speedup(value: object) -> str:
    """A speed ratio: 2.345 → ``2.35×``."""
    f = as_float(value)
    return NA if f is None else f"{sig(f)}×"


def interval(low: object, high: object, unit: str = "") -> str:
    """A confidence interval: ``[1.21–1.25]`` (empty when either end is missing)."""
    lo, hi = as_float(low), as_float(high)
    return "" if lo is None or hi is None else f"[{sig(lo)}–{sig(hi)}{unit}]"


def with_ci(value: object, ci: tuple[float, float] | None, unit: str = "") -> str:
    """A statistic and its 95 % interval: ``1.23 [1.21–1.25]``; the value alone when the interval is unknown."""
    f = as_float(value)
    if f is None:
        return NA
    text = f"{sig(f)}{unit}"
    return text if ci is None else f"{text} {interval(*ci, unit)}"


def speedup_ci(value: object, ci: tuple[float, float] | None) -> str:
    """A speedup with its interval, and ``no significant difference`` when the interval contains 1."""
    text = with_ci(value, ci, "×")
    if ci is not None and ci[0] <= 1.0 <= ci[1]:
        text += " no significant difference"
    return text


def sci(value: object) -> str:
    """Small error magnitudes: 1.234e-5 → ``1.23e-05``."""
    f = as_float(value)
    if f is None:
        return NA
    return "0" if f == 0 else f"{f:.2e}"


def size(n_bytes: object) -> str:
    """A byte count with a binary unit: 1536 → ``1.50 KiB``."""
    f = as_float(n_bytes)
    if f is None:
        return NA
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(f) < 1024 or unit == "GiB":
            return f"{int(f)} B" if unit == "B" else f"{sig(f)} {unit}"
        f /= 1024
    raise AssertionError("unreachable")


def integer(value: object) -> str:
    """An integer count, ``n/a`` when missing."""
    f = as_float(value)
    return NA if f is None else str(int(f))


def text(value: object) -> str:
    """A string field: ``None`` → ``n/a``; everything else as ``str``."""
    return NA if value is None else str(value)
