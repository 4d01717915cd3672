"""``sparsebench compare``: rows of several runs and devices in a real SQLite store, the report's tables, CSV, PNGs
and HTML; the CLI's bad input; one end-to-end comparison of two real runs on this machine."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from conftest import sparsebench, write_config
from harness.cli import main
from harness.measure.stats import ratio_ci
from harness.records import ResultRow
from harness.report.compare import COMPARE_COLUMNS, Board, Variant, load_comparison, write_compare_report
from harness.store import ResultStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_A, RUN_B = "20260101-000000-aaaa", "20260102-000000-bbbb"  # same config, B measured later
RUN_X = "20260103-000000-cccc"  # another config, another device
RUN_E = "20260104-000000-eeee"  # only ERROR rows
ERROR_TEXT = "run: board <pi-a> lost & \"gave up\""
VARIANTS = [("dense", 0.0, ""), ("unstructured", 0.5, ""), ("unstructured", 0.9, ""), ("block", 0.5, "16x1"),
            ("block", 0.9, "16x1")]
#: p50 ms on pi-a in run A; pi-b is 10 % slower
P50 = {("dense", 0.0): 10.0, ("unstructured", 0.5): 8.0, ("unstructured", 0.9): 5.0, ("block", 0.5): 6.0,
       ("block", 0.9): 2.5}


def make_row(run_id: str, device: str, target: str, method: str, sparsity: float, block: str, p50: float | None, *,
             verdict: str = "VALID", error: str | None = None, reasons: tuple[str, ...] = (),
             energy: float | None = None) -> ResultRow:
    key = f"mlp/{method}{'-' + block if block else ''}/{sparsity}@b1"
    measured = p50 is not None
    return ResultRow(
        run_id=run_id, variant_key=key, device=device, model="mlp", method=method, sparsity_target=sparsity,
        sparsity_actual=sparsity, block=block, batch=1, target=target, target_json={"kind": "llvm"},
        transport="ssh", latency_p50_ms=p50, latency_p50_ci_low_ms=p50 * 0.98 if measured else None,
        latency_p50_ci_high_ms=p50 * 1.02 if measured else None, latency_p90_ms=p50 * 1.1 if measured else None,
        n_iter=11 if measured else None, accuracy=0.95 - 0.1 * sparsity if measured else None,
        top1_agreement=1.0 if measured else None, energy_mj=energy,
        energy_status="ok" if energy is not None else "unavailable: no power sensor",
        verdict=verdict, error=error, reasons=reasons)


def add(store: ResultStore, row: ResultRow) -> None:
    p50 = row.latency_p50_ms
    samples = None if p50 is None else [int(p50 * 1e6 * (1 + 0.005 * i)) for i in range(-5, 6)]
    store.add_result(row, samples_ns=samples)


def fill_store(db: Path) -> ResultStore:
    """Run A: pi-a and pi-b (profile rpi5) x 5 variants, one ERROR and one INVALID cell; run B (same config):
    pi-a again, block 50 % clearly slower, unstructured 90 % 4.5 % slower (intervals apart, below the 5 % minimum
    change), the rest the same within the intervals; run X (another config) on a laptop; run E: ERRORs."""
    store = ResultStore(db)
    for run_id, config_hash in ((RUN_A, "hash-one"), (RUN_B, "hash-one"), (RUN_X, "hash-two"), (RUN_E, "hash-3")):
        store.create_run(run_id, name="farm", config_toml="", config_hash=config_hash, target="farm:lab",
                         target_json={}, host={}, harness_version="test")
    for method, s, block in VARIANTS:
        base = P50[(method, s)]
        error_cell = (method, s) == ("block", 0.9)
        add(store, make_row(RUN_A, "pi-a", "rpi5", method, s, block, None if error_cell else base,
                            verdict="ERROR" if error_cell else "VALID", error=ERROR_TEXT if error_cell else None,
                            energy=None if error_cell else base * 3))
        invalid = (method, s) == ("unstructured", 0.9)
        add(store, make_row(RUN_A, "pi-b", "rpi5", method, s, block, base * 1.1,
                            verdict="INVALID" if invalid else "VALID",
                            reasons=("CV 12% > 5%: pin the governor",) if invalid else ()))
        factor = {("block", 0.5): 1.5, ("unstructured", 0.9): 1.045}.get((method, s), 1.005)
        add(store, make_row(RUN_B, "pi-a", "rpi5", method, s, block, base * factor))
        add(store, make_row(RUN_X, "laptop", "x86", method, s, block, base / 4))
        add(store, make_row(RUN_E, "pi-a", "rpi5", method, s, block, None, verdict="ERROR",
                            error="connect: board unreachable"))
    return store


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cmp") / "r.db"
    fill_store(path).close()
    return path


@pytest.fixture(scope="module")
def comparison(db):
    store = ResultStore(db)
    yield load_comparison(store, [RUN_A, RUN_B, RUN_X])
    store.close()


@pytest.fixture(scope="module")
def report(comparison, tmp_path_factory) -> dict:
    return write_compare_report(comparison, tmp_path_factory.mktemp("out"))


def test_cells_speedup_vs_the_same_boards_dense(comparison):
    boards = comparison.boards("mlp")
    assert boards == [Board(RUN_A, "pi-a", "rpi5"), Board(RUN_A, "pi-b", "rpi5"), Board(RUN_B, "pi-a", "rpi5"),
                      Board(RUN_X, "laptop", "x86")]
    variants = comparison.variants("mlp")
    assert [v.method for v in variants] == ["dense", "unstructured", "unstructured", "block", "block"]
    u50 = Variant("unstructured", 0.5, "", 1)
    for board, dense in ((boards[0], 10.0), (boards[1], 11.0), (boards[3], 2.5)):
        cell = comparison.cell(board, "mlp", u50)
        p50 = cell.row.latency_p50_ms
        assert cell.speedup == pytest.approx(dense / p50)  # each board against its own dense row
        assert cell.speedup_ci == pytest.approx(ratio_ci((dense * 0.98, dense * 1.02), (p50 * 0.98, p50 * 1.02)))
    error = comparison.cell(boards[0], "mlp", Variant("block", 0.9, "16x1", 1))
    assert error.row.verdict == "ERROR" and error.speedup is None and ERROR_TEXT in error.problems
    assert comparison.cell(boards[0], "mlp", u50).energy() == "energy 24.0 mJ"
    assert comparison.cell(boards[1], "mlp", u50).energy() == "energy unavailable"


def test_html_tables_mark_invalid_and_error_cells(report):
    html = Path(report["html"]).read_text()
    table = html.split('<section id="models">')[1].split("</section>")[0]
    assert f"<th>{RUN_A} · pi-b [rpi5]</th>" in table and f"<th>{RUN_X} · laptop [x86]</th>" in table
    assert "<th>unstructured 50% · b1</th>" in table and "<th>block 16x1 90% · b1</th>" in table
    assert "p50 8.00 ms [7.84–8.16 ms]" in table and "1.25× [1.20–1.30×] vs dense" in table
    # ERROR: named with its reason (escaped), in the cell and its tooltip; INVALID: flagged with its reason
    escaped = "run: board &lt;pi-a&gt; lost &amp; &quot;gave up&quot;"
    assert f'<td class="cell ERROR" title="{escaped}">' in table
    assert "INVALID: CV 12% &gt; 5%: pin the governor" in table
    assert "energy unavailable" in table and "energy 24.0 mJ" in table
    assert table.count("the board&#x27;s dense baseline (1×)") == 4
    assert "<" + "script" not in html and "https://" not in html


def test_spread_of_identical_boards(comparison, report):
    spread = {(s.run_id, s.target, s.variant.method, s.variant.sparsity): s for s in comparison.spreads}
    dense = spread[(RUN_A, "rpi5", "dense", 0.0)]
    assert dense.boards == ("pi-a", "pi-b") and dense.p50 == pytest.approx((10.0, 11.0))
    assert dense.relative(dense.p50) == pytest.approx(0.1)
    u50 = spread[(RUN_A, "rpi5", "unstructured", 0.5)]
    assert u50.speedup == pytest.approx((1.25, 1.25))  # both boards 10 % slower: the same speedup
    # the ERROR cell on pi-a leaves one measured board
    assert spread[(RUN_A, "rpi5", "block", 0.9)].note == "unavailable: measured on 1 of 2 boards of this profile"
    assert spread[(RUN_X, "x86", "dense", 0.0)].note == "unavailable: one board of this profile"
    section = Path(report["html"]).read_text().split('<section id="spread">')[1].split("</section>")[0]
    assert "10.0–11.0" in section and "10.0%" in section
    # a profile with one board: one line for all its variants, naming the board
    assert section.count("unavailable: one board of this profile") == 2
    assert f"<td>{RUN_X}</td><td>x86</td><td>mlp</td><td>every variant</td><td>laptop</td>" in section


def test_regression_view_changes_first(comparison, report):
    assert len(comparison.regressions) == 1
    reg = comparison.regressions[0]
    assert (reg.old_run, reg.new_run, reg.device) == (RUN_A, RUN_B, "pi-a")
    verdicts = [(c.new.variant.method, c.new.variant.sparsity, c.verdict) for c in reg.changes]
    assert verdicts[0] == ("block", 0.5, "slower") and reg.changes[0].ratio == pytest.approx(1.5)
    assert sorted(v for _, _, v in verdicts[1:4]) == ["same within 5 %", "same within CI", "same within CI"]
    assert verdicts[4] == ("block", 0.9, "not comparable: old cell is ERROR")
    assert any(f"{RUN_X} (no other run of the same config)" in n for n in comparison.regression_notes)
    section = Path(report["html"]).read_text().split('<section id="regression">')[1].split("</section>")[0]
    assert "1 slower, 0 faster, 3 same, 1 not comparable" in section and '<td class="slower">slower</td>' in section


def test_regression_does_not_apply_to_different_configs(db):
    store = ResultStore(db)
    comparison = load_comparison(store, [RUN_A, RUN_X, RUN_A])  # a run named twice counts once
    store.close()
    assert [r["run_id"] for r in comparison.runs] == [RUN_A, RUN_X]
    assert comparison.regressions == []
    assert "does not apply: no two runs share a config" in comparison.regression_notes[0]


def test_csv_one_line_per_run_device_variant(report):
    with open(report["csv"], newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COMPARE_COLUMNS
        lines = list(reader)
    assert len(lines) == 4 * 5
    by = {(r["run_id"], r["device"], r["method"], r["sparsity_target"]): r for r in lines}
    u50 = by[(RUN_A, "pi-b", "unstructured", "0.5")]
    assert float(u50["speedup"]) == pytest.approx(1.25) and float(u50["speedup_ci_low"]) < 1.25
    assert float(u50["spread_p50_rel"]) == pytest.approx(0.1) and u50["spread_boards"] == "pi-a pi-b"
    assert u50["energy_mj"] == "" and u50["energy_status"].startswith("unavailable")
    slower = by[(RUN_B, "pi-a", "block", "0.5")]
    assert slower["regression_verdict"] == "slower" and slower["regression_base_run"] == RUN_A
    assert float(slower["regression_ratio"]) == pytest.approx(1.5)
    error = by[(RUN_A, "pi-a", "block", "0.9")]
    assert error["verdict"] == "ERROR" and error["speedup"] == "" and ERROR_TEXT in error["problems"]
    assert by[(RUN_X, "laptop", "dense", "0.0")]["spread_note"] == "unavailable: one board of this profile"


def test_pngs_written_and_embedded(report):
    names = sorted(Path(p).name for p in report["plots"])
    assert names == ["mlp_b1_block-16x1_heatmap.png", "mlp_b1_pareto.png", "mlp_b1_unstructured_heatmap.png"]
    for path in report["plots"]:
        assert Path(path).read_bytes()[:8] == PNG_MAGIC
    html = Path(report["html"]).read_text()
    assert html.count('<img src="data:image/png;base64,') == 3


def test_cli_unknown_run_error_only_run(db, tmp_path, capsys):
    assert main(["compare", RUN_A, "nope", "--db", str(db), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run 'nope'" in err[0] and "`sparsebench results --db" in err[0]
    assert main(["compare", RUN_E, "--db", str(db), "--out", str(tmp_path / "e")]) == 0
    assert f"compare report: {tmp_path / 'e' / 'compare.html'}" in capsys.readouterr().err
    html = (tmp_path / "e" / "compare.html").read_text()
    assert html.count("connect: board unreachable") >= 5 and "needs two runs of the same config" in html
    assert main(["compare", RUN_A, "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "n")]) == 2
    assert main(["compare", RUN_A, "--db", str(db), "--out", str(tmp_path / "m"), "--min-change", "5"]) == 2
    assert "--min-change 5.0 must be a fraction" in capsys.readouterr().err
    # no minimum change: the 4.5 % change with intervals apart is called slower
    assert main(["compare", RUN_A, RUN_B, "--db", str(db), "--out", str(tmp_path / "z"), "--min-change", "0"]) == 0
    with open(tmp_path / "z" / "compare.csv", newline="") as fh:
        slower = [(r["method"], r["sparsity_target"]) for r in csv.DictReader(fh) if r["regression_verdict"] == "slower"]
    assert sorted(slower) == [("block", "0.5"), ("unstructured", "0.9")]


@pytest.mark.slow
def test_compare_two_real_runs(small_model, tmp_path):
    """Two real runs of one config on this machine, then `sparsebench compare A B` through the CLI."""
    model, eval_set = small_model
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=eval_set, db=db, levels=(0, 0.9),
                       methods=("block:8x1",), min_s=0.02, min_runs=10)
    ids = []
    for _ in range(2):
        proc = sparsebench("run", str(cfg), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        ids.append(re.search(r"run (\S+):", proc.stderr).group(1))
    out = tmp_path / "cmp"
    proc = sparsebench("compare", *ids, "--db", str(db), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out / "compare.html") in proc.stderr
    with open(out / "compare.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 4 and {r["run_id"] for r in lines} == set(ids)
    newer = [r for r in lines if r["run_id"] == ids[1]]
    assert all(r["regression_base_run"] == ids[0] for r in newer)
    assert all(r["regression_verdict"] in ("faster", "slower", "same within CI", "same within 5 %") for r in newer)
    sparse = [r for r in lines if r["method"] == "block"]
    assert all(float(r["speedup"]) > 0 and r["speedup_ci_low"] for r in sparse)
    html = (out / "compare.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 2  # block heatmap + Pareto
    assert "localhost" in html or "local" in html


def test_a_farm_board_is_shown_by_its_name():
    named = Board(RUN_A, "pi@10.0.0.21:22", "rpi5", "pi5-a")
    assert named.short == "pi5-a (pi@10.0.0.21:22) [rpi5]" and named.label == f"{RUN_A} · {named.short}"
    assert named == Board(RUN_A, "pi@10.0.0.21:22", "rpi5")  # the device identifies it; the name is for people


def test_a_boards_cpu_and_gpu_runs_side_by_side(tmp_path):
    """A Jetson measured twice, on its CPU and on its GPU: one model table with a line each, the GPU line labelled
    and holding TVM's default CUDA build as its other dense runtime; compare.csv says which accelerator ran it."""
    from dataclasses import replace

    store = ResultStore(tmp_path / "r.db")
    for run_id, acc in (("20261203-100000-c0c0", "cpu"), ("20261203-110000-9a9a", "cuda")):
        store.create_run(run_id, name="jet", config_toml="", config_hash=f"hash-{acc}", target="jetson-orin-nano",
                         target_json={}, host={}, harness_version="test")
        rows = [make_row(run_id, "nv@orin:22", "jetson-orin-nano", "dense", 0.0, "", 4.0 if acc == "cpu" else 0.5),
                make_row(run_id, "nv@orin:22", "jetson-orin-nano", "block", 0.9, "16x1", 1.0 if acc == "cpu" else 0.4)]
        if acc == "cuda":
            rows.append(replace(make_row(run_id, "nv@orin:22", "jetson-orin-nano", "dense", 0.0, "", 0.3),
                                method="tvm-default", variant_key="mlp/tvm-default/0@b1"))
        for row in rows:
            add(store, replace(row, accelerator=acc))
    comparison = load_comparison(store, ["20261203-100000-c0c0", "20261203-110000-9a9a"])
    store.close()
    boards = comparison.boards("mlp")
    assert [b.short for b in boards] == ["nv@orin:22 [jetson-orin-nano]", "nv@orin:22 [jetson-orin-nano, cuda]"]
    out = write_compare_report(comparison, tmp_path / "out")
    html = Path(out["html"]).read_text()
    assert "nv@orin:22 [jetson-orin-nano, cuda]" in html and "tvm-default" in html
    with open(out["csv"], newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert {(r["accelerator"], r["method"]) for r in lines} == {
        ("cpu", "dense"), ("cpu", "block"), ("cuda", "dense"), ("cuda", "block"), ("cuda", "tvm-default")}
