"""Report data: sort rows, group them by (model, batch, device), compute speedup vs the dense baseline,
summarise verdicts, and define the display columns shared by the HTML and Markdown exporters.

Pure logic (no matplotlib, no I/O), so it is cheap to test and to reuse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..peers import PEER_METHODS
from ..measure.stats import ratio_ci
from ..records import VERDICTS, ResultRow
from . import fmt
from .fmt import as_float

#: Display order of methods: the dense baseline first, then the peer runtimes (dense too), unknown methods last
#: (alphabetically).
METHOD_ORDER = {"dense": 0, **{peer: 1 for peer in sorted(PEER_METHODS)}, "unstructured": 2, "block": 3,
                "nm": 4, "channel": 5, "as-is": 6}


def _none_last(value: object) -> tuple[bool, object]:
    return (value is None, value if value is not None else 0)


def sparsity_of(row: ResultRow) -> float | None:
    """The sparsity a row is plotted at: achieved when measured (honest for the ideal curve), else the target."""
    actual = as_float(row.sparsity_actual)
    return actual if actual is not None else as_float(row.sparsity_target)


def is_dense(row: ResultRow) -> bool:
    """Our own dense build (the baseline of "speedup vs dense")."""
    return row.method == "dense"


def is_peer(row: ResultRow) -> bool:
    """A peer runtime's row (onnxruntime...): the dense model in the runtime users already have."""
    return row.method in PEER_METHODS


def is_baseline(row: ResultRow) -> bool:
    """A dense runtime, ours or a peer's: a reference line in the plots, not a point on a sparsity curve."""
    return is_dense(row) or is_peer(row)


def is_measured(row: ResultRow) -> bool:
    """Whether a row has a latency to plot: not ERROR and a finite p50."""
    return row.verdict != "ERROR" and as_float(row.latency_p50_ms) is not None


def series_key(row: ResultRow) -> tuple[str, str]:
    """One plotted line per (method, block)."""
    return (row.method, row.block)


def series_label(key: tuple[str, str]) -> str:
    method, block = key
    return f"{method} {block}" if block else method


def short_label(row: ResultRow) -> str:
    """A few characters naming a variant inside a plot: ``dense``, ``unstructured 90%``, ``block 16x1 50%``."""
    if is_baseline(row):
        return row.method
    return f"{series_label(series_key(row))} {fmt.pct(row.sparsity_target, 0)}"


def row_sort_key(row: ResultRow) -> tuple:
    """Table order: model, batch, device, method (dense first), block, sparsity target, sparsity actual."""
    return (row.model, row.batch, row.device, METHOD_ORDER.get(row.method, len(METHOD_ORDER)), row.method,
            row.block, _none_last(as_float(row.sparsity_target)), _none_last(as_float(row.sparsity_actual)))


@dataclass(frozen=True)
class Group:
    """The rows of one (model, batch, device), sorted; the dense row among them is the baseline, the peers' rows
    (one per peer runtime) the other dense runtimes it is held against.

    ``samples`` maps variant_key to per-iteration latencies in ms, restricted to this group's rows.
    """

    model: str
    batch: int
    device: str
    rows: tuple[ResultRow, ...]
    baseline: ResultRow | None
    samples: dict[str, list[float]] = field(default_factory=dict)
    peers: tuple[ResultRow, ...] = ()

    @property
    def title(self) -> str:
        return f"{self.model} · batch {self.batch} · {self.device}"

    @property
    def slug(self) -> str:
        """A file-name-safe id of the group."""
        raw = f"{self.model}_b{self.batch}_{self.device}"
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in raw)

    @property
    def baseline_p50(self) -> float | None:
        return None if self.baseline is None else as_float(self.baseline.latency_p50_ms)

    def speedup(self, row: ResultRow) -> float | None:
        """Dense p50 / this row's p50 (``None`` without a baseline, for ERROR rows and unmeasured ones)."""
        base, p50 = self.baseline_p50, as_float(row.latency_p50_ms)
        ok = base is not None and p50 is not None and p50 > 0 and row.verdict != "ERROR"
        return base / p50 if ok else None

    @property
    def best_dense(self) -> ResultRow | None:
        """The fastest dense runtime of the group (least p50): our dense build or a peer's row."""
        candidates = [r for r in (self.baseline, *self.peers) if r is not None]
        return min(candidates, key=lambda r: as_float(r.latency_p50_ms), default=None)

    @property
    def best_dense_p50(self) -> float | None:
        best = self.best_dense
        return None if best is None else as_float(best.latency_p50_ms)

    def speedup_ci(self, row: ResultRow) -> tuple[float, float] | None:
        """Interval of :meth:`speedup` from the two medians' 95 % intervals (holds with >= 90 %: both must)."""
        if self.speedup(row) is None:
            return None
        return ratio_ci(self.baseline.p50_ci, row.p50_ci)

    def speedup_best_ci(self, row: ResultRow) -> tuple[float, float] | None:
        """Interval of :meth:`speedup_best`, as :meth:`speedup_ci`."""
        if self.speedup_best(row) is None:
            return None
        return ratio_ci(self.best_dense.p50_ci, row.p50_ci)

    def speedup_model_time(self, row: ResultRow) -> float | None:
        """Dense / this row's model time by TVM's C++ timer (ours only: peer runtimes have none)."""
        base = None if self.baseline is None else as_float(self.baseline.model_time_p50_ms)
        mine = as_float(row.model_time_p50_ms)
        ok = base is not None and mine is not None and mine > 0 and row.verdict != "ERROR"
        return base / mine if ok else None

    def speedup_model_time_ci(self, row: ResultRow) -> tuple[float, float] | None:
        if self.speedup_model_time(row) is None:
            return None
        return ratio_ci(self.baseline.model_time_ci, row.model_time_ci)

    def speedup_best(self, row: ResultRow) -> float | None:
        """Best dense p50 / this row's p50: below 1 the row is slower than a dense runtime the user can have,
        whatever its speedup vs our dense build."""
        base, p50 = self.best_dense_p50, as_float(row.latency_p50_ms)
        ok = base is not None and p50 is not None and p50 > 0 and row.verdict != "ERROR"
        return base / p50 if ok else None

    def only_beats_slow_dense(self) -> list[ResultRow]:
        """Sparse rows faster than our dense build but not than the best dense runtime (a peer's): their speedup
        comes from a slow baseline."""
        if self.best_dense is None or self.best_dense is self.baseline:
            return []
        return [r for r in self.measured() if not is_baseline(r) and (self.speedup(r) or 0) > 1
                and (self.speedup_best(r) or 0) < 1]

    @property
    def has_accuracy(self) -> bool:
        """Whether the model has labels: some measured row reports an accuracy."""
        return any(as_float(r.accuracy) is not None for r in self.rows if is_measured(r))

    def measured(self) -> list[ResultRow]:
        return [r for r in self.rows if is_measured(r)]


def _pick_baseline(rows: list[ResultRow], method: str = "dense") -> ResultRow | None:
    """The ``method`` row of a group (our dense build, or one peer's): a VALID measured one if any, else any
    measured one (an INVALID baseline is still the best reference there is; the verdict table says it is
    INVALID)."""
    dense = [r for r in rows if r.method == method and is_measured(r)]
    valid = [r for r in dense if r.verdict == "VALID"]
    return (valid or dense or [None])[0]


def group_rows(rows: Iterable[ResultRow], samples: dict[str, list[float]] | None = None) -> list[Group]:
    """Sort rows into groups by (model, batch, device), each with its dense baseline."""
    samples = samples or {}
    buckets: dict[tuple, list[ResultRow]] = {}
    for row in sorted(rows, key=row_sort_key):
        buckets.setdefault((row.model, row.batch, row.device), []).append(row)
    groups = []
    for (model, batch, device), members in buckets.items():
        group_samples = {r.variant_key: list(samples[r.variant_key]) for r in members if r.variant_key in samples}
        peers = (_pick_baseline(members, m) for m in sorted({r.method for r in members if is_peer(r)}))
        groups.append(Group(model, batch, device, tuple(members), _pick_baseline(members), group_samples,
                            tuple(p for p in peers if p is not None)))
    return groups


# --- verdict summary -------------------------------------------------------------------------------------------

def verdict_counts(rows: Iterable[ResultRow]) -> dict[str, int]:
    """Rows per verdict: VALID, INVALID, ERROR always present (possibly 0), any other verdict after them."""
    counts = Counter(r.verdict for r in rows)
    ordered = {v: counts.pop(v, 0) for v in VERDICTS}
    ordered.update(sorted(counts.items()))
    return ordered


def problem_rows(rows: Iterable[ResultRow]) -> list[ResultRow]:
    """Rows that are not VALID, in table order."""
    return [r for r in sorted(rows, key=row_sort_key) if r.verdict != "VALID"]


def problems_of(row: ResultRow) -> list[str]:
    """Why a row is not VALID: its error (if any) then its reasons; never empty for a non-VALID row."""
    found = ([row.error] if row.error else []) + list(row.reasons)
    return found or ["no reason recorded"]


def row_context(row: ResultRow) -> str:
    """Where a row belongs, for the verdict list: ``model · batch N · device``."""
    return f"{row.model} · batch {row.batch} · {row.device}"


# --- display columns -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """One displayed column: ``cell`` turns a row (and its group, for the speedup) into text; numeric columns
    align right."""

    name: str
    header: str
    cell: Callable[[ResultRow, Group], str]
    numeric: bool = True


def _show(formatter: Callable[[object], str],
          value: Callable[[ResultRow], object]) -> Callable[[ResultRow, Group], str]:
    return lambda row, group: formatter(value(row))


def _quality(row: ResultRow, group: Group) -> str:
    """Accuracy when the model has labels (a fine-tuned variant's with its one-shot accuracy: "97.2 % (one-shot
    21.4 %)"), else top-1 agreement with dense (marked as such)."""
    if as_float(row.accuracy) is not None:
        if as_float(row.accuracy_oneshot) is not None:
            return f"{fmt.pct(row.accuracy, 2)} (one-shot {fmt.pct(row.accuracy_oneshot, 2)})"
        return fmt.pct(row.accuracy, 2)
    if as_float(row.top1_agreement) is not None:
        return f"{fmt.pct(row.top1_agreement, 2)} (top-1)"
    return fmt.NA


def _spread(r) -> str:
    """The agreeing rounds' spread, and how many rounds were left out as disturbed (e.g. "±1.2 %, 2 of 9 rounds
    disturbed")."""
    if as_float(r.round_spread) is None:
        return fmt.NA
    text = f"±{fmt.pct(r.round_spread)}"
    if r.rounds_disturbed:
        text += f", {len(r.rounds_disturbed)} of {len(r.round_p50_ms or ())} rounds disturbed"
    return text


def _speedup_best(row: ResultRow, group: Group) -> str:
    """``0.45× (onnxruntime)``: the ratio, and which dense runtime was fastest."""
    value = group.speedup_best(row)
    if value is None:
        return fmt.NA
    return f"{fmt.speedup_ci(value, group.speedup_best_ci(row))} ({group.best_dense.method})"


def best_dense_lines(group: Group) -> list[str]:
    """Plain-text lines for a group with peers: which dense runtime is fastest, and every sparse row whose
    speedup comes only from beating a slower dense build. Empty without peer rows."""
    best = group.best_dense
    if not group.peers or best is None:
        return []
    others = [r for r in (group.baseline, *group.peers) if r is not None and r is not best]
    versus = ", ".join(f"{r.method} {fmt.sig(r.latency_p50_ms)} ms" for r in others)
    name = "our dense build" if is_dense(best) else best.method
    lines = [f"{group.title}: best dense runtime {name}, p50 {fmt.sig(best.latency_p50_ms)} ms"
             + (f" (vs {versus})" if versus else "")]
    for row in group.only_beats_slow_dense():
        lines.append(f"{short_label(row)}: {fmt.speedup(group.speedup(row))} vs our dense build but "
                     f"{fmt.speedup(group.speedup_best(row))} vs {best.method}: it only beats a slower dense build")
    return lines


COLUMNS: tuple[Column, ...] = (
    Column("verdict", "verdict", _show(fmt.text, lambda r: r.verdict), numeric=False),
    Column("model", "model", _show(fmt.text, lambda r: r.model), numeric=False),
    Column("batch", "batch", _show(fmt.integer, lambda r: r.batch)),
    Column("device", "device", _show(fmt.text, lambda r: r.device), numeric=False),
    Column("method", "method", _show(fmt.text, lambda r: r.method), numeric=False),
    Column("block", "block", lambda r, g: r.block or "—", numeric=False),
    Column("sparsity_target", "sparsity target", _show(fmt.pct, lambda r: r.sparsity_target)),
    Column("sparsity_actual", "sparsity actual", _show(fmt.pct, lambda r: r.sparsity_actual)),
    Column("p50", "p50 ms [95 % CI]", lambda r, g: fmt.with_ci(r.latency_p50_ms, r.p50_ci)),
    Column("model_time", "model ms, C++ timer [CI]", lambda r, g: fmt.with_ci(r.model_time_p50_ms, r.model_time_ci)),
    Column("p90", "p90 ms", _show(fmt.sig, lambda r: r.latency_p90_ms)),
    Column("p99", "p99 ms", _show(fmt.sig, lambda r: r.latency_p99_ms)),
    Column("cv", "CV", _show(fmt.pct, lambda r: r.latency_cv)),
    Column("speedup", "speedup vs dense [CI]", lambda r, g: fmt.speedup_ci(g.speedup(r), g.speedup_ci(r))),
    Column("speedup_best", "speedup vs best dense [CI]", _speedup_best),
    Column("speedup_model", "speedup vs dense, model time [CI]",
           lambda r, g: fmt.speedup_ci(g.speedup_model_time(r), g.speedup_model_time_ci(r))),
    Column("spread", "round spread (disturbed rounds left out)", lambda r, g: _spread(r)),
    Column("quality", "accuracy / top-1", _quality),
    Column("accuracy", "accuracy", _show(lambda v: fmt.pct(v, 2), lambda r: r.accuracy)),
    Column("accuracy_oneshot", "accuracy one-shot", _show(lambda v: fmt.pct(v, 2), lambda r: r.accuracy_oneshot)),
    Column("finetune_s", "fine-tune s", _show(fmt.sig, lambda r: r.finetune_s)),
    Column("top1", "top-1 agreement", _show(lambda v: fmt.pct(v, 2), lambda r: r.top1_agreement)),
    Column("max_abs_err", "max |err|", _show(fmt.sci, lambda r: r.max_abs_err)),
    Column("energy", "energy mJ", _show(fmt.sig, lambda r: r.energy_mj)),  # the HTML shows energy_status on hover
    Column("artifact", "artifact", _show(fmt.size, lambda r: r.artifact_bytes)),
    Column("rss", "peak RSS MB", _show(fmt.sig, lambda r: r.peak_rss_mb)),
    Column("compile", "compile s", _show(fmt.sig, lambda r: r.compile_s)),
    Column("n_iter", "iters", _show(fmt.integer, lambda r: r.n_iter)),
)


def columns(*names: str) -> list[Column]:
    """The named display columns, in the order given."""
    by_name = {c.name: c for c in COLUMNS}
    return [by_name[n] for n in names]


# --- the headline ------------------------------------------------------------------------------------------------

def _quality_text(row: ResultRow) -> str | None:
    if as_float(row.accuracy) is not None:
        return f"accuracy {fmt.pct(row.accuracy, 1)}"
    if as_float(row.top1_agreement) is not None:
        return f"top-1 agreement with dense {fmt.pct(row.top1_agreement, 1)}"
    return None


def headline(group: Group) -> str:
    """One sentence answering "what does sparsity buy this model here": the fastest VALID sparse variant's speedup
    vs our dense build with its interval, its accuracy next to dense's, and how it stands against the best dense
    runtime when a peer is faster than our dense build."""
    sparse = [r for r in group.measured() if not is_baseline(r) and r.verdict == "VALID" and group.speedup(r)]
    if group.baseline is None or not sparse:
        why = "no dense baseline was measured" if group.baseline is None else "no sparse variant was measured VALID"
        return f"{group.title}: {why}; see the verdicts."
    best = max(sparse, key=group.speedup)
    value, ci = group.speedup(best), group.speedup_ci(best)
    text = f"{group.title} — {short_label(best)}: "
    if ci is not None and ci[0] <= 1.0 <= ci[1]:
        text += f"no significant difference from dense ({fmt.speedup(value)} {fmt.interval(*ci, '×')})"
    else:
        text += f"{fmt.speedup(value)} {'faster' if value >= 1 else 'slower'} than dense"
        text += f" {fmt.interval(*ci, '×')}" if ci else ""
    mine, dense = _quality_text(best), _quality_text(group.baseline)
    if mine:
        text += f", {mine}" + (f" vs {dense.split(' ')[-1]} dense" if dense and best.accuracy is not None else "")
    best_dense = group.best_dense
    if best_dense is not None and best_dense is not group.baseline:
        versus = group.speedup_best(best)
        text += f"; {fmt.speedup(versus)} vs {best_dense.method}, the fastest dense runtime"
    return text + "."
