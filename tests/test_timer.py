"""The board's kernel timer: a real TVM library of two small kernels, timed by `python -m sparsebench_board.timer` in
a subprocess with the TVM runtime only, from the folder layout a device gets. Failures are per kernel, as data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.board.meta import device_fingerprint
from harness.device.ship import board_command, upload_board
from harness.transports import LocalTransport

pytest.importorskip("tvm")


def _dense(m: int, k: int, n: int, name: str):
    """``y = x @ w.T`` as a PrimFunc: x [m, k], w [n, k], y [m, n]."""
    from tvm import te

    x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder((n, k), "float32", name="w")
    r = te.reduce_axis((0, k), name="r")
    y = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="y")
    return te.create_prim_func([x, w, y]).with_attr("global_symbol", name)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    import tvm

    folder = tmp_path_factory.mktemp("kernels")
    mod = tvm.IRModule({"dense_b1": _dense(1, 64, 32, "dense_b1"), "dense_b4": _dense(4, 64, 32, "dense_b4")})
    tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})).export_library(str(folder / "kernels.so"))
    return folder / "kernels.so"


def _run_timer(workdir: Path, job: dict, **env_changes) -> tuple[subprocess.CompletedProcess, dict]:
    upload_board(LocalTransport(), str(workdir))
    (workdir / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    for name in ("PYTHONPATH", "TVM_NUM_THREADS"):  # the package comes from the work directory, as on a board
        env.pop(name, None)
    env.update(env_changes)
    proc = subprocess.run(board_command(sys.executable, "timer", "job.json"), capture_output=True, text=True,
                          env=env, cwd=workdir, timeout=300)
    return proc, json.loads((workdir / "result.json").read_text())


def test_timer_times_kernels_and_reports_bad_ones_per_kernel(tmp_path, library):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "arrays.npz", x1=rng.normal(size=(1, 64)).astype(np.float32),
             x4=rng.normal(size=(4, 64)).astype(np.float32), w=rng.normal(size=(32, 64)).astype(np.float32))
    job = {"library": str(library), "arrays": "arrays.npz", "device": "cpu", "threads": 1, "number": 1,
           "repeat": 5, "min_repeat_ms": 1,
           "kernels": [{"id": "k0", "func": "dense_b1", "args": ["x1", "w"], "out": [[1, 32], "float32"]},
                       {"id": "k1", "func": "dense_b4", "args": ["x4", "w"], "out": [[4, 32], "float32"]},
                       {"id": "bad", "func": "no_such_kernel", "args": ["x1", "w"], "out": [[1, 32], "float32"]},
                       {"id": "gap", "func": "dense_b1", "args": ["x9", "w"], "out": [[1, 32], "float32"]},
                       {"id": "shape", "func": "dense_b1", "args": ["x4", "w"], "out": [[4, 32], "float32"]}]}
    proc, result = _run_timer(tmp_path, job)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
    assert result["ok"] is True and result["timer_version"] == 1 and result["threads"] == 1
    for kid in ("k0", "k1"):
        t = result["times"][kid]
        assert len(t["results_us"]) == 5 and all(v > 0 for v in t["results_us"]), t
        assert t["median_us"] == sorted(t["results_us"])[2]
    assert set(result["times"]["bad"]) == {"error"} and "no_such_kernel" in result["times"]["bad"]["error"]
    assert result["times"]["gap"]["error"].startswith("KeyError:") and "x9" in result["times"]["gap"]["error"]
    assert "error" in result["times"]["shape"]  # wrong input shape: the kernel's own check, caught per kernel
    meta = result["device_meta"]
    assert meta["tvm_runtime_only"] is True and meta["tvm_num_threads"] == "1"
    assert result["fingerprint"] == device_fingerprint(meta)
    assert result["fingerprint"]["tvm_num_threads"] == 1 and result["fingerprint"]["cores"] >= 1


def test_timer_job_that_cannot_run_is_data(tmp_path):
    np.savez(tmp_path / "arrays.npz", x=np.zeros((1, 4), np.float32))
    job = {"library": str(tmp_path / "missing.so"), "arrays": "arrays.npz",
           "kernels": [{"id": "k0", "func": "f", "args": ["x"], "out": [[1, 4], "float32"]}]}
    proc, result = _run_timer(tmp_path, job, TVM_NUM_THREADS="2")
    assert proc.returncode == 1
    assert result["ok"] is False and "missing.so" in result["error"] and "times" not in result
    assert result["device_meta"]["tvm_num_threads"] == "2"  # an explicit TVM_NUM_THREADS wins


def test_fingerprint_keeps_only_what_decides_timings():
    meta = {"cpu_model": "Cortex-A76", "machine": "aarch64", "cpu_affinity": 4, "tvm": "0.27.0", "cpu_count": 4,
            "tvm_num_threads": "4", "cur_freq_khz": 2400000, "temperatures_c": {"cpu": 50.0}, "loadavg": [0.1]}
    assert device_fingerprint(meta) == {"cpu_model": "Cortex-A76", "machine": "aarch64", "cores": 4,
                                        "tvm": "0.27.0", "tvm_num_threads": 4}
