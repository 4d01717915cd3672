"""The Pareto front of a latency/quality trade-off (lower latency and higher quality are better)."""

from __future__ import annotations

from collections.abc import Sequence

from .fmt import as_float


def pareto_front(points: Sequence[tuple[object, object]]) -> list[int]:
    """Indices of the non-dominated ``(latency_ms, quality)`` points, ordered by latency ascending.

    A point is dominated when another point has latency <= and quality >= with at least one strictly better.
    Exact duplicates do not dominate each other, so both stay on the front. Points with a missing or non-finite
    coordinate are never on the front.
    """
    candidates = []
    for i, (lat, qual) in enumerate(points):
        lat_f, qual_f = as_float(lat), as_float(qual)
        if lat_f is not None and qual_f is not None:
            candidates.append((lat_f, -qual_f, i))
    # Sorted by latency then by quality descending: a point is on the front iff it beats the best quality seen
    # among all points at least as fast (or exactly duplicates the last front point).
    candidates.sort()
    front: list[int] = []
    best: tuple[float, float] | None = None  # (latency, quality) of the last front point
    for lat, neg_qual, i in candidates:
        qual = -neg_qual
        if best is None or qual > best[1] or (lat, qual) == best:
            front.append(i)
            best = (lat, qual)
    return front
