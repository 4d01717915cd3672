"""Bad configs through the real CLI: each is ONE line naming the key (or the file) and the fix, exit 2, no traceback,
nothing run. Plus the batch bound: a batch whose inputs alone do not fit the device's memory is refused in preflight."""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write_config
from harness.errors import EXIT_USAGE


def cli(*args: str, timeout: float = 300, limit_as: int | None = None) -> subprocess.CompletedProcess:
    def limit():  # a cap on the address space, so a batch that is not refused cannot take the host's memory
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ), preexec_fn=limit)


def one_line(proc) -> str:
    """The single ``sparsebench: error:`` line of a refused command (exit 2, no traceback, nothing else said)."""
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsebench: error:"), proc.stderr
    return lines[0]


MODEL = '[[models]]\nname = "small"\npath = "{model}"\n'

# (TOML text, what the error line must say); {model} is the small model's path
CASES = {
    "run-not-a-table": ("run = 5\n" + MODEL, "[run] must be a table"),
    "measure-not-a-table": ('measure = "fast"\n' + MODEL, "[measure] must be a table"),
    "sparsify-not-a-table": ("sparsify = [0.5]\n" + MODEL, "[sparsify] must be a table"),
    "models-single-brackets": ('[models]\nname = "small"\npath = "{model}"\n', "write [[models]] (two brackets)"),
    "models-not-tables": ("models = [1, 2]\n", "models[0] must be a table"),
    "run-name-int": ("[run]\nname = 5\n" + MODEL, "[run].name must be a non-empty string"),
    "run-target-list": ('[run]\ntarget = ["local"]\n' + MODEL, "[run].target must be a non-empty string"),
    "run-db-bool": ("[run]\ndb = true\n" + MODEL, "[run].db must be a non-empty string"),
    "levels-string": ('[sparsify]\nlevels = "0.5"\n' + MODEL, "[sparsify].levels must be a non-empty list"),
    "methods-string": ('[sparsify]\nmethods = "unstructured"\n' + MODEL, "[sparsify].methods must be a list"),
    "prune-first-string": ('[sparsify]\nprune_first = "false"\n' + MODEL,
                           "[sparsify].prune_first must be true or false"),
    "max-runs-0": ("[measure]\nmax_runs = 0\n" + MODEL, "[measure].max_runs must be a whole number >= 1"),
    "min-runs-negative": ("[measure]\nmin_runs = -3\n" + MODEL, "[measure].min_runs must be a whole number >= 1"),
    "min-runs-fraction": ("[measure]\nmin_runs = 2.5\n" + MODEL, "[measure].min_runs must be a whole number"),
    "rounds-bool": ("[measure]\nrounds = true\n" + MODEL, "[measure].rounds must be a whole number >= 1"),
    "timeout-0": ("[measure]\ntimeout_s = 0\n" + MODEL, "[measure].timeout_s must be a number > 0"),
    "max-ci-bool": ("[measure]\nmax_ci = true\n" + MODEL, "[measure].max_ci must be a number > 0"),
    "rate-0": ("[measure]\nenergy_rate_hz = 0\n" + MODEL, "[measure].energy_rate_hz must be a number > 0"),
    "outliers-above-1": ("[measure]\nmax_outliers = 1.5\n" + MODEL, "[measure].max_outliers must be a number >= 0 "
                                                                    "and <= 1"),
    "batch-0": (MODEL + "batch = 0\n", "batch must be a positive integer"),
    "batch-bool": (MODEL + "batch = true\n", "batch must be a positive integer"),
    "batch-string": (MODEL + 'batch = "4"\n', "batch must be a positive integer"),
    "batch-above-limit": (MODEL + "batch = [1, 70000]\n", "batch 70000 is above the limit of 65536"),
    "path-int": ('[[models]]\nname = "small"\npath = 5\n', "path must be a non-empty string"),
    "name-int": ('[[models]]\nname = 5\npath = "{model}"\n', "name must be a non-empty string"),
    "name-traversal": ('[[models]]\nname = "../../x"\npath = "{model}"\n', "model name '../../x' is not an identifier"),
    "name-absolute": ('[[models]]\nname = "/tmp/x"\npath = "{model}"\n', "model name '/tmp/x' is not an identifier"),
    "name-slash": ('[[models]]\nname = "a/b"\npath = "{model}"\n', "model name 'a/b' is not an identifier"),
    "name-dot-first": ('[[models]]\nname = ".hidden"\npath = "{model}"\n', "model name '.hidden' is not an identifier"),
    "name-dots": ('[[models]]\nname = "a..b"\npath = "{model}"\n', "model name 'a..b' is not an identifier"),
    "invalid-toml": ('[run]\nname = "x"\ntarget = \n' + MODEL, "is not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_one_line(case, tmp_path, small_model):
    text, expected = CASES[case]
    cfg = tmp_path / "c.toml"
    cfg.write_text(text.format(model=small_model[0]))
    line = one_line(cli("run", str(cfg), "--db", str(tmp_path / "r.db"), "--no-progress"))
    assert expected in line, line
    if case == "invalid-toml":
        assert "line 3" in line and "column" in line, line
    assert not (tmp_path / "r.db").exists()  # refused before the store was opened: nothing was run


def test_binary_and_non_utf8_config_files_are_named(tmp_path):
    binary = tmp_path / "model.onnx.toml"
    binary.write_bytes(b"\x08\x07\x12\x00\x00\x01binary\xff\xfe")
    line = one_line(cli("run", str(binary)))
    assert f"config {binary}: not a UTF-8 text file" in line
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[run]\nname = "caf\u00e9"\n'.encode("latin-1"))
    line = one_line(cli("run", str(latin1)))
    assert f"config {latin1}: not a UTF-8 text file" in line


def test_model_name_from_a_file_name_that_is_no_identifier(tmp_path, small_model):
    odd = tmp_path / "my model.onnx"
    odd.write_bytes(small_model[0].read_bytes())
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[models]]\npath = "{odd}"\n')
    line = one_line(cli("run", str(cfg), "--db", str(tmp_path / "r.db")))
    assert "'my model.onnx' is not a usable model name" in line and 'name = "my-model"' in line


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    pytest.fail("no MemAvailable in /proc/meminfo")


def test_batch_beyond_the_device_memory_is_refused_in_preflight(tmp_path):
    """A batch whose inputs alone need 3/4 of the memory the device has available: one line naming the model, the
    batch and a batch that fits; nothing compiled or measured. (The run's process is capped in address space, so
    code that does not refuse fails without taking the host's memory.)"""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch = 65536
    width = math.ceil(_mem_available() * 0.75 / (batch * 4))
    weight = numpy_helper.from_array(np.ones((width, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "wide",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weight])
    model = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    db = tmp_path / "r.db"
    cfg = write_config(tmp_path / "c.toml", model=model, eval_set=None, db=db, levels=(0,), methods=(),
                       batch=(1, batch), name="wide")
    proc = cli("run", str(cfg), "--no-progress", timeout=600, limit_as=6 << 30)
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr[-3000:])
    errors = [l for l in proc.stderr.splitlines() if l.startswith("sparsebench: error:")]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert f"model wide at batch {batch}: its inputs alone need" in line, line
    assert "available" in line and "use a batch of at most" in line, line
    import sqlite3

    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
