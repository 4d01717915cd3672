"""results.csv: one line per row, exactly :data:`CSV_COLUMNS` in that order (derived columns such as the speedup
stay out, so the file is a faithful copy of what was stored)."""

from __future__ import annotations

import csv
from pathlib import Path

from .tables import row_sort_key

CSV_COLUMNS = ["run_id", "model", "method", "sparsity_target", "sparsity_actual", "block", "batch", "target",
               "device", "transport", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms",
               "latency_cv", "n_iter", "accuracy", "top1_agreement", "max_abs_err", "energy_mj", "energy_status",
               "artifact_bytes", "peak_rss_mb", "verdict", "error"]


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` (in table order) to ``path`` as CSV with header :data:`CSV_COLUMNS`; returns the path.

    ``None`` and missing keys become empty cells (unavailable, not zero); extra keys are ignored.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="", extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=row_sort_key):
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return path
