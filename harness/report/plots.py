"""PNG plots of one (model, batch, device) group.

Every plot function takes a :class:`~harness.report.tables.Group` and an output path, writes a PNG and returns
the path — or ``None`` when the group has nothing worth drawing (only ERROR rows, no samples, ...). ERROR rows and
missing values are skipped; INVALID rows are drawn with hollow markers, because hiding a measurement is worse than
flagging it. :data:`PLOTS` lists the plots in display order: a new plot (energy, later) is one function plus one
:class:`PlotSpec` line.

matplotlib is imported here and only here, so the rest of the harness runs without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from . import fmt
from .fmt import as_float
from .pareto import pareto_front
from ..records import ResultRow
from .tables import Group, is_baseline, is_dense, series_key, series_label, short_label, sparsity_of

DENSE_COLOR = "black"
PEER_COLOR = "darkorange"
FRONT_COLOR = "crimson"


@dataclass(frozen=True)
class PlotSpec:
    """One kind of per-group plot: ``name`` is its file-name suffix, ``caption`` is shown under it in the HTML."""

    name: str
    caption: str
    draw: Callable[[Group, Path], Path | None]


@dataclass(frozen=True)
class _Point:
    x: float
    y: float
    valid: bool
    row: ResultRow


# --- shared drawing helpers ------------------------------------------------------------------------------------

def _figure(n_axes: int = 1, width: float = 6.4) -> tuple[Figure, list]:
    # A bare Figure on an Agg canvas: no pyplot, hence no global backend switch, no GUI, nothing to show().
    fig = Figure(figsize=(width * n_axes if n_axes > 1 else width, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, n_axes, squeeze=False)[0])


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def _colors(group: Group) -> dict[tuple[str, str], object]:
    """One stable colour per (method, block) series of the group, shared by all its plots."""
    keys = list(dict.fromkeys(series_key(r) for r in group.rows if not is_baseline(r)))
    cmap = matplotlib.colormaps["tab10"]
    return {key: cmap(i % 10) for i, key in enumerate(keys)}


def _baseline_color(row: ResultRow):
    """Our dense build and the peer runtimes: fixed colours, apart from the sparse series'."""
    return DENSE_COLOR if is_dense(row) else PEER_COLOR


def _series(group: Group, y_of: Callable[[ResultRow], float | None]) -> dict[tuple[str, str], list[_Point]]:
    """Sparse measured rows (not a dense runtime, ours or a peer's) with both a sparsity and a y value, one sorted
    list per (method, block)."""
    out: dict[tuple[str, str], list[_Point]] = {}
    for row in group.measured():
        x, y = sparsity_of(row), y_of(row)
        if is_baseline(row) or x is None or y is None:
            continue
        out.setdefault(series_key(row), []).append(_Point(x, y, row.verdict == "VALID", row))
    return {key: sorted(points, key=lambda p: p.x) for key, points in out.items()}


def _draw_series(ax, points: Sequence[_Point], color, label: str) -> None:
    ax.plot([p.x for p in points], [p.y for p in points], marker="o", color=color, label=label)
    hollow = [p for p in points if not p.valid]
    if hollow:
        ax.plot([p.x for p in hollow], [p.y for p in hollow], linestyle="none", marker="o",
                markerfacecolor="white", markeredgecolor=color, zorder=3)


def _legend(ax, any_invalid: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if any_invalid:
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="white",
                              markeredgecolor="gray"))
        labels.append("INVALID (hollow)")
    if handles:
        ax.legend(handles, labels, fontsize=8)


def _sparsity_axis(ax) -> None:
    ax.set_xlabel("sparsity (achieved fraction of weights zero, or removed by channel pruning)")
    ax.set_xlim(-0.02, 1.0)
    ax.grid(True, alpha=0.3)


def _any_invalid(series: dict[tuple[str, str], list[_Point]]) -> bool:
    return any(not p.valid for points in series.values() for p in points)


# --- the plots -------------------------------------------------------------------------------------------------

def plot_latency_vs_sparsity(group: Group, path: Path) -> Path | None:
    """Latency p50 (ms) vs sparsity, one line per method+block, error bars up to p90, dense p50 as a line."""
    series = _series(group, lambda r: as_float(r.latency_p50_ms))
    if not series:
        return None
    fig, (ax,) = _figure()
    colors = _colors(group)
    for key, points in series.items():
        _draw_series(ax, points, colors[key], series_label(key))
        # Upper-only bars p50 → p90: the tail is what a deployment feels, the median alone hides it.
        tails = [(p, as_float(p.row.latency_p90_ms)) for p in points]
        tails = [(p, p90 - p.y) for p, p90 in tails if p90 is not None and p90 >= p.y]
        if tails:
            ax.errorbar([p.x for p, _ in tails], [p.y for p, _ in tails], yerr=[[0.0] * len(tails),
                        [up for _, up in tails]], fmt="none", ecolor=colors[key], capsize=3, alpha=0.7)
    if group.baseline_p50 is not None:
        ax.axhline(group.baseline_p50, color=DENSE_COLOR, linestyle="--", linewidth=1,
                   label=f"dense p50 ({fmt.sig(group.baseline_p50)} ms)")
    # the peer runtimes' dense p50: a sparse curve under our dense line but over this one beats only a slow build
    peers = [(row, as_float(row.latency_p50_ms)) for row in group.peers]
    for row, p50 in peers:
        ax.axhline(p50, color=PEER_COLOR, linestyle="-.", linewidth=1, label=f"{row.method} p50 ({fmt.sig(p50)} ms)")
    # Explicit top: autoscaling sits exactly on the dense line and clips it and the p90 bars.
    tops = [as_float(p.row.latency_p90_ms) or p.y for points in series.values() for p in points]
    ax.set_ylim(0, 1.1 * max(tops + [group.baseline_p50 or 0.0] + [p50 for _, p50 in peers]))
    ax.set_ylabel("latency p50 (ms), bar to p90")
    ax.set_title(f"Latency vs sparsity\n{group.title}")
    _sparsity_axis(ax)
    _legend(ax, _any_invalid(series))
    return _save(fig, path)


def plot_speedup_vs_sparsity(group: Group, path: Path) -> Path | None:
    """Speedup (dense p50 / p50) vs sparsity on a log axis, with the ideal 1/(1−s) curve and the 1× line."""
    series = _series(group, group.speedup)
    if not series:
        return None  # no variant measured, or no dense baseline to divide by
    fig, (ax,) = _figure()
    colors = _colors(group)
    for key, points in series.items():
        _draw_series(ax, points, colors[key], series_label(key))
    # Ideal: time proportional to the non-zero weights. Drawn up to the largest sparsity reached (at least 0.5 so
    # the curve reads as a curve), capped below 1 where it diverges.
    s_max = min(max(0.5, max(p.x for points in series.values() for p in points)), 0.99)
    xs = [s_max * i / 100 for i in range(101)]
    ax.plot(xs, [1 / (1 - s) for s in xs], color="gray", linestyle=":", label="ideal 1/(1−s)")
    ax.axhline(1.0, color=DENSE_COLOR, linestyle="--", linewidth=1, label="dense (1×)")
    # Log scale: slowdowns (< 1×) and large speedups are both common and both must stay readable.
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("speedup vs dense (dense p50 / p50)")
    ax.set_title(f"Speedup vs sparsity\n{group.title}")
    _sparsity_axis(ax)
    _legend(ax, _any_invalid(series))
    return _save(fig, path)


def plot_quality_vs_sparsity(group: Group, path: Path) -> Path | None:
    """Accuracy vs sparsity when the model has labels; otherwise top-1 agreement with dense and max |err|."""
    if group.has_accuracy:
        panels = [(lambda r: as_float(r.accuracy), "accuracy (top-1)", False)]
    else:
        panels = [(lambda r: as_float(r.top1_agreement), "top-1 agreement with dense", False),
                  (lambda r: as_float(r.max_abs_err), "max |output − dense output|", True)]
    drawn = [(value, label, log, _series(group, value)) for value, label, log in panels]
    drawn = [d for d in drawn if d[3]]
    if not drawn:
        return None
    fig, axes = _figure(len(drawn), width=5.6 if len(drawn) > 1 else 6.4)
    colors = _colors(group)
    oneshot = _series(group, lambda r: as_float(r.accuracy_oneshot)) if group.has_accuracy else {}
    for ax, (value, label, log, series) in zip(axes, drawn):
        for skey, points in series.items():
            _draw_series(ax, points, colors[skey], series_label(skey) + (" recovered" if skey in oneshot else ""))
        for skey, points in oneshot.items():  # the same variants before recovery: dashed, hollow diamonds
            ax.plot([p.x for p in points], [p.y for p in points], linestyle="--", marker="D", markersize=5,
                    color=colors[skey], markerfacecolor="white", alpha=0.8,
                    label=f"{series_label(skey)} one-shot")
        base = None if group.baseline is None else value(group.baseline)
        if base is not None and not log:
            ax.axhline(base, color=DENSE_COLOR, linestyle="--", linewidth=1, label=f"dense ({fmt.pct(base, 2)})")
        ys = [p.y for points in series.values() for p in points]
        if log and min(ys) > 0 and max(ys) / min(ys) > 10:  # a log axis only pays off across decades
            ax.set_yscale("log")
        elif not log:
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0].capitalize()} vs sparsity\n{group.title}", fontsize=10)
        _sparsity_axis(ax)
        _legend(ax, _any_invalid(series))
    return _save(fig, path)


def _quality_for_pareto(group: Group, row: ResultRow) -> float | None:
    if group.has_accuracy:
        return as_float(row.accuracy)
    value = as_float(row.top1_agreement)
    # The dense model agrees with itself by definition, even when the runner did not record it.
    return 1.0 if value is None and is_dense(row) else value


def plot_pareto(group: Group, path: Path) -> Path | None:
    """Accuracy (or top-1 agreement) vs latency p50, Pareto front (lower latency, higher quality) highlighted.

    The front is computed over VALID rows only: an untrustworthy measurement should not claim a trade-off.
    """
    points = []
    for row in group.measured():
        quality = _quality_for_pareto(group, row)
        if quality is not None:
            points.append(_Point(as_float(row.latency_p50_ms), quality, row.verdict == "VALID", row))
    if len(points) < 2:
        return None
    fig, (ax,) = _figure()
    colors = _colors(group)
    labelled: set[str] = set()
    for p in points:
        color = _baseline_color(p.row) if is_baseline(p.row) else colors[series_key(p.row)]
        name = p.row.method if is_baseline(p.row) else series_label(series_key(p.row))
        ax.plot([p.x], [p.y], linestyle="none", marker="s" if is_baseline(p.row) else "o", color=color,
                markerfacecolor=color if p.valid else "white", label=None if name in labelled else name)
        labelled.add(name)
    # fine-tuned variants: their one-shot accuracy at the same latency (same sparsity pattern), hollow diamonds
    # joined to the recovered point by a dotted line; never on the front (not what was measured)
    before = [(p, as_float(p.row.accuracy_oneshot)) for p in points if not is_baseline(p.row)]
    before = [(p, y) for p, y in before if y is not None and group.has_accuracy]
    for i, (p, y) in enumerate(before):
        color = colors[series_key(p.row)]
        ax.plot([p.x, p.x], [y, p.y], linestyle=":", color=color, linewidth=1, zorder=1)
        ax.plot([p.x], [y], linestyle="none", marker="D", markersize=5, color=color, markerfacecolor="white",
                label="one-shot, before recovery" if i == 0 else None)
    valid = [p for p in points if p.valid]
    front = [valid[i] for i in pareto_front([(p.x, p.y) for p in valid])]
    if front:
        ax.plot([p.x for p in front], [p.y for p in front], color=FRONT_COLOR, linewidth=1.5, zorder=1,
                label="Pareto front")
        ax.scatter([p.x for p in front], [p.y for p in front], s=160, facecolors="none",
                   edgecolors=FRONT_COLOR, zorder=2)
        for p in front:
            ax.annotate(short_label(p.row), (p.x, p.y), textcoords="offset points", xytext=(6, 6), fontsize=7)
    ax.margins(0.12)  # room for the front's labels
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel("accuracy (top-1)" if group.has_accuracy else "top-1 agreement with dense")
    ax.set_title(f"Quality vs latency (Pareto front)\n{group.title}")
    ax.grid(True, alpha=0.3)
    _legend(ax, any(not p.valid for p in points))
    return _save(fig, path)


def plot_latency_distribution(group: Group, path: Path) -> Path | None:
    """Box plot of the per-iteration latencies (ms) of each variant that has samples."""
    boxes = []
    for row in group.rows:
        values = [v for v in (as_float(x) for x in group.samples.get(row.variant_key, [])) if v is not None]
        if values and row.verdict != "ERROR":
            boxes.append((row, values))
    if not boxes:
        return None
    fig, (ax,) = _figure(width=max(6.4, 0.7 * len(boxes) + 2.5))
    parts = ax.boxplot([values for _, values in boxes], patch_artist=True, showfliers=True)
    colors = _colors(group)
    for patch, (row, _) in zip(parts["boxes"], boxes):
        patch.set_facecolor("lightgray" if is_dense(row) else PEER_COLOR if is_baseline(row)
                            else colors[series_key(row)])
        patch.set_alpha(0.6)
    ax.set_xticks(range(1, len(boxes) + 1),
                  [f"{short_label(row)}\n(n={len(values)})" for row, values in boxes],
                  rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("latency per iteration (ms)")
    ax.set_title(f"Latency distribution per variant\n{group.title}")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_energy_vs_sparsity(group: Group, path: Path) -> Path | None:
    """Energy per inference (mJ, from the board's own sensor) vs sparsity, dense as a line. No plot when no
    row has a measured energy: an unavailable figure is never drawn as zero."""
    series = _series(group, lambda r: as_float(r.energy_mj))
    if not series:
        return None
    fig, (ax,) = _figure()
    colors = _colors(group)
    for key, points in series.items():
        _draw_series(ax, points, colors[key], series_label(key))
    base = None if group.baseline is None else as_float(group.baseline.energy_mj)
    if base is not None:
        ax.axhline(base, color=DENSE_COLOR, linestyle="--", linewidth=1, label=f"dense ({fmt.sig(base)} mJ)")
    tops = [p.y for points in series.values() for p in points]
    ax.set_ylim(0, 1.1 * max(tops + [base or 0.0]))
    ax.set_ylabel("energy per inference (mJ, total board power)")
    ax.set_title(f"Energy per inference vs sparsity\n{group.title}")
    _sparsity_axis(ax)
    _legend(ax, _any_invalid(series))
    return _save(fig, path)


#: Per-group plots in display order.
PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("latency", "Latency p50 vs sparsity (bars up to p90; dashed: dense p50; dash-dot: peer runtimes' "
                        "dense p50)", plot_latency_vs_sparsity),
    PlotSpec("speedup", "Speedup vs dense (dense p50 / p50) with the ideal 1/(1−s)", plot_speedup_vs_sparsity),
    PlotSpec("quality", "Accuracy, or agreement with dense, vs sparsity (fine-tuned variants: recovered solid, "
                        "one-shot dashed with hollow diamonds)", plot_quality_vs_sparsity),
    PlotSpec("pareto", "Quality vs latency; Pareto front over VALID rows circled (hollow diamonds: the one-shot "
                       "accuracy of a fine-tuned variant, before recovery)", plot_pareto),
    PlotSpec("distribution", "Per-iteration latency distribution", plot_latency_distribution),
    PlotSpec("energy", "Energy per inference vs sparsity (board sensor; dashed: dense)", plot_energy_vs_sparsity),
)


def draw_group_plots(groups: Sequence[Group], plots_dir: Path) -> list[list[tuple[PlotSpec, Path]]]:
    """Draw every :data:`PLOTS` entry for every group into ``plots_dir``.

    Returns, aligned with ``groups``, the (spec, path) of each plot actually written; a group with nothing to
    draw gets an empty list.
    """
    used: set[str] = set()
    drawn = []
    for group in groups:
        slug, n = group.slug, 2
        while slug in used:  # distinct groups whose names sanitise to the same file name
            slug, n = f"{group.slug}-{n}", n + 1
        used.add(slug)
        written = []
        for spec in PLOTS:
            out = spec.draw(group, Path(plots_dir) / f"{slug}_{spec.name}.png")
            if out is not None:
                written.append((spec, out))
        drawn.append(written)
    return drawn
