"""results.csv: one line per row, exactly :data:`CSV_COLUMNS` in that order (derived columns such as the speedup
stay out, so the file is a faithful copy of what was stored)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from ..records import ResultRow
from .tables import row_sort_key

#: :class:`~harness.records.ResultRow` fields written to results.csv, in this order, under these names (units as
#: documented on the fields: latencies ms, energy mJ, sizes bytes, RSS MB, fractions in [0, 1]).
CSV_COLUMNS = ["run_id", "model", "method", "sparsity_target", "sparsity_actual", "block", "batch", "target",
               "device", "transport", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms",
               "latency_cv", "n_iter", "accuracy", "top1_agreement", "max_abs_err", "energy_mj", "energy_status",
               "artifact_bytes", "peak_rss_mb", "verdict", "error",
               # appended (schema 4) so readers that index columns by position keep working
               "latency_p50_ci_low_ms", "latency_p50_ci_high_ms",
               # appended (schema 8): a fine-tuned variant's one-shot accuracy and training seconds
               "accuracy_oneshot", "finetune_s"]


def write_csv_stream(rows: Iterable[ResultRow], out: TextIO) -> None:
    """``rows`` (in table order) as CSV with header :data:`CSV_COLUMNS`; ``None`` is an empty cell (unavailable,
    not zero)."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in sorted(rows, key=row_sort_key):
        writer.writerow(["" if (value := getattr(row, name)) is None else value for name in CSV_COLUMNS])


def write_csv(rows: Iterable[ResultRow], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` (see :func:`write_csv_stream`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        write_csv_stream(rows, f)
    return path
