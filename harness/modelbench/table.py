"""The suite's document as a text table: one row per model, then the targets."""

from __future__ import annotations


def _num(ms: float) -> str:
    """Three significant digits without an exponent (milliseconds run from 0.002 to thousands)."""
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def _ms(entry: dict | None) -> str:
    timing = (entry or {}).get("timing")
    if not timing:
        return "-"
    return f"{_num(timing['median_ms'])} [{_num(timing['p10_ms'])}-{_num(timing['p90_ms'])}]"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _built(entry: dict | None) -> str:
    if not entry:
        return "-"
    if not entry.get("compiled"):
        return "FAIL"
    if "max_rel_err" not in entry:
        return "yes/?"
    return f"yes/{'ok' if entry['correct'] else 'WRONG'} {entry['max_rel_err']:.0e}"


def format_table(doc: dict) -> str:
    """Per model: compiled/correct (max relative error vs onnxruntime) of the dense and sparse builds, their median
    ms [p10-p90] and onnxruntime's, the time ratios dense/ORT (target <= 1.5), sparse/ORT and sparse/dense (CNNs:
    target < 0.95 both), compile wall time; skipped and failed models with their reason."""
    meta = doc["meta"]
    head = (f"{'model':<14} {'kind':<11} {'dense built/check':<19} {'sparse built/check':<19} {'dense ms':>22} "
            f"{'ORT ms':>22} {'sparse ms':>22} {'d/ORT':>6} {'s/ORT':>6} {'s/d':>6} {'compile s':>9}")
    lines = [f"models on {meta['cpu_model']} ({meta['cpus']} cpus, TVM {meta['tvm_version']} "
             f"{meta['tvm_threads']} threads, onnxruntime {meta['ort_threads']} threads), batch "
             f"{meta['plan']['batch']}, sparse = {meta['plan']['sparsity']:g} with "
             f"{meta['plan']['block'][0]}x{meta['plan']['block'][1]} blocks; ms = median [p10-p90]", head,
             "-" * len(head)]
    for m in doc["models"]:
        if m["status"] == "skipped":
            lines.append(f"{m['model']:<14} {m['kind']:<11} skipped: {m['reason']}")
            continue
        r = m.get("ratios", {})
        lines.append(f"{m['model']:<14} {m['kind']:<11} {_built(m.get('dense')):<19} {_built(m.get('sparse')):<19} "
                     f"{_ms(m.get('dense')):>22} {_ms(m.get('ort')):>22} {_ms(m.get('sparse')):>22} "
                     f"{_ratio(r.get('dense_over_ort')):>6} {_ratio(r.get('sparse_over_ort')):>6} "
                     f"{_ratio(r.get('sparse_over_dense')):>6} {m.get('compile_wall_s', '-'):>9}")
        if m["status"] == "error":
            lines.append(f"{'':<14} error: {m['error']}")
        for which in ("dense", "sparse"):
            if (m.get(which) or {}).get("error"):
                lines.append(f"{'':<14} {which}: {m[which]['error'][:300]}")
    lines += ["", f"issue #9 targets (this run, {meta['seconds']:.0f} s, load {meta['loadavg_start']}->"
                  f"{meta['loadavg_end']}):"]
    lines += [f"  [{'PASS' if c['ok'] else 'FAIL'}] {c['claim']}: {c['detail']}" for c in doc["targets"]]
    return "\n".join(lines)
