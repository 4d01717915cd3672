"""summary.md: the verdict summary, then a compact results table."""

from __future__ import annotations

from collections.abc import Sequence

from ..records import ResultRow
from .tables import (Group, best_dense_lines, columns, headline, problem_rows, problems_of, row_context,
                     verdict_counts)

_MAX_MESSAGE = 400  # characters of an error shown in Markdown; the HTML report keeps the full text


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell or list item: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _clip(text: str) -> str:
    text = _cell(text)
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 1] + "…"


def verdict_lines(rows: Sequence[ResultRow]) -> list[str]:
    """Markdown lines: the verdict counts, then each non-VALID row with its error and reasons."""
    counts = verdict_counts(rows)
    lines = ["**" + " · ".join(f"{n} {v}" for v, n in counts.items()) + f"** ({len(rows)} rows)", ""]
    if rows and counts["VALID"] == len(rows):
        lines.append("All rows are VALID.")
    for row in problem_rows(rows):
        why = [_clip(p) for p in problems_of(row)]
        if row.error:  # problems_of puts it first
            # A code span: errors quote code and paths, and "<bsr>" must not render as an HTML tag.
            why[0] = "`" + why[0].replace("`", "'") + "`"
        why = "; ".join(why)
        lines.append(f"- **{row.verdict}** `{_cell(row.variant_key)}` ({_cell(row_context(row))}): {why}")
    return lines


def render_summary(groups: Sequence[Group], *, title: str, run_info: dict | None = None,
                   notes: Sequence[str] = ()) -> str:
    """The whole summary.md text."""
    rows = [r for g in groups for r in g.rows]
    names = ["verdict", "model", "batch", "method", "block", "sparsity_target", "sparsity_actual", "p50", "spread",
             "model_time", "speedup", "speedup_best", "speedup_model", "quality"]
    if len({r.device for r in rows}) > 1:  # only needed to tell rows apart when several devices ran
        names.insert(3, "device")
    if any(r.finetune_s is not None for r in rows):  # fine-tuned variants: their training time
        names.append("finetune_s")
    cols = columns(*names)
    lines = [f"# {_cell(title)}", ""]
    info = run_info or {}
    meta = [f"{k} `{_cell(info[k])}`" for k in ("run_id", "created_at") if info.get(k) is not None]
    if meta:
        lines += [" · ".join(meta), ""]
    lines += ["## What sparsity buys", "", *(f"- {_cell(headline(g))}" for g in groups), ""]
    lines += ["## Verdicts", "", *verdict_lines(rows), ""]
    if notes:
        lines += ["## Notes", "", *(f"- {_cell(n)}" for n in notes), ""]
    lines += ["## Results", ""]
    lines.append("| " + " | ".join(c.header for c in cols) + " |")
    lines.append("|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|")
    for group in groups:
        for row in group.rows:
            lines.append("| " + " | ".join(_cell(c.cell(row, group)) for c in cols) + " |")
    lines += ["", "p50 = median latency of one call from Python (what an application calling from Python sees), all "
              "timing rounds pooled, with its 95 % distribution-free interval; round spread = the standard deviation "
              "of the rounds' medians relative to it (the variants of a model took turns round by round); model ms = the same model "
              "timed by TVM's C++ timer (repeats of >= 1 ms of back-to-back calls: no Python/FFI overhead). "
              "Speedup vs dense = our dense build's p50 / variant p50 within the same model, batch and device; "
              "speedup vs best dense = the fastest dense runtime's p50 (ours or a peer runtime's, in brackets) / "
              "variant p50; intervals from the two medians' intervals (both hold: >= 90 %), 'no significant difference' "
              "when one contains 1. n/a = not available. Accuracy where the model has labels, else top-1 agreement "
              "with dense; a fine-tuned variant's accuracy is after recovery, with the same variant pruned one-shot in "
              "brackets (fine-tune s: its training time, numpy on the harness's host).", ""]
    lines += _decision_lines(groups)
    best = [best_dense_lines(g) for g in groups]
    if any(best):
        lines += ["## Against the best dense runtime", ""]
        for first, *flagged in (ls for ls in best if ls):
            lines += [f"- {_cell(first)}", *(f"  - {_cell(line)}" for line in flagged)]
        lines.append("")
    from .decision import GLOSSARY

    lines += ["## What is measured", "", *(f"- **{term}**: {_cell(text)}" for term, text in GLOSSARY), ""]
    return "\n".join(lines)


def _decision_lines(groups: Sequence[Group]) -> list[str]:
    """The channel vs sparse decision table, per group that has both at one level (none: no lines)."""
    from .decision import HEADERS, cells, comparison_rows, verdict_line

    out: list[str] = []
    for group in groups:
        levels = comparison_rows(group)
        if not levels:
            continue
        if not out:
            out += ["## Channel pruning vs sparse kernels", ""]
        out += [f"### {_cell(group.title)}", "", "| " + " | ".join(HEADERS) + " |",
                "|" + "|".join(["---:", "---", "---"] + ["---:"] * (len(HEADERS) - 3)) + "|"]
        out += ["| " + " | ".join(_cell(t) for t in cells(row, group, level)) + " |"
                for level, rows in levels for row in rows]
        out += ["", *(f"- {_cell(verdict_line(group, level, rows))}" for level, rows in levels), ""]
    return out
