"""Report data: sort rows, group them by (model, batch, device), compute speedup vs the dense baseline,
summarise verdicts, and define the display columns shared by the HTML and Markdown exporters.

Pure logic (no matplotlib, no I/O), so it is cheap to test and to reuse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import fmt
from .fmt import as_float

#: Display order of pruning methods: the dense baseline first, unknown methods last (alphabetically).
METHOD_ORDER = {"dense": 0, "unstructured": 1, "block": 2}
VERDICT_ORDER = ("VALID", "INVALID", "ERROR")
#: Key added to each row copy held by a :class:`Group`: dense p50 / this row's p50 (None when unknown).
SPEEDUP = "speedup_vs_dense"


def _none_last(value: object) -> tuple[bool, object]:
    return (value is None, value if value is not None else 0)


def verdict_of(row: dict) -> str:
    """The row's verdict; a row without one is ERROR when it carries an error, else ``n/a``."""
    return row.get("verdict") or ("ERROR" if row.get("error") else fmt.NA)


def variant_key(row: dict) -> str:
    """The row's ``variant_key``, or a readable stand-in built from its coordinates when it has none."""
    if row.get("variant_key"):
        return str(row["variant_key"])
    parts = [row.get("model"), row.get("method"), row.get("block"), row.get("sparsity_target"),
             f"b{row.get('batch')}", row.get("device")]
    return "/".join(str(p) for p in parts if p not in (None, ""))


def sparsity_of(row: dict) -> float | None:
    """The sparsity a row is plotted at: achieved when measured (honest for the ideal curve), else the target."""
    actual = as_float(row.get("sparsity_actual"))
    return actual if actual is not None else as_float(row.get("sparsity_target"))


def is_dense(row: dict) -> bool:
    return row.get("method") == "dense"


def is_measured(row: dict) -> bool:
    """Whether a row has a latency to plot: not ERROR and a finite p50."""
    return verdict_of(row) != "ERROR" and as_float(row.get("latency_p50_ms")) is not None


def series_key(row: dict) -> tuple[str, str]:
    """One plotted line per (method, block)."""
    return (str(row.get("method") or ""), str(row.get("block") or ""))


def series_label(key: tuple[str, str]) -> str:
    method, block = key
    return f"{method} {block}" if block else method


def short_label(row: dict) -> str:
    """A few characters naming a variant inside a plot: ``dense``, ``unstructured 90%``, ``block 16x1 50%``."""
    if is_dense(row):
        return "dense"
    return f"{series_label(series_key(row))} {fmt.pct(row.get('sparsity_target'), 0)}"


def row_sort_key(row: dict) -> tuple:
    """Table order: model, batch, device, method (dense first), block, sparsity target, sparsity actual."""
    method = str(row.get("method") or "")
    return (str(row.get("model") or ""), _none_last(row.get("batch")), str(row.get("device") or ""),
            METHOD_ORDER.get(method, len(METHOD_ORDER)), method, str(row.get("block") or ""),
            _none_last(as_float(row.get("sparsity_target"))), _none_last(as_float(row.get("sparsity_actual"))))


@dataclass(frozen=True)
class Group:
    """The rows of one (model, batch, device), sorted; the dense row among them is the baseline.

    ``rows`` are copies of the input rows with :data:`SPEEDUP` added. ``samples`` maps variant_key to
    per-iteration latencies in ms, restricted to this group's rows.
    """

    model: str
    batch: object
    device: str
    rows: tuple[dict, ...]
    baseline: dict | None
    samples: dict[str, list[float]] = field(default_factory=dict)

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
        return None if self.baseline is None else as_float(self.baseline.get("latency_p50_ms"))

    @property
    def has_accuracy(self) -> bool:
        """Whether the model has labels: some measured row reports an accuracy."""
        return any(as_float(r.get("accuracy")) is not None for r in self.rows if is_measured(r))

    def measured(self) -> list[dict]:
        return [r for r in self.rows if is_measured(r)]


def _pick_baseline(rows: list[dict]) -> dict | None:
    """The dense row of a group: a VALID measured one if any, else any measured one (an INVALID baseline is
    still the best reference there is; the verdict table says it is INVALID)."""
    dense = [r for r in rows if is_dense(r) and is_measured(r)]
    valid = [r for r in dense if verdict_of(r) == "VALID"]
    return (valid or dense or [None])[0]


def group_rows(rows: Iterable[dict], samples: dict[str, list[float]] | None = None) -> list[Group]:
    """Sort rows into groups by (model, batch, device) and attach speedups vs each group's dense baseline."""
    samples = samples or {}
    buckets: dict[tuple, list[dict]] = {}
    for row in sorted(rows, key=row_sort_key):
        buckets.setdefault((row.get("model"), row.get("batch"), row.get("device")), []).append(row)
    groups = []
    for (model, batch, device), members in buckets.items():
        baseline = _pick_baseline(members)
        base_p50 = None if baseline is None else as_float(baseline.get("latency_p50_ms"))
        annotated = []
        for row in members:
            p50 = as_float(row.get("latency_p50_ms"))
            ok = base_p50 is not None and p50 is not None and p50 > 0 and verdict_of(row) != "ERROR"
            annotated.append({**row, SPEEDUP: base_p50 / p50 if ok else None})
        group_samples = {variant_key(r): list(samples[variant_key(r)]) for r in members
                         if variant_key(r) in samples}
        # Identity, not equality: two rows may compare equal yet be distinct variants.
        annotated_baseline = next((a for m, a in zip(members, annotated) if m is baseline), None)
        groups.append(Group(str(model), batch, str(device), tuple(annotated), annotated_baseline, group_samples))
    return groups


# --- verdict summary -------------------------------------------------------------------------------------------

def verdict_counts(rows: Iterable[dict]) -> dict[str, int]:
    """Rows per verdict: VALID, INVALID, ERROR always present (possibly 0), any other verdict after them."""
    counts = Counter(verdict_of(r) for r in rows)
    ordered = {v: counts.pop(v, 0) for v in VERDICT_ORDER}
    ordered.update(sorted(counts.items()))
    return ordered


def problem_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows that are not VALID, in table order."""
    return [r for r in sorted(rows, key=row_sort_key) if verdict_of(r) != "VALID"]


def problems_of(row: dict) -> list[str]:
    """Why a row is not VALID: its error (if any) then its reasons; never empty for a non-VALID row."""
    found = ([str(row["error"])] if row.get("error") else []) + [str(r) for r in row.get("reasons") or []]
    return found or ["no reason recorded"]


def row_context(row: dict) -> str:
    """Where a row belongs, for the verdict list: ``model · batch N · device``."""
    return f"{row.get('model')} · batch {row.get('batch')} · {row.get('device')}"


# --- display columns -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """One displayed column: ``cell`` turns a (group-annotated) row into text; numeric columns align right."""

    name: str
    header: str
    cell: Callable[[dict], str]
    numeric: bool = True


def _get(key: str, formatter: Callable[[object], str]) -> Callable[[dict], str]:
    return lambda row: formatter(row.get(key))


def _quality(row: dict) -> str:
    """Accuracy when the model has labels, else top-1 agreement with dense (marked as such)."""
    if as_float(row.get("accuracy")) is not None:
        return fmt.pct(row["accuracy"], 2)
    if as_float(row.get("top1_agreement")) is not None:
        return f"{fmt.pct(row['top1_agreement'], 2)} (top-1)"
    return fmt.NA


COLUMNS: tuple[Column, ...] = (
    Column("verdict", "verdict", verdict_of, numeric=False),
    Column("model", "model", _get("model", fmt.text), numeric=False),
    Column("batch", "batch", _get("batch", fmt.integer)),
    Column("device", "device", _get("device", fmt.text), numeric=False),
    Column("method", "method", _get("method", fmt.text), numeric=False),
    Column("block", "block", lambda r: str(r.get("block") or "—"), numeric=False),
    Column("sparsity_target", "sparsity target", _get("sparsity_target", fmt.pct)),
    Column("sparsity_actual", "sparsity actual", _get("sparsity_actual", fmt.pct)),
    Column("p50", "p50 ms", _get("latency_p50_ms", fmt.sig)),
    Column("p90", "p90 ms", _get("latency_p90_ms", fmt.sig)),
    Column("p99", "p99 ms", _get("latency_p99_ms", fmt.sig)),
    Column("cv", "CV", _get("latency_cv", fmt.pct)),
    Column("speedup", "speedup vs dense", _get(SPEEDUP, fmt.speedup)),
    Column("quality", "accuracy / top-1", _quality),
    Column("accuracy", "accuracy", _get("accuracy", lambda v: fmt.pct(v, 2))),
    Column("top1", "top-1 agreement", _get("top1_agreement", lambda v: fmt.pct(v, 2))),
    Column("max_abs_err", "max |err|", _get("max_abs_err", fmt.sci)),
    Column("energy", "energy mJ", _get("energy_mj", fmt.sig)),  # the HTML shows energy_status on hover
    Column("artifact", "artifact", _get("artifact_bytes", fmt.size)),
    Column("rss", "peak RSS MB", _get("peak_rss_mb", fmt.sig)),
    Column("compile", "compile s", _get("compile_s", fmt.sig)),
    Column("n_iter", "iters", _get("n_iter", fmt.integer)),
)


def columns(*names: str) -> list[Column]:
    """The named display columns, in the order given."""
    by_name = {c.name: c for c in COLUMNS}
    return [by_name[n] for n in names]
