"""Unit tests for harness.report: synthetic rows in, files out (no TVM, no device)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.records import LayerRecord, ResultRow
from harness.report import CSV_COLUMNS, pareto_front, write_csv, write_report
from harness.report.tables import group_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ERROR_MESSAGE = "compile: <bsr> kernel failed & gave up \"badly\""


def make_row(model: str, method: str, sparsity: float, *, block: str = "", batch: int = 1, p50: float | None = 10.0,
             accuracy: float | None = None, top1: float | None = None, verdict: str = "VALID", error: str = "",
             reasons: tuple[str, ...] = ()) -> ResultRow:
    """One result row with every CSV column set (None where not measured)."""
    measured = p50 is not None
    key = f"{model}/{method}{'-' + block if block else ''}/s{sparsity}/b{batch}"
    return ResultRow(
        run_id="run-1", variant_key=key, model=model, method=method, sparsity_target=sparsity,
        sparsity_actual=sparsity - 0.01 if sparsity else 0.0, block=block, batch=batch, target="x86",
        target_json={"kind": "llvm"}, device="laptop", transport="local", latency_p50_ms=p50,
        latency_p90_ms=p50 * 1.1 if measured else None, latency_p99_ms=p50 * 1.3 if measured else None,
        latency_mean_ms=p50 * 1.02 if measured else None, latency_cv=0.02 if measured else None,
        n_iter=50 if measured else None, accuracy=accuracy, top1_agreement=top1,
        max_abs_err=1e-3 * sparsity if measured else None, energy_mj=None,
        energy_status="unavailable: no power sensor", artifact_bytes=123456, peak_rss_mb=55.5,
        verdict=verdict, error=error or None, reasons=reasons, compile_s=1.5,
        layers=(LayerRecord(layer="fc1", weight="fc1.weight", shape=(256, 784), sparsity_target=sparsity,
                            sparsity_actual=sparsity, kernel="bsr" if block else "dense",
                            block=(16, 1) if block else None),),
    )


def synthetic_rows() -> list[ResultRow]:
    """mlp (labels): dense + unstructured + block 16x1 at 0.5/0.9, one ERROR, one INVALID.
    tiny (no labels): dense + unstructured + block 16x1 at 0.5/0.9."""
    rows = [make_row("mlp", "dense", 0.0, p50=10.0, accuracy=0.95, top1=1.0)]
    for s, p50, acc in ((0.5, 8.0, 0.94), (0.9, 4.0, 0.90)):
        rows.append(make_row("mlp", "unstructured", s, p50=p50 * 1.5, accuracy=acc, top1=0.98))
        rows.append(make_row("mlp", "block", s, block="16x1", p50=p50, accuracy=acc - 0.01, top1=0.97))
    rows[-1] = replace(rows[-1], verdict="INVALID", reasons=("CV 12% > 5%: noisy machine, pin the governor",))
    rows.append(make_row("mlp", "block", 0.95, block="16x1", p50=None, verdict="ERROR", error=ERROR_MESSAGE))
    rows.append(make_row("tiny", "dense", 0.0, p50=2.0, top1=1.0))
    for s, p50 in ((0.5, 1.8), (0.9, 1.2)):
        rows.append(make_row("tiny", "unstructured", s, p50=p50, top1=0.99))
        rows.append(make_row("tiny", "block", s, block="16x1", p50=p50 * 0.8, top1=0.97))
    return rows


def samples_for(rows: list[ResultRow]) -> dict[str, list[float]]:
    return {r.variant_key: [r.latency_p50_ms * (1 + 0.01 * i) for i in range(-5, 6)]
            for r in rows if r.latency_p50_ms is not None}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    rows = synthetic_rows()
    out = tmp_path_factory.mktemp("report")
    run_info = {"run_id": "run-1", "created_at": "2025-01-01T00:00:00Z",
                "target": {"name": "x86", "triple": "x86_64-linux-gnu"},
                "device": {"cpu_model": "Test CPU <fake>", "governor": "performance"}}
    return write_report(rows, out, samples=samples_for(rows), run_info=run_info)


def test_files_exist(report):
    for key in ("html", "csv", "summary"):
        assert Path(report[key]).is_file()
    assert report["plots"]
    for path in report["plots"]:
        assert Path(path).parent.name == "plots"
        assert Path(path).read_bytes()[:8] == PNG_MAGIC


def test_csv_header_is_exactly_csv_columns(report):
    with open(report["csv"], newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    assert lines[0] == CSV_COLUMNS
    assert len(lines) == 1 + len(synthetic_rows())
    error_line = next(line for line in lines[1:] if line[CSV_COLUMNS.index("verdict")] == "ERROR")
    assert error_line[CSV_COLUMNS.index("latency_p50_ms")] == ""  # None is an empty cell, not 0


def test_html_is_self_contained(report):
    page = Path(report["html"]).read_text(encoding="utf-8")
    assert not re.search(r"https?://", page)
    assert not re.search(r"<script|<link|@import|url\(", page, flags=re.I)
    assert page.count("data:image/png;base64,") == len(report["plots"])


def test_verdicts_come_before_the_main_table(report):
    page = Path(report["html"]).read_text(encoding="utf-8")
    assert page.index('id="verdicts"') < page.index('class="results"')
    first_header = re.search(r'<table class="results">\s*<thead><tr>\s*<th>([^<]*)</th>', page)
    assert first_header and first_header.group(1) == "verdict"
    md = Path(report["summary"]).read_text(encoding="utf-8")
    assert md.index("## Verdicts") < md.index("## Results")
    assert "1 ERROR" in md and "1 INVALID" in md and "pin the governor" in md


def test_error_message_is_escaped(report):
    page = Path(report["html"]).read_text(encoding="utf-8")
    assert "compile: &lt;bsr&gt; kernel failed &amp; gave up &quot;badly&quot;" in page
    assert "<bsr>" not in page
    assert "Test CPU &lt;fake&gt;" in page  # run_info is escaped too


def test_expected_plots_exist(report):
    names = {Path(p).name for p in report["plots"]}
    for model in ("mlp", "tiny"):
        for kind in ("latency", "speedup", "quality", "pareto", "distribution"):
            assert f"{model}_b1_laptop_{kind}.png" in names


def test_unavailable_is_na_not_zero(report):
    page = Path(report["html"]).read_text(encoding="utf-8")
    assert "n/a" in page and "unavailable: no power sensor" in page


def test_speedup_is_dense_p50_over_variant_p50():
    mlp = {g.model: g for g in group_rows(synthetic_rows())}["mlp"]
    rows = {r.variant_key: r for r in mlp.rows}
    assert mlp.speedup(rows["mlp/block-16x1/s0.5/b1"]) == pytest.approx(10.0 / 8.0)
    assert mlp.speedup(rows["mlp/dense/s0.0/b1"]) == pytest.approx(1.0)
    assert mlp.speedup(rows["mlp/block-16x1/s0.95/b1"]) is None  # the ERROR row


def test_pareto_front_hand_made():
    points = [(1.0, 0.5), (2.0, 0.9), (1.5, 0.4), (3.0, 0.9), (0.5, 0.1), (2.0, 0.95), (None, 1.0), (0.5, 0.1)]
    # (0.5, 0.1) twice: exact duplicates do not dominate each other; (None, 1.0) has no latency.
    assert pareto_front(points) == [4, 7, 0, 5]
    assert pareto_front([]) == []


def test_all_error_group_does_not_crash(tmp_path):
    rows = [make_row("broken", "dense", 0.0, p50=None, verdict="ERROR", error="run: device hung"),
            make_row("broken", "block", 0.9, block="16x1", p50=None, verdict="ERROR", error="compile: boom")]
    result = write_report(rows, tmp_path, samples={})
    assert result["plots"] == []
    page = Path(result["html"]).read_text(encoding="utf-8")
    assert "device hung" in page and "nothing to plot" in page
    assert "2 ERROR" in Path(result["summary"]).read_text(encoding="utf-8")


def test_write_csv_standalone(tmp_path):
    path = write_csv([make_row("m", "dense", 0.0)], tmp_path / "sub" / "r.csv")
    header, line = path.read_text(encoding="utf-8").splitlines()
    assert header.split(",") == CSV_COLUMNS and "variant_key" not in header
    cells = dict(zip(CSV_COLUMNS, line.split(",")))
    assert cells["model"] == "m" and cells["latency_p50_ms"] == "10.0" and cells["energy_mj"] == ""


def test_import_does_not_load_matplotlib():
    code = "import sys, harness.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def _with_peer(peer_p50: float) -> list[ResultRow]:
    """mlp rows (dense 10 ms, block 16x1 at 8 and 4 ms...) plus an onnxruntime row: a peer row is a normal row."""
    peer = replace(make_row("mlp", "onnxruntime", 0.0, p50=peer_p50, accuracy=0.95, top1=1.0),
                   variant_key="mlp/onnxruntime/0@b1", artifact_bytes=None, compile_s=None, layers=())
    return [r for r in synthetic_rows() if r.model == "mlp"] + [peer]


def test_speedup_vs_best_dense_names_the_fastest_dense_runtime():
    (mlp,) = group_rows(_with_peer(5.0))
    rows = {r.variant_key: r for r in mlp.rows}
    assert mlp.baseline.method == "dense" and [p.method for p in mlp.peers] == ["onnxruntime"]
    assert mlp.best_dense.method == "onnxruntime" and mlp.best_dense_p50 == 5.0
    block_half = rows["mlp/block-16x1/s0.5/b1"]  # 8 ms: 1.25x our dense, 0.625x onnxruntime
    assert mlp.speedup(block_half) == pytest.approx(1.25) and mlp.speedup_best(block_half) == pytest.approx(0.625)
    assert mlp.speedup_best(rows["mlp/block-16x1/s0.95/b1"]) is None  # the ERROR row
    assert block_half in mlp.only_beats_slow_dense()
    assert [r.method for r in mlp.rows][:2] == ["dense", "onnxruntime"]  # the dense runtimes lead the table
    # a slower peer: our dense build is the best dense runtime, both speedups agree and nothing is flagged
    (mlp,) = group_rows(_with_peer(20.0))
    assert mlp.best_dense is mlp.baseline and mlp.only_beats_slow_dense() == []
    assert mlp.speedup_best(block_half) == mlp.speedup(block_half)


def test_report_shows_speedup_vs_best_dense_and_peer_notes(tmp_path):
    rows = _with_peer(5.0)
    paths = write_report(rows, tmp_path, samples=samples_for(rows),
                         notes=["peer onnxruntime: unavailable on board (not installed)"])
    page = Path(paths["html"]).read_text(encoding="utf-8")
    assert "speedup vs best dense" in page and "0.625× (onnxruntime)" in page
    assert "best dense runtime onnxruntime, p50 5.00 ms (vs dense 10.0 ms)" in page
    assert "it only beats a slower dense build" in page
    assert "peer onnxruntime: unavailable on board (not installed)" in page
    summary = Path(paths["summary"]).read_text(encoding="utf-8")
    assert "speedup vs best dense" in summary and "peer onnxruntime: unavailable" in summary
    assert "  - block 16x1 50%: 1.25× vs our dense build but 0.625× vs onnxruntime" in summary
    with open(paths["csv"]) as fh:
        assert csv.DictReader(fh).fieldnames == CSV_COLUMNS  # the CSV keeps its columns
    assert any(Path(p).name.endswith("_latency.png") for p in paths["plots"])


def test_layer_table_names_every_operator_and_kernel(tmp_path):
    """Issue 9 item 8: a layer left to TVM reads "dense, TVM default schedule", never n/a; every layer names its
    operator (the ONNX node's, and the compiler's form where it has one)."""
    layers = (LayerRecord(layer="conv1", weight="conv1.weight", shape=(16, 27), sparsity_target=0.0,
                          sparsity_actual=0.0, kernel="default", choice="none", node_op="Conv 3×3 /2"),
              LayerRecord(layer="fc", weight="fc.weight", shape=(10, 16), sparsity_target=0.9, sparsity_actual=0.9,
                          kernel="bsr", block=(16, 1), choice="rule", rule="sparsity >= 0.5", op="matmul",
                          node_op="Gemm"),
              LayerRecord(layer="orphan", weight="w", shape=(4, 4), sparsity_target=0.0, sparsity_actual=0.0))
    rows = [replace(make_row("cnn", "dense", 0.0), layers=layers)]
    paths = write_report(rows, tmp_path, samples=samples_for(rows), run_info={"run_id": "run-1"})
    html = Path(paths["html"]).read_text()
    table = html[html.index('id="layers"'):]
    table = table[:table.index("</section>")]
    assert "Conv 3×3 /2" in table and "dense, TVM default schedule" in table
    assert "Gemm → matmul" in table and "bsr 16×1 (ours)" in table
    assert "unknown operator" in table
    assert "n/a" not in table


def test_pruning_names_the_onnx_operator(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from harness.sparsify import make_variant

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "c1"),
             numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "dw")]
    nodes = [helper.make_node("Conv", ["x", "c1"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "dw"], ["b"], group=8, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 4, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    variant = make_variant("m", tmp_path / "m.onnx", None, 0.0, tmp_path / "v")
    assert [layer.node_op for layer in variant.layers] == ["Conv 3×3 /2", "Conv 3×3 depthwise"]


def test_headline_leads_with_the_answer_and_its_interval(tmp_path):
    from harness.report.tables import group_rows, headline

    rows = [replace(make_row("mlp", "dense", 0.0, p50=10.0, accuracy=0.986), latency_p50_ci_low_ms=9.9,
                    latency_p50_ci_high_ms=10.1),
            replace(make_row("mlp", "block", 0.9, block="16x1", p50=1.0, accuracy=0.21), latency_p50_ci_low_ms=0.98,
                    latency_p50_ci_high_ms=1.02),
            replace(make_row("mlp", "unstructured", 0.5, p50=9.9, accuracy=0.9), latency_p50_ci_low_ms=9.5,
                    latency_p50_ci_high_ms=10.3)]
    text = headline(group_rows(rows)[0])
    assert "block 16x1 90%: 10.0× faster than dense [9.71–10.3×]" in text and "accuracy 21.0% vs 98.6% dense" in text
    only_close = headline(group_rows([rows[0], rows[2]])[0])
    assert "no significant difference from dense" in only_close
    paths = write_report(rows, tmp_path, samples=samples_for(rows), run_info={"run_id": "run-1"})
    html = Path(paths["html"]).read_text()
    assert html.index('id="headline"') < html.index('id="verdicts"') < html.index('id="results"')
    assert '<div class="scroll"><table class="results">' in html
