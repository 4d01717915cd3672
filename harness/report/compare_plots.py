"""PNG plots of a :class:`~harness.report.compare.Comparison`: speedup heatmaps (board × sparsity) and Pareto
fronts of every board on one figure. Same habits as :mod:`.plots` (whose figure helpers and quality notion are
reused): Agg canvas, data and a path in, the path out, ``None`` when there is nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, PercentFormatter

from . import fmt
from .compare import Board, Comparison
from .fmt import as_float
from .pareto import pareto_front
from .plots import _figure, _quality_for_pareto, _save
from .tables import is_baseline


def _slug(*parts: object) -> str:
    raw = "_".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in raw)


def plot_speedup_heatmap(comparison: Comparison, model: str, batch: int, series: str, path: Path) -> Path | None:
    """Boards (rows) × sparsity targets (columns) of one model, batch and method (+block): each cell the speedup vs
    that board's dense row, annotated; INVALID cells hatched, ERROR cells hatched and named, missing cells blank."""
    cells = [c for c in comparison.cells if c.model == model and c.variant.batch == batch
             and c.variant.series == series and not is_baseline(c.row)]
    if not cells:
        return None
    boards: list[Board] = [b for b in comparison.boards(model) if any(c.board == b for c in cells)]
    levels = sorted({c.variant.sparsity for c in cells})
    values = np.full((len(boards), len(levels)), np.nan)
    by = {(c.board, c.variant.sparsity): c for c in cells}
    for i, board in enumerate(boards):
        for j, level in enumerate(levels):
            cell = by.get((board, level))
            speedup = None if cell is None else cell.speedup
            if speedup:
                values[i, j] = math.log2(speedup)
    finite = values[np.isfinite(values)]
    if finite.size == 0 and not any(c.row.verdict == "ERROR" for c in cells):
        return None  # nothing measured against a dense row, and no error to show
    span = max(float(np.abs(finite).max()) if finite.size else 0.0, 0.25)
    fig, (ax,) = _figure(width=max(5.0, 1.3 * len(levels) + 3.5))
    fig.set_size_inches(fig.get_size_inches()[0], max(2.6, 0.55 * len(boards) + 1.8))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#eeeeee")  # grey: no speedup (missing, ERROR)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-span, vmax=span, aspect="auto")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("speedup vs the board's dense (log scale)")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{2 ** v:.3g}×"))
    for i, board in enumerate(boards):
        for j, level in enumerate(levels):
            cell = by.get((board, level))
            if cell is None:
                text = "—"
            elif cell.row.verdict == "ERROR":
                text = "ERROR"
            else:
                text = fmt.speedup(cell.speedup)
                if cell.row.verdict == "INVALID":
                    text += "\nINVALID"
            if cell is not None and cell.row.verdict != "VALID":
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx" if cell.row.verdict ==
                                       "ERROR" else "//", edgecolor="dimgray", linewidth=0))
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(levels)), [fmt.pct(level, 0) for level in levels])
    ax.set_yticks(range(len(boards)), [b.label for b in boards], fontsize=7)
    ax.set_xlabel("sparsity target")
    ax.set_title(f"Speedup vs dense · {model} · batch {batch} · {series}\n(hatched: INVALID /, ERROR ×)", fontsize=10)
    return _save(fig, path)


def plot_pareto_boards(comparison: Comparison, model: str, batch: int, path: Path) -> Path | None:
    """Quality (accuracy, else top-1 agreement with dense) vs latency p50 of every board on one figure: one colour
    per board, hollow markers for INVALID rows, each board's Pareto front (over its VALID rows) as a line."""
    cells = [c for c in comparison.cells if c.model == model and c.variant.batch == batch and c.measured]
    boards = [b for b in comparison.boards(model) if any(c.board == b for c in cells)]
    points = {}
    for board in boards:
        mine = []
        for c in cells:
            if c.board == board:
                quality = _quality_for_pareto(c.group, c.row)
                if quality is not None:
                    mine.append((as_float(c.row.latency_p50_ms), quality, c.row.verdict == "VALID"))
        if mine:
            points[board] = mine
    if sum(len(p) for p in points.values()) < 2:
        return None
    fig, (ax,) = _figure(width=7.5)
    cmap = matplotlib.colormaps["tab10"]
    for k, (board, mine) in enumerate(points.items()):
        color = cmap(k % 10)
        for x, y, valid in mine:
            ax.plot([x], [y], linestyle="none", marker="o", color=color, markerfacecolor=color if valid else "white")
        valid = [(x, y) for x, y, ok in mine if ok]
        front = [valid[i] for i in pareto_front(valid)]
        if front:
            ax.plot([x for x, _ in front], [y for _, y in front], color=color, linewidth=1.5, label=board.label)
            ax.scatter([x for x, _ in front], [y for _, y in front], s=110, facecolors="none", edgecolors=color)
        else:
            ax.plot([], [], color=color, marker="o", markerfacecolor="white", label=f"{board.label} (no VALID row)")
    ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="gray",
            label="INVALID (hollow)")
    ax.margins(0.1)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel("accuracy (top-1), else top-1 agreement with dense")
    ax.set_title(f"Quality vs latency, Pareto front per board\n{model} · batch {batch}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, title="board (line: its Pareto front over VALID rows)", title_fontsize=7)
    return _save(fig, path)


def draw_compare_plots(comparison: Comparison, plots_dir: Path) -> list[tuple[str, Path]]:
    """Every heatmap (per model, batch and sparse method) and Pareto figure (per model and batch); returns
    (caption, path) of each one written."""
    out: list[tuple[str, Path]] = []
    plots_dir = Path(plots_dir)
    for model in comparison.models:
        variants = comparison.variants(model)
        for batch in sorted({v.batch for v in variants}):
            for series in dict.fromkeys(v.series for v in variants if v.batch == batch):
                path = plot_speedup_heatmap(comparison, model, batch, series,
                                            plots_dir / f"{_slug(model, f'b{batch}', series)}_heatmap.png")
                if path is not None:
                    out.append((f"Speedup vs each board's dense: {model}, batch {batch}, {series}", path))
            path = plot_pareto_boards(comparison, model, batch, plots_dir / f"{_slug(model, f'b{batch}')}_pareto.png")
            if path is not None:
                out.append((f"Quality vs latency, every board's Pareto front: {model}, batch {batch}", path))
    return out
