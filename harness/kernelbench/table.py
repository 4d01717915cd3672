"""The short stdout table of a suite document: the best sparse kernel per row against the baselines, the dense
times, and the issue's checks."""

from __future__ import annotations

from .checks import issue_checks
from .summary import dense_record, index, label, ratio, rows


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "x") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _size(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):g} {unit}"
    return f"{nbytes} B"


def format_table(doc: dict) -> str:
    """The short stdout table: per shape, batch and sparsity, the best sparse kernel against the baselines."""
    bw = doc["bandwidth"]
    lines = [
        f"target {doc['meta']['target']}  TVM threads {doc['meta']['tvm_threads']}  ({doc['meta']['seconds']} s)",
        f"copy bandwidth (read+write): cache {bw['cache_gbs']:.1f} GB/s ({bw['cache_buffer_bytes'] >> 20} MiB buffer), "
        f"dram {bw['dram_gbs']:.1f} GB/s ({bw['dram_buffer_bytes'] >> 20} MiB); LLC {bw['llc_bytes'] >> 20} MiB "
        "(as the OS reports it)",
        "read bandwidth by working set (the roofline): " + " · ".join(
            f"{_size(p['bytes'])} {p['gbs']:.0f}" for p in bw.get("read_curve", [])[::4]) + " GB/s",
        f"times are medians in µs (best of {doc['meta']['plan'].get('passes', 1)} passes); "
        "'x' = how many times faster the best sparse kernel is; "
        "np/ort = the faster of numpy and onnxruntime; roof = fraction of the bandwidth roofline",
        f"{'N x K':>10} {'M':>3} {'zeros':>5} | {'best sparse':>12} {'µs':>8} {'roof':>5} | {'np/ort':>8} {'x':>6} | "
        f"{'dense':>8} {'x':>6} | {'1x1 µs':>8} {'scipy':>8} {'x':>6} | {'2:4':>8} {'x np/ort':>8}",
    ]
    busy = max(doc["meta"].get("loadavg_start", 0), doc["meta"].get("loadavg_end", 0))
    if busy > 0.5 * doc["meta"]["cpus"]:
        lines.insert(0, f"WARNING: load average {busy:.2f} on {doc['meta']['cpus']} CPUs during the run: other "
                        "processes shared the cores, so times are inflated and noisy; rerun on an idle machine")
    for row in rows(doc):
        best, base, dense = row["best"], row["baseline"], row["dense"]
        roof = best.get("roofline_fraction")
        if best.get("roofline_error"):
            roof = float("nan")  # printed as nan: the probe is wrong there (the checks below say why)
        lines.append(
            f"{row['shape'][0]:>5}x{row['shape'][1]:<4} {row['batch']:>3} {row['sparsity']:>5.2f} | "
            f"{label(best):>12} {best['median_us']:>8.1f} {_fmt(roof, '.2f', ''):>5} | "
            f"{_fmt(base and base['median_us'], '.1f', ''):>8} {_fmt(ratio(base, best)):>6} | "
            f"{_fmt(dense and dense['median_us'], '.1f', ''):>8} {_fmt(ratio(dense, best)):>6} | "
            f"{_fmt(row['csr'] and row['csr']['median_us'], '.1f', ''):>8} "
            f"{_fmt(row['scipy_csr'] and row['scipy_csr']['median_us'], '.1f', ''):>8} "
            f"{_fmt(ratio(row['scipy_csr'], row['csr'])):>6} | "
            f"{_fmt(row['nm'] and row['nm']['median_us'], '.1f', ''):>8} {_fmt(ratio(base, row['nm'])):>8}"
        )
    dense_lines = ["", "dense (µs): ours-dense / numpy / onnxruntime / tvm-default"]
    idx = index(doc["records"])
    for shape in doc["meta"]["plan"]["shapes"]:
        for m in doc["meta"]["plan"]["batches"]:
            got = [dense_record(idx, tuple(shape), m, impl)
                   for impl in ("ours-dense", "numpy", "onnxruntime", "tvm-default")]
            dense_lines.append(f"{shape[0]:>5}x{shape[1]:<4} {m:>3}: " + " / ".join(
                _fmt(r and r["median_us"], ".1f", "") for r in got))
    checks = ["", "issue #3 numbers (this run):"]
    for check in issue_checks(doc):
        checks.append(f"  [{'PASS' if check['ok'] else 'FAIL'}] {check['claim']}: {check['detail']}")
    return "\n".join(lines + dense_lines + checks)
