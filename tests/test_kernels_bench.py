"""The kernel suite behind `sparsebench kernels`: records, table and issue checks on a tiny plan (real TVM builds,
numpy, onnxruntime and scipy; a few timed calls each), plus the CLI wiring."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")
pytest.importorskip("scipy")

from harness.cli import build_parser  # noqa: E402
from harness.config import load_target  # noqa: E402
from harness.kernelbench import (  # noqa: E402
    SUITE_FORMAT,
    Plan,
    format_table,
    issue_checks,
    kernel_suite,
    write_json,
)
from harness.kernelbench.bandwidth import bandwidth_at, curve_sizes, read_roofline  # noqa: E402
from harness.kernelbench.timer import Clock, Timing  # noqa: E402

TINY = Plan(shapes=((64, 48),), batches=(1, 4), sparsities=(0.5, 0.9), blocks=((16, 1), (1, 1), (4, 4)),
                  nm=(2, 4), min_runs=3, max_runs=3, budget_s=0.0, slow_min_runs=2, warmup=1, settle_s=0.0,
                  attempts=1, passes=2)
BANDWIDTH = {"llc_bytes": 32 << 20, "cache_buffer_bytes": 4 << 20, "dram_buffer_bytes": 128 << 20,
             "cache_gbs": 80.0, "dram_gbs": 20.0,
             # a fast made-up curve (the tiny kernels' times are real): every fraction stays below 1
             "read_curve": [{"bytes": 16 << 10, "gbs": 20000.0, "threads": 1},
                            {"bytes": 1 << 30, "gbs": 2000.0, "threads": 2}]}
CURVE = [{"bytes": 16 << 10, "gbs": 200.0, "threads": 1}, {"bytes": 1 << 20, "gbs": 100.0, "threads": 2},
         {"bytes": 1 << 30, "gbs": 20.0, "threads": 2}]
KEYS = {"shape", "batch", "sparsity", "format", "block", "impl", "median_us", "p90_us", "n", "roofline_fraction"}


@pytest.fixture(scope="module")
def doc():
    return kernel_suite(TINY, load_target("local").tvm_target, log=lambda _: None, bandwidth=BANDWIDTH)


def test_records_cover_every_impl_and_format(doc):
    records = doc["records"]
    assert all(KEYS <= set(r) for r in records)
    dense = {(r["batch"], r["impl"]) for r in records if r["format"] == "dense"}
    assert dense == {(m, impl) for m in (1, 4) for impl in ("ours-dense", "tvm-default", "numpy", "onnxruntime")}
    sparse = {(r["batch"], r["sparsity"], r["format"], tuple(r["block"]), r["impl"]) for r in records
              if r["format"] != "dense"}
    for m in (1, 4):
        for s in (0.5, 0.9):
            for block in ((16, 1), (1, 1), (4, 4)):
                assert {(m, s, "bsr", block, "ours-sparse"), (m, s, "bsr", block, "scipy-csr")} <= sparse
        assert (m, 0.5, "nm", (2, 4), "ours-sparse") in sparse and not any(k[1] == 0.9 and k[2] == "nm" for k in sparse)
    assert all(r["n"] >= 2 and r["p90_us"] >= r["median_us"] > 0 for r in records)
    # the roofline is a batch-1 quantity
    assert all((r["roofline_fraction"] is not None) == (r["batch"] == 1) for r in records)


def test_table_and_checks(doc):
    table = format_table(doc)
    assert "best sparse" in table and "issue #3 numbers" in table and "64x48" in table
    claims = {c["claim"] for c in issue_checks(doc)}
    assert ">= 1.3x np/ort, batch 1, 2:4" in claims and ">= 2x scipy CSR, batch 1, 90 %, 1x1" in claims
    assert all(isinstance(c["ok"], bool) for c in issue_checks(doc))


def test_roofline_plot(doc, tmp_path):
    from harness.kernelbench.plot import plot_roofline

    path = plot_roofline(doc, tmp_path / "roofline.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_round_trip(doc, tmp_path):
    path = write_json(doc, tmp_path / "k" / "kernels.json")
    loaded = json.loads(path.read_text())
    assert loaded["format"] == SUITE_FORMAT and len(loaded["records"]) == len(doc["records"])


def test_roofline_uses_the_read_curve_at_the_working_set_size_and_never_exceeds_one():
    assert bandwidth_at(CURVE, 1 << 20) == 100.0 and bandwidth_at(CURVE, 8 << 10) == 200.0
    assert bandwidth_at(CURVE, 2 << 30) == 20.0 and 100.0 > bandwidth_at(CURVE, 32 << 20) > 20.0
    assert bandwidth_at(CURVE, 128 << 10) == pytest.approx(150.0)  # log-linear: half way in log size
    timing = Timing(median_us=10.0, p90_us=11.0, n=20)
    roof = read_roofline(500_000, timing, CURVE)  # 0.5 MB at ~110 GB/s = ~4.5 µs of 10
    assert 0.4 < roof["roofline_fraction"] < 0.5 and roof["working_set_bytes"] == 500_000
    fast = read_roofline(500_000, Timing(median_us=1.0, p90_us=1.1, n=20), CURVE)  # 500 GB/s: faster than the probe
    assert fast["roofline_fraction"] is None and "the bandwidth probe is wrong" in fast["roofline_error"]
    sizes = curve_sizes(quick=False)
    assert sizes[0] == 16 << 10 and sizes[-1] == 1 << 30 and sizes == sorted(sizes)


def test_read_probe_measures_a_falling_curve():
    """The compiled read kernel: an L1-sized buffer reads faster than one far past the caches."""
    from schedules.build import default_target

    from harness.kernelbench.bandwidth import measure_read_curve

    curve = measure_read_curve(default_target(), 1, quick=True)
    small, big = curve[0], curve[-1]
    assert small["bytes"] == 16 << 10 and big["bytes"] == 256 << 20
    assert small["gbs"] > 2 * big["gbs"] > 0


def test_noisy_measurements_are_retried():
    clock = Clock(Plan(attempts=3, noisy_ratio=2.0))
    seen = iter([Timing(500.0, 900.0, 20, 100.0), Timing(120.0, 130.0, 20, 100.0)])
    timing = clock.steady(lambda: next(seen))
    assert timing.median_us == 120.0 and timing.attempts == 2


def test_cli_has_kernels_command():
    args = build_parser().parse_args(["kernels", "--quick", "--json", "out.json"])
    assert args.quick and str(args.json) == "out.json" and args.func.__name__ == "cmd_kernels"


def test_kernelbench_does_not_import_tvm():
    """TVM calls stay in schedules/ (STYLE.md): the benchmark reaches TVM only through `schedules.build`."""
    import ast
    from pathlib import Path

    import harness.kernelbench

    for path in Path(harness.kernelbench.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "tvm" or n.startswith("tvm.") for n in names), f"{path.name} imports {names}"
