"""The board package stays self-contained (numpy + the TVM runtime, nothing from sparsebench or the compiler), ships
as a whole, and its runner reports failures as data."""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harness.board import PACKAGE, SHIPPED
from harness.device.ship import board_command, upload_board
from harness.paths import BOARD_DIR
from harness.transports import LocalTransport

#: What board code may import besides the standard library and its own package (relative imports).
ALLOWED = {"numpy", "tvm", "tvm.runtime", "tvm.runtime.vm", "onnxruntime"}
#: ... of which these only inside a function: a peer runtime the board may lack (a TVM job never imports it)
LAZY = {"onnxruntime"}


def _imports(tree: ast.AST) -> list[str]:
    """Every absolute import of a module (``from . import x`` and ``from .x import y`` are skipped)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module)
    return names


def test_shipped_files_import_only_stdlib_numpy_and_the_tvm_runtime():
    """Every shipped file exists, parses as Python 3.8 (JetPack 5) and imports nothing from the host package."""
    stdlib = set(sys.stdlib_module_names)
    for rel in SHIPPED:
        path = BOARD_DIR / rel
        assert path.is_file(), f"SHIPPED names {rel}, which is not in {BOARD_DIR}"
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))
        bad = [m for m in _imports(tree) if m.split(".")[0] not in stdlib and m not in ALLOWED
               and m.split(".")[0] != "numpy"]
        assert not bad, f"{rel} imports {bad}: board code may use the standard library, numpy, {sorted(ALLOWED)} " \
                        "and its own modules (relative imports) only"
        top_level = _imports(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                                        type_ignores=[]))
        eager = [m for m in top_level if m.split(".")[0] in LAZY]
        assert not eager, f"{rel} imports {eager} at module level: import a peer runtime inside the function using it"


def test_every_board_file_is_shipped():
    present = {p.relative_to(BOARD_DIR).as_posix() for p in BOARD_DIR.rglob("*.py")}
    assert present == set(SHIPPED), f"not in SHIPPED: {present - set(SHIPPED)}; gone: {set(SHIPPED) - present}"


def test_upload_board_and_board_command(tmp_path):
    transport = LocalTransport(str(tmp_path))
    workdir = transport.make_workdir("ship")
    root = upload_board(transport, workdir)
    assert root == os.path.join(workdir, PACKAGE)
    assert sorted(str(p.relative_to(root)) for p in (tmp_path / workdir / PACKAGE).rglob("*.py")) == sorted(SHIPPED)
    assert board_command("python3", "runner", "job.json") == ["python3", "-m", f"{PACKAGE}.runner", "job.json"]
    with pytest.raises(ValueError, match="unknown board module 'sensors'; known: meta, probe, rounds, runner, timer"):
        board_command("python3", "sensors")


def test_runner_reports_failure_as_data(tmp_path):
    """A job whose artifact is missing comes back as that model's ok=false with the error, plus device metadata."""
    upload_board(LocalTransport(), str(tmp_path))
    np.savez(tmp_path / "x.npz", np.zeros((2, 4), np.float32))
    job = {"models": [{"artifact": str(tmp_path / "missing.so")}], "eval_inputs": str(tmp_path / "x.npz"),
           "input_names": ["x"], "batch": 1, "warmup_runs": 1, "warmup_s": 0, "min_runs": 1, "min_s": 0,
           "max_runs": 10}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    env.pop("PYTHONPATH", None)  # the shipped package is found in the work directory, as on a board
    proc = subprocess.run(board_command(sys.executable, "runner", str(tmp_path / "job.json")), capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["models"][0]["ok"] is False and "missing.so" in result["models"][0]["error"]
    assert result["device_meta"]["tvm_runtime_only"] is True and result["device_meta"]["cpu_count"] >= 1
