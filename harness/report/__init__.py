"""Reports: a self-contained HTML page, results.csv, summary.md and PNG plots from stored result rows.

The report only reads rows; it never compiles or runs anything. matplotlib is imported when plots are drawn, not
when this package is imported, so ``from harness.report import write_csv`` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..records import ResultRow
from .csv_export import CSV_COLUMNS, write_csv, write_csv_stream
from .pareto import pareto_front
from .tables import group_rows

__all__ = ["CSV_COLUMNS", "pareto_front", "write_csv", "write_csv_stream", "write_report"]


def write_report(rows: Sequence[ResultRow], out_dir: str | Path, *, title: str = "sparsebench report",
                 samples: dict[str, list[float]] | None = None, run_info: dict | None = None,
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``out_dir/report.html``, ``results.csv``, ``summary.md`` and PNG plots under ``out_dir/plots/``.

    ``rows`` are stored results (units on the :class:`~harness.records.ResultRow` fields; ``None`` =
    unavailable). ``samples`` maps variant_key to per-iteration latencies in ms. ``run_info`` (run_id,
    created_at, target, device metadata, ...) fills the environment table. ``notes`` are the run's notes (a peer
    runtime unavailable on the device), shown after the verdicts.

    Returns ``{"html": path, "csv": path, "summary": path, "plots": [paths]}``.
    """
    # Imported here, not at the top: plots pulls in matplotlib, needed only when a report is written.
    from .html_page import render_html
    from .plots import draw_group_plots
    from .summary import render_summary

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_rows(rows, samples)
    figures = draw_group_plots(groups, out / "plots")
    html_path = out / "report.html"
    html_path.write_text(render_html(groups, figures, title=title, run_info=run_info, notes=notes), encoding="utf-8")
    summary_path = out / "summary.md"
    summary_path.write_text(render_summary(groups, title=title, run_info=run_info, notes=notes), encoding="utf-8")
    return {"html": html_path, "csv": write_csv(rows, out / "results.csv"), "summary": summary_path,
            "plots": [path for drawn in figures for _, path in drawn]}
