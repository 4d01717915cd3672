"""The device-side runner stays self-contained: numpy + the TVM runtime, nothing from sparsebench or the compiler."""

import ast
import json
import os
import subprocess
import sys

import numpy as np

from harness.paths import RUNNER_FILE


def test_runner_imports_only_runtime_pieces():
    tree = ast.parse(RUNNER_FILE.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
    allowed = {"__future__", "json", "os", "platform", "resource", "sys", "time", "pathlib", "numpy", "tvm",
               "tvm.runtime.vm", "traceback", "sensors", "ctypes"}
    assert modules <= allowed, modules - allowed


def test_runner_reports_failure_as_data(tmp_path):
    """A job whose artifact is missing comes back as ok=false with the error, plus device metadata."""
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    job = {"artifact": str(tmp_path / "missing.so"), "eval_x": str(tmp_path / "x.npy"), "batch": 1,
           "warmup_runs": 1, "warmup_s": 0, "min_runs": 1, "min_s": 0, "max_runs": 10}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    proc = subprocess.run([sys.executable, str(RUNNER_FILE), str(tmp_path / "job.json")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] is False and "missing.so" in result["error"]
    assert result["device_meta"]["tvm_runtime_only"] is True and result["device_meta"]["cpu_count"] >= 1
