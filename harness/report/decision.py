"""The decision table -- channel pruning vs sparse kernels at the same level -- and the glossary of what the
product measures. Pure logic and text (no matplotlib, no I/O); the HTML page and summary.md render them."""

from __future__ import annotations

from ..records import ResultRow
from . import fmt
from .fmt import as_float
from .tables import Group, _quality, _speedup_best, is_baseline, is_measured, series_key, series_label

#: methods whose rows are sparse weights run by our sparse kernels (the other side of the comparison)
SPARSE_METHODS = ("unstructured", "block", "nm")

#: what is measured, and what is not: the report's glossary (and the README's paragraph)
GLOSSARY = (
    ("What is measured",
     "Static weight sparsity: zeros in the weights of the Gemm, MatMul and Conv layers, fixed before the model is "
     "compiled, and the same for every input. Unstructured (any single weight), block (whole r×c blocks of the "
     "layer's [N, K] weight), N:M (at most N nonzeros in every M consecutive inputs) and channel pruning (whole "
     "output channels or hidden units removed, with the matching inputs of the next layer: a smaller dense model). "
     "as-is measures the zeros an already-pruned model has, with the pattern found in each layer."),
    ("What is not measured",
     "Activation sparsity (zeros in a layer's inputs or intermediate values, such as after a ReLU, which change "
     "with every input), dynamic sparsity and routing (mixture-of-experts, early exit, token or head dropping: "
     "which weights run depends on the input), and the cost of training or fine-tuning a sparse model. A speedup "
     "holds for the weights measured, on the device and batch measured."),
    ("Sparsity of a channel row",
     "The fraction of the pruned layers' weights removed. Its level is chosen so that those layers keep (1 - level) "
     "of their parameters, the same count as a sparse variant at that level keeps nonzeros."),
)


def parameters(row: ResultRow) -> int | None:
    """Weights the row's prunable layers hold: nonzeros of a sparse variant, what a channel-pruned one kept (its
    layers' ``sparsity_actual`` is the fraction removed), all of a dense model. None without layer records."""
    if not row.layers or any(l.shape is None or l.sparsity_actual is None for l in row.layers):
        return None
    total = 0.0
    for layer in row.layers:
        size = 1
        for d in layer.shape:
            size *= int(d)
        total += size * (1.0 - float(layer.sparsity_actual))
    return int(round(total))


def comparison_rows(group: Group) -> list[tuple[float, list[ResultRow]]]:
    """Per level where a ``channel`` row and a sparse row (unstructured, block, N:M) both exist: (level, the
    channel row(s) then the sparse rows), levels ascending. Unmeasured rows are kept (the table says ERROR)."""
    by_level: dict[float, list[ResultRow]] = {}
    for row in group.rows:
        level = as_float(row.sparsity_target)
        if level is None or is_baseline(row) or row.method not in ("channel", *SPARSE_METHODS):
            continue
        by_level.setdefault(round(level, 6), []).append(row)
    out = []
    for level in sorted(by_level):
        rows = by_level[level]
        if any(r.method == "channel" for r in rows) and any(r.method in SPARSE_METHODS for r in rows):
            out.append((level, sorted(rows, key=lambda r: (r.method != "channel", r.method, r.block))))
    return out


HEADERS = ("level", "variant", "verdict", "p50 ms [95 % CI]", "speedup vs dense [CI]", "speedup vs best dense [CI]",
           "accuracy / top-1", "parameters (of dense)")


def cells(row: ResultRow, group: Group, level: float) -> list[str]:
    """One line of the decision table."""
    params = parameters(row)
    dense = parameters(group.baseline) if group.baseline is not None else None
    if params is None:
        param_text = fmt.NA
    else:
        param_text = f"{params:,}" + (f" ({fmt.pct(params / dense, 1)})" if dense else "")
    measured = is_measured(row)
    return [fmt.pct(level, 0), series_label(series_key(row)), row.verdict,
            fmt.with_ci(row.latency_p50_ms, row.p50_ci) if measured else fmt.NA,
            fmt.speedup_ci(group.speedup(row), group.speedup_ci(row)) if measured else fmt.NA,
            _speedup_best(row, group) if measured else fmt.NA,
            _quality(row, group) if measured else fmt.NA, param_text]


def verdict_line(group: Group, level: float, rows: list[ResultRow]) -> str:
    """One sentence per level: which is faster (when the intervals say so) and which is more accurate."""
    channel = next((r for r in rows if r.method == "channel" and is_measured(r)), None)
    sparse = [r for r in rows if r.method in SPARSE_METHODS and is_measured(r)]
    if channel is None or not sparse:
        return f"{group.title}, {fmt.pct(level, 0)}: not both measured; see the verdicts."
    best = min(sparse, key=lambda r: as_float(r.latency_p50_ms))
    a, b = channel.p50_ci, best.p50_ci
    name = series_label(series_key(best))
    if a and b and a[1] < b[0]:
        speed = f"channel is faster ({fmt.sig(channel.latency_p50_ms)} vs {fmt.sig(best.latency_p50_ms)} ms)"
    elif a and b and b[1] < a[0]:
        speed = f"{name} is faster ({fmt.sig(best.latency_p50_ms)} vs {fmt.sig(channel.latency_p50_ms)} ms)"
    else:
        speed = (f"no significant latency difference ({fmt.sig(channel.latency_p50_ms)} vs "
                 f"{fmt.sig(best.latency_p50_ms)} ms)")
    qc, qs = as_float(channel.accuracy), as_float(best.accuracy)
    kind = "accuracy"
    if qc is None or qs is None:
        qc, qs, kind = as_float(channel.top1_agreement), as_float(best.top1_agreement), "top-1 agreement"
    quality = "" if qc is None or qs is None else (
        f"; {kind} {fmt.pct(qc, 1)} (channel) vs {fmt.pct(qs, 1)} ({name})")
    text = f"{group.title}, {fmt.pct(level, 0)}: {speed}{quality}"
    invalid = [series_label(series_key(r)) for r in (channel, best) if r.verdict != "VALID"]
    if group.baseline is not None and group.baseline.verdict != "VALID":
        invalid.append("dense")
    if invalid:
        text += f" (not VALID: {', '.join(invalid)}; see the verdicts before deciding)"
    return text + "."
