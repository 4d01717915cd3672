"""report.html: one self-contained page (inline CSS, images as base64 data URIs, no scripts, nothing fetched
from the network) that opens offline. Every string from the data goes through :func:`html.escape`."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..records import LayerRecord, ResultRow
from . import fmt
from .tables import (COLUMNS, Group, best_dense_lines, headline, problem_rows, problems_of, row_context,
                     verdict_counts)

if TYPE_CHECKING:  # plots imports matplotlib; the page itself only embeds the PNGs it is given
    from .plots import PlotSpec

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 110rem; padding: 0 1rem; color: #222; }
h1 { margin-bottom: .2rem; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
.VALID { color: #176f2c; font-weight: 600; } .INVALID { color: #a15c00; font-weight: 600; }
.ERROR { color: #b00020; font-weight: 600; }
.counts span { margin-right: 1.2rem; font-size: 1.1rem; }
pre { background: #f6f6f6; padding: .4rem .6rem; white-space: pre-wrap; word-break: break-word; margin: .2rem 0; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .8rem; color: #555; } details { margin: .3rem 0; } summary { cursor: pointer; }
.note { color: #666; font-size: .85rem; }
.scroll { overflow-x: auto; max-width: 100%; } .headline li { font-size: 1.05rem; margin: .2rem 0; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _headline_section(groups: Sequence[Group]) -> list[str]:
    """The answer first: per model, batch and device, what the best sparse variant buys."""
    return ['<section id="headline">', "<h2>What sparsity buys</h2>", '<ul class="headline">',
            *(f"<li>{_e(headline(g))}</li>" for g in groups), "</ul>", "</section>"]


def _verdict_section(rows: Sequence[ResultRow]) -> list[str]:
    counts = verdict_counts(rows)
    out = ['<section id="verdicts">', "<h2>Verdicts</h2>", '<p class="counts">']
    out += [f'<span class="{_e(v)}">{n} {_e(v)}</span>' for v, n in counts.items()]
    out.append(f"<span>{len(rows)} rows</span></p>")
    problems = problem_rows(rows)
    if problems:
        out.append(f"<details><summary>{len(problems)} row(s) not VALID: the reasons</summary><ul>")
        for row in problems:
            verdict = _e(row.verdict)
            out.append(f'<li><span class="{verdict}">{verdict}</span> <code>{_e(row.variant_key)}</code>'
                       f" ({_e(row_context(row))})")
            out += [f"<pre>{_e(p)}</pre>" for p in problems_of(row)]
            out.append("</li>")
        out.append("</ul></details>")
    elif rows:
        out.append("<p>All rows are VALID.</p>")
    out.append("</section>")
    return out


def _results_section(groups: Sequence[Group]) -> list[str]:
    cols = [c for c in COLUMNS if c.name != "quality"]  # accuracy and top-1 have their own columns here
    out = ['<section id="results">', "<h2>Results</h2>", '<div class="scroll"><table class="results">',
           "<thead><tr>"]
    out += [f"<th>{_e(c.header)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for group, row in ((g, r) for g in groups for r in g.rows):
        cells = []
        for c in cols:
            text = c.cell(row, group)
            cls = row.verdict if c.name == "verdict" else ("num" if c.numeric else "")
            # Hovering the verdict shows why; hovering an unavailable energy shows the sensor status.
            tip = {"verdict": "; ".join(problems_of(row)) if row.verdict != "VALID" else "",
                   "energy": row.energy_status or ""}.get(c.name, "")
            attrs = (f' class="{_e(cls)}"' if cls else "") + (f' title="{_e(tip)}"' if tip else "")
            cells.append(f"<td{attrs}>{_e(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody></table></div>",
            '<p class="note">p50 = median latency of one call from Python (what an application calling from Python '
            "sees), all timing rounds pooled, with its 95 % distribution-free interval; round spread = the standard "
            "deviation of the rounds' medians relative to it (the variants of a model took turns round by round); model ms = the same "
            "model timed by TVM's C++ timer (repeats of at least 1 ms of back-to-back calls, no Python/FFI "
            "overhead). Speedup vs dense = our dense build\'s p50 / variant p50 within the same model, batch "
            "and device; speedup vs best dense = the fastest dense runtime's p50 (our build or a peer runtime's, "
            "named in brackets) / variant p50; intervals come from the two medians' intervals (both hold: at least "
            "90 %), and 'no significant difference' marks one that contains 1. n/a = not available (never zero). "
            "Latencies in ms.</p>"]
    out += _best_dense_section(groups)
    out.append("</section>")
    return out


def _best_dense_section(groups: Sequence[Group]) -> list[str]:
    """Per group with a peer row: the fastest dense runtime, and the sparse rows that only beat a slower one."""
    lines = [best_dense_lines(g) for g in groups]
    if not any(lines):
        return []
    out = ['<div id="best-dense"><h3>Against the best dense runtime</h3><ul>']
    for group_lines in (ls for ls in lines if ls):
        out.append(f"<li>{_e(group_lines[0])}")
        if group_lines[1:]:
            out.append("<ul>" + "".join(f'<li class="INVALID">{_e(x)}</li>' for x in group_lines[1:]) + "</ul>")
        out.append("</li>")
    out.append("</ul></div>")
    return out


def _decision_section(groups: Sequence[Group]) -> list[str]:
    """Channel pruning vs sparse kernels at the same level, per model, batch and device: the decision table."""
    from .decision import HEADERS, cells, comparison_rows, verdict_line

    found = [(g, comparison_rows(g)) for g in groups]
    found = [(g, levels) for g, levels in found if levels]
    if not found:
        return []
    out = ['<section id="channel-vs-sparse">', "<h2>Channel pruning vs sparse kernels</h2>",
           '<p class="note">The same parameter count two ways: a channel-pruned model (smaller, dense) against the '
           "sparse variants with our kernels at the same level. Speedup vs this group's dense build; parameters = "
           "weights of the prunable layers (a sparse variant's nonzeros).</p>"]
    for group, levels in found:
        out += [f"<h3>{_e(group.title)}</h3>", '<div class="scroll"><table class="decision"><thead><tr>',
                *(f"<th>{_e(h)}</th>" for h in HEADERS), "</tr></thead><tbody>"]
        for level, rows in levels:
            for row in rows:
                texts = cells(row, group, level)
                classes = ["", "", row.verdict] + ["num"] * (len(texts) - 3)
                out.append("<tr>" + "".join(f'<td class="{_e(c)}">{_e(t)}</td>' if c else f"<td>{_e(t)}</td>"
                                            for c, t in zip(classes, texts)) + "</tr>")
        out.append("</tbody></table></div><ul>")
        out += [f"<li>{_e(verdict_line(group, level, rows))}</li>" for level, rows in levels]
        out.append("</ul>")
    out.append("</section>")
    return out


def _glossary_section() -> list[str]:
    """What the product measures and what it does not."""
    from .decision import GLOSSARY

    out = ['<section id="glossary">', "<h2>What is measured</h2>", "<dl>"]
    for term, text in GLOSSARY:
        out += [f"<dt><b>{_e(term)}</b></dt>", f"<dd>{_e(text)}</dd>"]
    out += ["</dl>", "</section>"]
    return out


def _notes_section(notes: Sequence[str]) -> list[str]:
    """What the run could not do without it being a row's error (a peer runtime missing on the device)."""
    if not notes:
        return []
    return ['<section id="notes">', "<h2>Notes</h2>", "<ul>", *(f"<li>{_e(n)}</li>" for n in notes), "</ul>",
            "</section>"]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _plots_section(groups: Sequence[Group], figures: Sequence[Sequence[tuple[PlotSpec, Path]]]) -> list[str]:
    out = ['<section id="plots">', "<h2>Plots</h2>"]
    for group, drawn in zip(groups, figures):
        out.append(f"<h3>{_e(group.title)}</h3>")
        if not drawn:
            out.append('<p class="note">No measured rows in this group: nothing to plot (see the table).</p>')
        for spec, path in drawn:
            out.append(f'<figure><img src="{_data_uri(path)}" alt="{_e(spec.caption)}">'
                       f"<figcaption>{_e(spec.caption)} — {_e(Path(path).name)}</figcaption></figure>")
    out.append("</section>")
    return out


def _why(layer: LayerRecord) -> str:
    """Why the compiler picked this layer's kernel: the candidates timed on the device, or the rule used."""
    if layer.choice == "measured" and layer.alternatives_us:
        timed = sorted(layer.alternatives_us.items(), key=lambda item: item[1])
        where = f" on {layer.measured_on}" if layer.measured_on else ""
        return f"measured{where}: " + " · ".join(f"{name} {us:.3g} µs" for name, us in timed)
    if layer.choice == "rule":
        return f"rule: {layer.rule or 'n/a'}"
    return "left to TVM's default schedule"


def _found(layer: LayerRecord) -> str:
    """What as-is found in the layer (``16x1 blocks``, ``2:4``, ``unstructured``) or what channel pruning did."""
    extra = layer.extra or {}
    return "; ".join(str(extra[k]) for k in ("pattern", "detail") if extra.get(k)) or "—"


def _kernel(layer: LayerRecord) -> str:
    """Which kernel ran the layer: ours (``bsr 16×1``, ``dense``, ``nm 2:4``) or TVM's own lowering, never blank."""
    if layer.kernel in (None, "default"):
        return "dense, TVM default schedule"
    if layer.kernel == "tvm":  # chosen over ours (measured, or the CUDA rule), not merely left over
        return "dense, TVM default schedule (chosen)"
    if layer.block:
        sep = ":" if layer.kernel == "nm" else "×"
        return f"{layer.kernel} {sep.join(map(str, layer.block))} (ours)"
    return f"{layer.kernel} (ours)"


def _operator(layer: LayerRecord) -> str:
    """The layer's operator: the ONNX node's (``Conv 3×3 /2``), and the compiler's form of it when it says more."""
    names = [name for name in (layer.node_op, layer.op) if name]
    if not names:
        return "unknown operator (no pruning or compiler record)"
    return " → ".join(dict.fromkeys(names))


def _layers_section(rows: Sequence[ResultRow]) -> list[str]:
    out = ['<section id="layers">', "<h2>Per-layer sparsity and kernel choice</h2>"]
    for row in rows:
        layers = row.layers
        verdict = _e(row.verdict)
        count = f"{len(layers)} layer" + ("" if len(layers) == 1 else "s")
        out.append(f"<details><summary><code>{_e(row.variant_key)}</code> — "
                   f'<span class="{verdict}">{verdict}</span> — {count}</summary>')
        if not layers:
            out.append('<p class="note">No per-layer data.</p>')
        else:
            out.append('<div class="scroll"><table><thead><tr><th>layer</th><th>operator</th><th>shape</th>'
                       "<th>sparsity target</th><th>sparsity actual</th><th>pattern found / pruning</th><th>kernel</th>"
                       "<th>why</th></tr></thead><tbody>")
            for layer in layers:
                weight = f' title="weight {_e(layer.weight)}"' if layer.weight else ""
                out.append("<tr>" + "".join([
                    f"<td{weight}>{_e(fmt.text(layer.layer))}</td>",
                    f"<td>{_e(_operator(layer))}</td>",
                    f'<td class="num">{_e("×".join(map(str, layer.shape)) if layer.shape else fmt.NA)}</td>',
                    f'<td class="num">{_e(fmt.pct(layer.sparsity_target))}</td>',
                    f'<td class="num">{_e(fmt.pct(layer.sparsity_actual))}</td>',
                    f"<td>{_e(_found(layer))}</td>",
                    f"<td>{_e(_kernel(layer))}</td>",
                    f"<td>{_e(_why(layer))}</td>"]) + "</tr>")
            out.append("</tbody></table></div>")
        out.append("</details>")
    out.append("</section>")
    return out


def _flatten(info: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested run_info as ``a.b`` keys, so a target dict or device metadata fit one two-column table."""
    items: list[tuple[str, str]] = []
    for key, value in info.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items += _flatten(value, name + ".")
        elif isinstance(value, (list, tuple)):
            items.append((name, ", ".join(map(str, value))))
        else:
            items.append((name, fmt.text(value)))
    return items


def _environment_section(run_info: dict | None) -> list[str]:
    out = ['<section id="environment">', "<h2>Environment</h2>"]
    items = _flatten(run_info or {})
    if not items:
        out.append('<p class="note">No run metadata.</p>')
    else:
        out.append("<table><tbody>")
        out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items]
        out.append("</tbody></table>")
    out.append("</section>")
    return out


def render_html(groups: Sequence[Group], figures: Sequence[Sequence[tuple[PlotSpec, Path]]], *, title: str,
                run_info: dict | None = None, notes: Sequence[str] = ()) -> str:
    """The whole page: verdicts first, then the results table, plots, per-layer tables and the environment.

    ``figures`` is aligned with ``groups`` (as returned by :func:`harness.report.plots.draw_group_plots`).
    """
    rows = [r for g in groups for r in g.rows]
    info = run_info or {}
    meta = " · ".join(f"{k} {info[k]}" for k in ("run_id", "created_at") if info.get(k) is not None)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    if meta:
        parts.append(f'<p class="meta">{_e(meta)}</p>')
    parts += _headline_section(groups)
    parts += _verdict_section(rows)
    parts += _notes_section(notes)
    parts += _results_section(groups)
    parts += _decision_section(groups)
    parts += _plots_section(groups, figures)
    parts += _layers_section(rows)
    parts += _glossary_section()
    parts += _environment_section(run_info)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
