"""``sparsebench compare``: one report across devices and runs (HTML + CSV + PNG, like the single-run report).

What it shows, per model:

- a table with one line per board (run, device [target profile]) and one column per variant (method, sparsity,
  block, batch): p50 with its 95 % interval, speedup vs the dense row of the *same* run, device, model and batch
  (with the interval :meth:`~harness.report.tables.Group.speedup_ci` gives the single-run report), accuracy (or
  top-1 agreement) and energy per inference where the board measured it; INVALID and ERROR cells carry their
  reasons;
- the board-to-board spread of identical boards: rows of one run and one target profile on different devices, per
  variant the min–max of p50 and of speedup and their relative spread;
- a regression view for two runs of the same config (same ``config_hash``) on the same device: old and new p50 with
  their intervals, the ratio, and "faster"/"slower" only when the intervals do not overlap (as ``asv compare``);
- plots (:mod:`.compare_plots`): a device × sparsity heatmap of speedup per model and method, and the Pareto fronts
  (latency vs quality) of every board on one figure.

The data part (:func:`build_comparison`) is pure: rows in, tables out; matplotlib is imported only when plots are
drawn.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HarnessError
from ..records import ResultRow
from . import fmt
from .fmt import as_float
from .tables import METHOD_ORDER, Group, group_rows, problems_of

# --- the data ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Board:
    """One line of a comparison table: a device as one run saw it (``target`` = the profile it was measured with)."""

    run_id: str
    device: str
    target: str
    name: str = field(default="", compare=False)  # the farm file's board name, for rows of a farm run
    accelerator: str = "cpu"  # what ran the models: a board's CPU and GPU runs are two lines, side by side

    @property
    def label(self) -> str:
        return f"{self.run_id} · {self.short}"

    @property
    def short(self) -> str:
        """For plots, where the run id is in the title or the legend has little room."""
        where = f"[{self.target}]" if self.accelerator == "cpu" else f"[{self.target}, {self.accelerator}]"
        return f"{self.name} ({self.device}) {where}" if self.name else f"{self.device} {where}"


def _sort_sparsity(value: object) -> tuple[bool, float]:
    f = as_float(value)
    return (f is None, f or 0.0)


@dataclass(frozen=True)
class Variant:
    """One column: a variant of a model at one batch size (``sparsity`` is the target, the same on every board)."""

    method: str
    sparsity: float
    block: str
    batch: int

    @classmethod
    def of(cls, row: ResultRow) -> Variant:
        return cls(row.method, as_float(row.sparsity_target) or 0.0, row.block or "", row.batch)

    @property
    def label(self) -> str:
        parts = [self.method] + ([self.block] if self.block else [])
        if self.method not in METHOD_ORDER or METHOD_ORDER[self.method] > 1:  # not a dense runtime
            parts.append(fmt.pct(self.sparsity, 0))
        return " ".join(parts) + f" · b{self.batch}"

    @property
    def series(self) -> str:
        """method and block: one heatmap per series."""
        return f"{self.method} {self.block}" if self.block else self.method

    def sort_key(self) -> tuple:
        return (self.batch, METHOD_ORDER.get(self.method, len(METHOD_ORDER)), self.method, self.block,
                _sort_sparsity(self.sparsity))


@dataclass(frozen=True)
class Cell:
    """One (board, model, variant): the row, and its speedup vs the same board's dense row of that model and batch."""

    board: Board
    model: str
    variant: Variant
    row: ResultRow
    group: Group

    @property
    def speedup(self) -> float | None:
        return self.group.speedup(self.row)

    @property
    def speedup_ci(self) -> tuple[float, float] | None:
        return self.group.speedup_ci(self.row)

    @property
    def measured(self) -> bool:
        return self.row.verdict != "ERROR" and as_float(self.row.latency_p50_ms) is not None

    @property
    def problems(self) -> str:
        """Why the cell is not VALID (empty when it is)."""
        return "" if self.row.verdict == "VALID" else "; ".join(problems_of(self.row))

    def quality(self) -> str:
        if as_float(self.row.accuracy) is not None:
            return f"accuracy {fmt.pct(self.row.accuracy, 2)}"
        if as_float(self.row.top1_agreement) is not None:
            return f"top-1 agreement {fmt.pct(self.row.top1_agreement, 2)}"
        return "accuracy n/a"

    def energy(self) -> str:
        """Energy per inference when the board measured it, else ``unavailable`` (never a made-up number)."""
        mj = as_float(self.row.energy_mj)
        if mj is not None and self.row.energy_status == "ok":
            return f"energy {fmt.sig(mj)} mJ"
        return "energy unavailable"

    def speedup_text(self) -> str:
        if self.row is self.group.baseline:
            return "the board's dense baseline (1×)"
        if self.speedup is None:
            why = "no dense row measured on this board" if self.group.baseline is None else "not measured"
            return f"speedup n/a ({why})"
        return f"{fmt.speedup_ci(self.speedup, self.speedup_ci)} vs dense"


ONE_BOARD = "unavailable: one board of this profile"


@dataclass(frozen=True)
class Spread:
    """One variant measured on several boards of one profile in one run."""

    run_id: str
    target: str
    model: str
    variant: Variant
    boards: tuple[str, ...]  # devices with a measured cell
    p50: tuple[float, float] | None  # (min, max) ms
    speedup: tuple[float, float] | None  # (min, max)
    note: str = ""  # "unavailable: ..." when there is nothing to compare

    @staticmethod
    def relative(span: tuple[float, float] | None) -> float | None:
        """(max − min) / min: how much slower (or less sped up) the worst board is than the best."""
        if span is None or span[0] <= 0:
            return None
        return (span[1] - span[0]) / span[0]


#: A change smaller than this (relative) is not called faster/slower even when the intervals are apart: an interval
#: is of one run's samples and misses run-to-run drift (process start, memory layout), as ``asv compare``'s factor.
MIN_CHANGE = 0.05


@dataclass(frozen=True)
class Change:
    """One cell of the regression view: the same variant on the same device in an older and a newer run."""

    old: Cell
    new: Cell
    min_change: float = MIN_CHANGE

    @property
    def ratio(self) -> float | None:
        """new p50 / old p50 (above 1: slower)."""
        a, b = as_float(self.old.row.latency_p50_ms), as_float(self.new.row.latency_p50_ms)
        if not (self.old.measured and self.new.measured) or not a or b is None:
            return None
        return b / a

    @property
    def verdict(self) -> str:
        """``faster`` / ``slower`` when the two medians' intervals do not overlap and the p50 changed by at least
        ``min_change``; ``same within CI`` when they overlap, ``same within N %`` when they are apart but the change
        is smaller; ``not comparable: ...`` when either side has no p50 or no interval."""
        for side, cell in (("old", self.old), ("new", self.new)):
            if not cell.measured:
                return f"not comparable: {side} cell is {cell.row.verdict}"
            if cell.row.p50_ci is None:
                return f"not comparable: {side} cell has no p50 interval"
        (old_lo, old_hi), (new_lo, new_hi) = self.old.row.p50_ci, self.new.row.p50_ci
        if old_lo <= new_hi and new_lo <= old_hi:
            return "same within CI"
        if abs(self.ratio - 1.0) < self.min_change:
            return f"same within {self.min_change * 100:g} %"
        return "slower" if new_lo > old_hi else "faster"

    @property
    def changed(self) -> bool:
        return self.verdict in ("faster", "slower")

    def sort_key(self) -> tuple:
        verdict = self.verdict
        order = {"slower": 0, "faster": 1}.get(verdict, 2 if verdict.startswith("same") else 3)
        ratio = self.ratio
        return (order, -abs(math.log(ratio)) if ratio else 0.0, self.new.model, self.new.variant.sort_key())


@dataclass(frozen=True)
class Regression:
    """Two runs of the same config on one device; ``changes`` sorted with the changes first."""

    old_run: str
    new_run: str
    device: str
    changes: tuple[Change, ...]


@dataclass
class Comparison:
    """Everything the compare report shows; built by :func:`build_comparison`."""

    runs: list[dict]  # the runs table's records, in the order given
    cells: list[Cell]
    spreads: list[Spread]
    regressions: list[Regression]
    regression_notes: list[str]  # why the regression view does not apply (different configs, ...)
    notes: dict[str, list[str]] = field(default_factory=dict)  # run_id -> the run's notes
    min_change: float = MIN_CHANGE  # of the regression view

    def __post_init__(self) -> None:
        self._by_key = {(c.board, c.model, c.variant): c for c in self.cells}
        self._new_side = {id(ch.new): ch for reg in self.regressions for ch in reg.changes}

    @property
    def models(self) -> list[str]:
        return sorted({c.model for c in self.cells})

    def boards(self, model: str | None = None) -> list[Board]:
        order = {r["run_id"]: i for i, r in enumerate(self.runs)}
        found = {c.board for c in self.cells if model is None or c.model == model}
        return sorted(found, key=lambda b: (order.get(b.run_id, len(order)), b.device, b.target))

    def variants(self, model: str) -> list[Variant]:
        return sorted({c.variant for c in self.cells if c.model == model}, key=Variant.sort_key)

    def cell(self, board: Board, model: str, variant: Variant) -> Cell | None:
        return self._by_key.get((board, model, variant))

    def spread_of(self, cell: Cell) -> Spread | None:
        for s in self.spreads:
            if (s.run_id, s.target, s.model, s.variant) == (cell.board.run_id, cell.board.target, cell.model,
                                                             cell.variant):
                return s
        return None

    def change_of(self, cell: Cell) -> Change | None:
        """The regression entry in which ``cell`` is the newer side."""
        return self._new_side.get(id(cell))


def _cells(rows: Sequence[ResultRow]) -> list[Cell]:
    """Cells of all rows; the speedup groups are built per run (``group_rows`` groups by model, batch, device)."""
    by_run: dict[str, list[ResultRow]] = {}
    for row in rows:
        by_run.setdefault(row.run_id, []).append(row)
    cells = []
    for run_id, run_rows in by_run.items():
        for group in group_rows(run_rows):
            seen: set[Variant] = set()
            for row in group.rows:
                variant = Variant.of(row)
                if variant in seen:  # two rows of one variant (peer duplicates): keep the first, in table order
                    continue
                seen.add(variant)
                name = (row.device_meta.board if row.device_meta else None) or ""
                board = Board(run_id, row.device, row.target, name, row.accelerator or "cpu")
                cells.append(Cell(board, row.model, variant, row, group))
    return cells


def _spreads(cells: Sequence[Cell]) -> list[Spread]:
    """Per (run, profile, model, variant): the spread of p50 and speedup over the boards that measured it."""
    buckets: dict[tuple, list[Cell]] = {}
    for c in cells:
        buckets.setdefault((c.board.run_id, c.board.target, c.model, c.variant), []).append(c)
    out = []
    for (run_id, target, model, variant), members in buckets.items():
        devices = {c.board.device for c in members}
        measured = [c for c in members if c.measured]
        note = ""
        if len(devices) < 2:
            note = ONE_BOARD
        elif len(measured) < 2:
            note = f"unavailable: measured on {len(measured)} of {len(devices)} boards of this profile"
        p50s = [as_float(c.row.latency_p50_ms) for c in measured]
        speedups = [s for s in (c.speedup for c in measured) if s is not None]
        out.append(Spread(run_id, target, model, variant, tuple(sorted(c.board.device for c in measured)),
                          (min(p50s), max(p50s)) if not note else None,
                          (min(speedups), max(speedups)) if not note and len(speedups) >= 2 else None, note))
    return sorted(out, key=lambda s: (s.run_id, s.target, s.model, s.variant.sort_key()))


def _regressions(runs: Sequence[Mapping], cells: Sequence[Cell], min_change: float
                 ) -> tuple[list[Regression], list[str]]:
    """Pair each run with the previous run (by creation time) of the same config; per common device, one
    :class:`Change` per variant both measured or tried."""
    notes: list[str] = []
    if len(runs) < 2:
        return [], ["the regression view needs two runs of the same config; one run was given"]
    by_hash: dict[str, list[Mapping]] = {}
    for run in runs:
        by_hash.setdefault(run["config_hash"], []).append(run)
    pairs = []
    for same in by_hash.values():
        same = sorted(same, key=lambda r: (r["created_at"], r["run_id"]))
        pairs += list(zip(same, same[1:]))
    if not pairs:
        described = ", ".join(f"{r['run_id']} ({r['config_hash'][:12]})" for r in runs)
        notes.append(f"the regression view does not apply: no two runs share a config (config hash: {described}); "
                     "it compares runs of the same config, on the same device")
        return [], notes
    lonely = [r["run_id"] for r in runs if len(by_hash[r["config_hash"]]) == 1]
    if lonely:
        notes.append(f"not in the regression view: {', '.join(lonely)} (no other run of the same config)")
    index = {(c.board.run_id, c.board.device, c.model, c.variant): c for c in cells}
    out = []
    for old, new in pairs:
        devices_old = {c.board.device for c in cells if c.board.run_id == old["run_id"]}
        devices_new = {c.board.device for c in cells if c.board.run_id == new["run_id"]}
        common = sorted(devices_old & devices_new)
        if not common:
            notes.append(f"runs {old['run_id']} and {new['run_id']} share a config but no device "
                         f"({', '.join(sorted(devices_old)) or 'none'} vs {', '.join(sorted(devices_new)) or 'none'})")
        for device in common:
            changes = []
            for (run_id, dev, model, variant), new_cell in index.items():
                if run_id != new["run_id"] or dev != device:
                    continue
                old_cell = index.get((old["run_id"], device, model, variant))
                if old_cell is not None:
                    changes.append(Change(old_cell, new_cell, min_change))
            out.append(Regression(old["run_id"], new["run_id"], device, tuple(sorted(changes, key=Change.sort_key))))
    return out, notes


def build_comparison(runs: Sequence[Mapping], rows: Iterable[ResultRow],
                     notes: Mapping[str, list[str]] | None = None, *, min_change: float = MIN_CHANGE) -> Comparison:
    """The comparison of ``rows`` (from the runs ``runs``: records of the store's runs table, with ``run_id``,
    ``created_at``, ``config_hash``...)."""
    cells = _cells(list(rows))
    regressions, regression_notes = _regressions(runs, cells, min_change)
    return Comparison([dict(r) for r in runs], cells, _spreads(cells), regressions, regression_notes,
                      {k: list(v) for k, v in (notes or {}).items()}, min_change)


# --- CSV -----------------------------------------------------------------------------------------------------------

#: compare.csv: one line per (run, device, model, variant). Latencies ms, energy mJ, fractions in [0, 1].
COMPARE_COLUMNS = ["run_id", "device", "board", "target", "accelerator", "model", "method", "sparsity_target",
                   "sparsity_actual", "block", "batch", "verdict", "latency_p50_ms", "latency_p50_ci_low_ms",
                   "latency_p50_ci_high_ms", "speedup", "speedup_ci_low", "speedup_ci_high", "accuracy", "top1_agreement",
                   "energy_mj", "energy_status",
                   "spread_boards", "spread_p50_min_ms", "spread_p50_max_ms", "spread_p50_rel", "spread_speedup_min",
                   "spread_speedup_max", "spread_speedup_rel", "spread_note", "regression_base_run",
                   "regression_ratio", "regression_verdict", "problems"]


def _blank(value: object) -> object:
    return "" if value is None else value


def csv_records(comparison: Comparison) -> list[dict]:
    """The :data:`COMPARE_COLUMNS` record of every cell, in report order (``None`` = unavailable)."""
    out = []
    for model in comparison.models:
        for board in comparison.boards(model):
            for variant in comparison.variants(model):
                cell = comparison.cell(board, model, variant)
                if cell is None:
                    continue
                row, ci = cell.row, cell.speedup_ci
                spread, change = comparison.spread_of(cell), comparison.change_of(cell)
                p_span = spread.p50 if spread else None
                s_span = spread.speedup if spread else None
                out.append({
                    "run_id": board.run_id, "device": board.device, "board": board.name or None,
                    "target": board.target, "accelerator": board.accelerator, "model": model,
                    "method": row.method, "sparsity_target": row.sparsity_target,
                    "sparsity_actual": row.sparsity_actual, "block": row.block, "batch": row.batch,
                    "verdict": row.verdict, "latency_p50_ms": row.latency_p50_ms,
                    "latency_p50_ci_low_ms": row.latency_p50_ci_low_ms,
                    "latency_p50_ci_high_ms": row.latency_p50_ci_high_ms, "speedup": cell.speedup,
                    "speedup_ci_low": ci[0] if ci else None, "speedup_ci_high": ci[1] if ci else None,
                    "accuracy": row.accuracy, "top1_agreement": row.top1_agreement,
                    "energy_mj": row.energy_mj if row.energy_status == "ok" else None,
                    "energy_status": row.energy_status,
                    "spread_boards": " ".join(spread.boards) if spread and not spread.note else None,
                    "spread_p50_min_ms": p_span[0] if p_span else None,
                    "spread_p50_max_ms": p_span[1] if p_span else None,
                    "spread_p50_rel": Spread.relative(p_span),
                    "spread_speedup_min": s_span[0] if s_span else None,
                    "spread_speedup_max": s_span[1] if s_span else None,
                    "spread_speedup_rel": Spread.relative(s_span),
                    "spread_note": spread.note if spread else None,
                    "regression_base_run": change.old.board.run_id if change else None,
                    "regression_ratio": change.ratio if change else None,
                    "regression_verdict": change.verdict if change else None,
                    "problems": cell.problems or None,
                })
    return out


def write_compare_csv(comparison: Comparison, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COMPARE_COLUMNS)
        for record in csv_records(comparison):
            writer.writerow([_blank(record[c]) for c in COMPARE_COLUMNS])
    return path


# --- HTML ----------------------------------------------------------------------------------------------------------

_EXTRA_CSS = """
td.cell { white-space: nowrap; } td.cell div { margin: 0; } td.missing { color: #999; }
td.ERROR { background: #fbe9eb !important; } td.INVALID { background: #fff4e0 !important; }
.slower { color: #b00020; font-weight: 600; } .faster { color: #176f2c; font-weight: 600; }
"""


def _cell_html(cell: Cell | None, e) -> str:
    if cell is None:
        return '<td class="missing" title="this board did not measure this variant in this run">—</td>'
    row = cell.row
    if row.verdict == "ERROR":
        return f'<td class="cell ERROR" title="{e(cell.problems)}"><div class="ERROR">ERROR</div>' \
               f"<div>{e(cell.problems)}</div></td>"
    lines = [f"p50 {fmt.with_ci(row.latency_p50_ms, row.p50_ci, ' ms')}", cell.speedup_text(), cell.quality(),
             cell.energy()]
    divs = "".join(f"<div>{e(x)}</div>" for x in lines)
    tips = [cell.problems] if cell.problems else []
    if row.energy_status and row.energy_status != "ok":
        tips.append(f"energy {row.energy_status}")
    title = f' title="{e("; ".join(tips))}"' if tips else ""
    verdict = f'<div class="INVALID">INVALID: {e(cell.problems)}</div>' if row.verdict == "INVALID" else ""
    cls = "cell INVALID" if row.verdict == "INVALID" else "cell"
    return f'<td class="{cls}"{title}>{verdict}{divs}</td>'


def _model_tables(comparison: Comparison, e) -> list[str]:
    out = ['<section id="models">', "<h2>Per model: boards × variants</h2>",
           '<p class="note">One line per board (run · device [target profile]). Each cell: p50 with its 95 % interval; '
           "speedup = the dense p50 of the same run, device, model and batch / this p50, with the interval from "
           "both medians' intervals ('no significant difference' when it contains 1); accuracy (or top-1 agreement "
           "with dense); energy per inference where the board measured it. INVALID and ERROR cells say why (also on "
           "hover); — = not measured on that board.</p>"]
    for model in comparison.models:
        variants = comparison.variants(model)
        out.append(f"<h3>{e(model)}</h3>")
        out.append('<div class="scroll"><table class="compare"><thead><tr><th>board</th>')
        out += [f"<th>{e(v.label)}</th>" for v in variants]
        out.append("</tr></thead><tbody>")
        for board in comparison.boards(model):
            out.append(f"<tr><th>{e(board.label)}</th>")
            out += [_cell_html(comparison.cell(board, model, v), e) for v in variants]
            out.append("</tr>")
        out.append("</tbody></table></div>")
    out.append("</section>")
    return out


def _spread_section(comparison: Comparison, e) -> list[str]:
    out = ['<section id="spread">', "<h2>Board-to-board spread of identical boards</h2>",
           '<p class="note">Rows of one run measured with the same target profile on different devices. Relative '
           "spread = (max − min) / min. Speedups are each board's own (vs its own dense row).</p>"]
    if not comparison.spreads:
        out += ['<p class="note">No rows.</p>', "</section>"]
        return out
    out.append('<div class="scroll"><table id="spread-table"><thead><tr><th>run</th><th>profile</th><th>model</th>'
               "<th>variant</th><th>boards</th><th>p50 min–max ms</th><th>p50 spread</th>"
               "<th>speedup min–max</th><th>speedup spread</th></tr></thead><tbody>")
    lonely = {}  # (run, profile, model) -> its one board's note, once for all its variants
    for s in comparison.spreads:
        head = (f"<td>{e(s.run_id)}</td><td>{e(s.target)}</td><td>{e(s.model)}</td><td>{e(s.variant.label)}</td>")
        if s.note == ONE_BOARD:
            lonely.setdefault((s.run_id, s.target, s.model), s)
            continue
        if s.note:
            out.append(f'<tr>{head}<td colspan="5" class="note">{e(s.note)}</td></tr>')
            continue
        p = f"{fmt.sig(s.p50[0])}–{fmt.sig(s.p50[1])}"
        sp = f"{fmt.speedup(s.speedup[0])}–{fmt.speedup(s.speedup[1])}" if s.speedup else fmt.NA
        out.append(f"<tr>{head}<td>{e(', '.join(s.boards))}</td><td class=\"num\">{e(p)}</td>"
                   f'<td class="num">{e(fmt.pct(Spread.relative(s.p50)))}</td><td class="num">{e(sp)}</td>'
                   f'<td class="num">{e(fmt.pct(Spread.relative(s.speedup)))}</td></tr>')
    for (run_id, target, model) in lonely:
        devices = sorted({c.board.device for c in comparison.cells
                          if (c.board.run_id, c.board.target, c.model) == (run_id, target, model)})
        out.append(f"<tr><td>{e(run_id)}</td><td>{e(target)}</td><td>{e(model)}</td><td>every variant</td>"
                   f'<td>{e(", ".join(devices))}</td><td colspan="4" class="note">{e(ONE_BOARD)}</td></tr>')
    out += ["</tbody></table></div>", "</section>"]
    return out


def _regression_section(comparison: Comparison, e) -> list[str]:
    out = ['<section id="regression">', "<h2>Regression view (same config, same device)</h2>",
           '<p class="note">Per cell: the older and the newer run\'s p50 with their 95 % intervals and new / old. '
           f"Faster or slower only when the two intervals do not overlap and the p50 moved by at least "
           f"{comparison.min_change * 100:g} % (an interval is of one run's samples and misses run-to-run drift, as asv compare's "
           "factor); otherwise the same within CI (or within the minimum change). Changes first.</p>"]
    out += [f'<p class="note regression-note">{e(n)}</p>' for n in comparison.regression_notes]
    for reg in comparison.regressions:
        counts = {v: sum(c.verdict == v for c in reg.changes) for v in ("slower", "faster")}
        counts["same"] = sum(c.verdict.startswith("same") for c in reg.changes)
        counts["not comparable"] = sum(c.verdict.startswith("not comparable") for c in reg.changes)
        summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n or v != "not comparable")
        out.append(f"<h3>{e(reg.old_run)} → {e(reg.new_run)} on {e(reg.device)}: {e(summary)}</h3>")
        out.append('<div class="scroll"><table class="regression"><thead><tr><th>model</th><th>variant</th>'
                   "<th>old p50 ms [CI]</th><th>new p50 ms [CI]</th><th>new / old</th><th>verdict</th>"
                   "</tr></thead><tbody>")
        for c in reg.changes:
            verdict = c.verdict
            cls = verdict if verdict in ("faster", "slower") else ""
            out.append(f"<tr><td>{e(c.new.model)}</td><td>{e(c.new.variant.label)}</td>"
                       f'<td class="num">{e(fmt.with_ci(c.old.row.latency_p50_ms, c.old.row.p50_ci))}</td>'
                       f'<td class="num">{e(fmt.with_ci(c.new.row.latency_p50_ms, c.new.row.p50_ci))}</td>'
                       f'<td class="num">{e(fmt.speedup(c.ratio))}</td>'
                       f'<td class="{cls}">{e(verdict)}</td></tr>')
        out.append("</tbody></table></div>")
    out.append("</section>")
    return out


def _runs_section(comparison: Comparison, e) -> list[str]:
    out = ['<section id="runs">', "<h2>Runs</h2>", "<table><thead><tr><th>run</th><th>name</th><th>created</th>"
           "<th>target</th><th>config hash</th><th>devices</th><th>rows</th><th>verdicts</th></tr></thead><tbody>"]
    for run in comparison.runs:
        cells = [c for c in comparison.cells if c.board.run_id == run["run_id"]]
        devices = sorted({c.board.short for c in cells})
        verdicts = {v: sum(c.row.verdict == v for c in cells) for v in ("VALID", "INVALID", "ERROR")}
        out.append(f"<tr><td>{e(run['run_id'])}</td><td>{e(run.get('name', ''))}</td>"
                   f"<td>{e(run.get('created_at', ''))}</td><td>{e(run.get('target', ''))}</td>"
                   f"<td><code>{e(str(run.get('config_hash', ''))[:12])}</code></td><td>{e(', '.join(devices))}</td>"
                   f'<td class="num">{len(cells)}</td>'
                   f"<td>{e(', '.join(f'{n} {v}' for v, n in verdicts.items()))}</td></tr>")
    out.append("</tbody></table>")
    for run_id, notes in comparison.notes.items():
        if notes:
            out.append(f"<details><summary>notes of run {e(run_id)}</summary><ul>"
                       + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul></details>")
    out.append("</section>")
    return out


def render_compare_html(comparison: Comparison, figures: Sequence[tuple[str, Path]], *, title: str) -> str:
    """The page: runs, per-model tables, spread, regression view, plots. ``figures``: (caption, PNG path)."""
    from .html_page import _CSS, _data_uri, _e

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
             f"<style>{_CSS}{_EXTRA_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    parts += _runs_section(comparison, _e)
    parts += _model_tables(comparison, _e)
    parts += _spread_section(comparison, _e)
    parts += _regression_section(comparison, _e)
    parts += ['<section id="plots">', "<h2>Plots</h2>"]
    if not figures:
        parts.append('<p class="note">Nothing measured to plot (see the tables).</p>')
    for caption, path in figures:
        parts.append(f'<figure><img src="{_data_uri(path)}" alt="{_e(caption)}">'
                     f"<figcaption>{_e(caption)} — {_e(Path(path).name)}</figcaption></figure>")
    parts += ["</section>", "</body></html>"]
    return "\n".join(parts) + "\n"


def write_compare_report(comparison: Comparison, out_dir: str | Path, *, title: str = "sparsebench compare"
                         ) -> dict:
    """Write ``out_dir/compare.html``, ``compare.csv`` and PNGs under ``out_dir/plots/``.

    Returns ``{"html": path, "csv": path, "plots": [paths]}``."""
    from .compare_plots import draw_compare_plots  # matplotlib only when drawing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_compare_plots(comparison, out / "plots")
    html_path = out / "compare.html"
    html_path.write_text(render_compare_html(comparison, figures, title=title), encoding="utf-8")
    return {"html": html_path, "csv": write_compare_csv(comparison, out / "compare.csv"),
            "plots": [path for _, path in figures]}


# --- the command ---------------------------------------------------------------------------------------------------

def load_comparison(store, run_ids: Sequence[str], *, min_change: float = MIN_CHANGE) -> Comparison:
    """The comparison of runs ``run_ids`` of ``store`` (a :class:`~harness.store.ResultStore`); an unknown run id
    is a :class:`HarnessError` saying how to list the runs."""
    runs, rows, notes = [], [], {}
    for run_id in dict.fromkeys(run_ids):  # a run named twice is shown once
        run = store.get_run(run_id)
        if run is None:
            raise HarnessError(f"no run {run_id!r} in {store.path}; `sparsebench results --db {store.path}` lists "
                               "the runs")
        runs.append(run)
        rows += store.results(run_id)
        notes[run_id] = store.notes(run_id)
    return build_comparison(runs, rows, notes, min_change=min_change)


def cmd_compare(args: argparse.Namespace) -> int:
    from ..cli import _existing_store, ensure_writable_dir

    store = _existing_store(args.db)
    if not 0 <= args.min_change < 1:
        raise HarnessError(f"--min-change {args.min_change} must be a fraction in [0, 1), e.g. 0.05 for 5 %")
    comparison = load_comparison(store, args.run_ids, min_change=args.min_change)
    ensure_writable_dir(args.out, "report directory")
    ids = list(dict.fromkeys(args.run_ids))
    paths = write_compare_report(comparison, args.out, title=f"sparsebench compare — runs {', '.join(ids)}")
    store.close()
    print(f"compare report: {paths['html']}", file=sys.stderr)
    return 0


def add_parser(sub, add_db) -> argparse.ArgumentParser:
    """Register ``sparsebench compare RUN_ID [RUN_ID ...] --out DIR [--db DB]``."""
    p = sub.add_parser("compare", help="one report across devices and runs: per-board tables, spread of identical "
                                       "boards, speedup heatmaps, Pareto fronts, regressions between runs")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="runs to compare (`sparsebench results` lists them)")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--min-change", type=float, default=MIN_CHANGE, metavar="FRACTION",
                   help=f"regression view: smallest p50 change called faster/slower (default {MIN_CHANGE:g}); "
                        "the intervals must not overlap either")
    add_db(p)
    p.set_defaults(func=cmd_compare)
    return p
