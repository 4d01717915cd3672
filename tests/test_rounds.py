"""Timing in rounds on the device (issue 10): the variants of one model and batch take turns round by round, an
unsettled measurement is extended, and a competing load during one variant's rounds never passes as VALID."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harness.board.rounds import agreeing_rounds, median_ci_halfwidth, quantile_ci_ranks, round_spread, unsettled
from harness.device.ship import board_command, upload_board
from harness.transports import LocalTransport

pytest.importorskip("onnxruntime")


def _matmul_onnx(path, n=192, rows=8):
    """y = x @ W: a model onnxruntime runs in ~10-100 µs (the runner's peer engine: nothing to compile)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _job(tmp_path, n_models=2, n=192, rows=8, **rules):
    upload_board(LocalTransport(), str(tmp_path))
    model = _matmul_onnx(tmp_path / "mm.onnx", n, rows)
    np.savez(tmp_path / "x.npz", np.random.default_rng(1).normal(size=(rows, n)).astype(np.float32))
    job = {"models": [{"id": str(i), "artifact": str(model), "engine": "onnxruntime"} for i in range(n_models)],
           "eval_inputs": str(tmp_path / "x.npz"), "input_names": ["x"], "batch": rows, "warmup_runs": 2,
           "warmup_s": 0.02, "min_runs": 30, "min_s": 0.3, "max_runs": 100_000, "rounds": 3, "max_rounds": 3,
           "max_ci": 0.03, "max_spread": 0.03, "extend_s": 0.0, "energy": None, **rules}
    (tmp_path / "job.json").write_text(json.dumps(job))
    return tmp_path / "job.json"


def _runner(job_path, **kw):
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    env.pop("PYTHONPATH", None)  # the shipped package is found in the work directory, as on a board
    return subprocess.Popen(board_command(sys.executable, "runner", str(job_path)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=job_path.parent, **kw)


def _result(job_path):
    return json.loads((job_path.parent / "result.json").read_text())


def test_statistics_of_rounds():
    assert quantile_ci_ranks(30, 0.5) == (10, 21)
    assert median_ci_halfwidth([1.0] * 50) == 0.0 and median_ci_halfwidth([1.0] * 3) is None
    assert round_spread([1.0, 1.1, 1.0], 1.0) == pytest.approx(np.std([1.0, 1.1, 1.0], ddof=1))
    assert round_spread([1.0], 1.0) is None
    assert "spread" in [b[0] for b in unsettled([[1.0] * 25, [1.2] * 25], max_ci=0.03, max_spread=0.03)]
    # the largest group within ±3 %; of equal groups the one nearest the median of all rounds
    assert agreeing_rounds([1.0, 1.3, 1.01, 0.99, 1.5], 0.03) == [0, 2, 3]
    assert agreeing_rounds([1.0, 1.2, 1.21, 1.01, 1.1], 0.03) in ([0, 3], [1, 2])
    three = [[1.0] * 30, [1.3] * 30, [1.0] * 30]  # one of three rounds disturbed: two agree, three needed
    assert [b[0] for b in unsettled(three, max_ci=0.03, max_spread=0.03, min_rounds=3)] == ["agree"]
    assert unsettled(three + [[1.01] * 30], max_ci=0.03, max_spread=0.03, min_rounds=3) == []


def test_variants_take_turns_round_by_round(tmp_path):
    job = _job(tmp_path, n_models=3)
    proc = _runner(job)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    models = _result(job)["models"]
    assert all(m["ok"] and len(m["rounds"]) == 3 for m in models)
    starts = sorted((r["start_ns"], m["id"]) for m in models for r in m["rounds"])
    assert [model for _, model in starts] == ["0", "1", "2"] * 3  # A B C A B C A B C
    assert all(len(m["latencies_ns"]) == sum(r["n"] for r in m["rounds"]) for m in models)
    assert all(m["warmup_runs"] >= 3 * 2 for m in models)  # every round warmed up afresh
    assert err.count("round ") == 9


def test_unsettled_measurement_is_extended_up_to_max_rounds(tmp_path):
    # a bound no measurement can meet: the runner extends to max_rounds and says which bound is unmet
    job = _job(tmp_path, n_models=1, max_ci=-1.0, max_rounds=5, extend_s=60.0, min_s=0.15)
    proc = _runner(job)
    proc.communicate(timeout=300)
    model = _result(job)["models"][0]
    assert len(model["rounds"]) == 5 and "ci" in [bound[0] for bound in model["unsettled"]]


@pytest.mark.serial
def test_competing_load_during_one_variants_round_is_not_silently_valid(tmp_path):
    """Two copies of one model; a CPU-bound load runs during copy 1's second round only. Copy 1's rounds then
    disagree: the runner extends it, and the row either stays INVALID or is VALID with the loaded round named as
    disturbed and left out -- its median that of the quiet rounds, never shifted by the load."""
    from harness.measure import latency_stats, quality_figures, verdict

    # calls of a few ms on every core: a competing process preempts them mid-call (a µs call mostly fits in a time
    # slice, and the load then shows as fewer samples, not a slower median -- which is then rightly VALID)
    job = _job(tmp_path, n_models=2, n=1536, rows=64, min_s=1.5, max_rounds=5, extend_s=20.0)
    proc = _runner(job)
    load: list[subprocess.Popen] = []
    try:
        for line in proc.stderr:
            if line.startswith("round 2 model 1") and not load:
                load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
            elif line.startswith("round") and load:
                break  # the next round begins: the load stops
    finally:
        for p in load:
            p.kill()
            p.wait()
    proc.communicate(timeout=300)
    assert load, "the runner never reached copy 1's second round"
    models = _result(job)["models"]
    loaded = models[1]
    p50s = [r["p50_ns"] for r in loaded["rounds"]]
    assert len(loaded["rounds"]) > 3, p50s  # extended
    stats = latency_stats(loaded["latencies_ns"], [r["n"] for r in loaded["rounds"]])
    q = quality_figures(np.ones((2, 2)), reference=np.ones((2, 2)))
    status, reasons = verdict(stats, q, min_valid_runs=10, ref_rtol=1e-4, min_rounds=3)
    assert 1 in stats.rounds_disturbed, (p50s, stats.rounds_disturbed)  # the loaded round is named
    if status == "VALID":  # then from the quiet rounds only: not shifted by the load
        quiet = [p for i, p in enumerate(p50s) if i not in stats.rounds_disturbed]
        assert min(quiet) / 1e6 <= stats.p50_ms <= max(quiet) / 1e6 and p50s[1] / 1e6 > stats.p50_ms * 1.03
    else:
        assert any(r.startswith("rounds disagree") for r in reasons), reasons


def test_onnxruntime_runs_in_a_process_of_its_own(tmp_path):
    """The peer runtime's threads stay out of the runner's process (they moved TVM's rounds by 30-40 %), and its
    outputs still come back; a peer that cannot load is that model's error, not the job's."""
    job_path = _job(tmp_path, n_models=1)
    job = json.loads(job_path.read_text())
    job["models"].append({"id": "bad", "artifact": str(tmp_path / "missing.onnx"), "engine": "onnxruntime"})
    job_path.write_text(json.dumps(job))
    proc = _runner(job_path)
    proc.communicate(timeout=300)
    good, bad = _result(job_path)["models"]
    assert good["ok"] and len(good["rounds"]) == 3 and np.load(tmp_path / good["outputs"]).shape == (8, 192)
    assert not bad["ok"] and "missing.onnx" in bad["error"]

    from harness.board.runner import PeerProcess

    peer = PeerProcess(str(tmp_path / "mm.onnx"), ["x"], 1)
    try:
        assert peer.proc.pid != os.getpid() and peer.proc.is_alive()
        x = np.ones((8, 192), np.float32)
        peer.feed([x])
        assert len(peer.timed_round({"warmup_runs": 1, "warmup_s": 0.0, "min_runs": 5, "min_s": 0.0,
                                     "max_runs": 5})["samples_ns"]) == 5
        w = np.random.default_rng(0).normal(size=(192, 192)).astype(np.float32)
        assert np.allclose(peer.first_output([x]), x @ w, rtol=1e-4, atol=1e-3)
    finally:
        peer.close()
    assert not peer.proc.is_alive()
