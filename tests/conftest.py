"""Shared fixtures: an isolated cache, a small real ONNX model with an evaluation set, config writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _serial_gate(request, tmp_path_factory):
    """With pytest-xdist workers, a test marked ``serial`` (it measures timing against a load it makes itself) runs
    alone: it takes an exclusive lock that every other test holds shared while it runs."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import fcntl

    path = tmp_path_factory.getbasetemp().parent / "sparsebench-serial.lock"  # the workers' common folder
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if request.node.get_closest_marker("serial") else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """One artifact/zoo cache for the whole session (compiles are shared between tests, never with the user's)."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SPARSEBENCH_CACHE")
    os.environ["SPARSEBENCH_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("SPARSEBENCH_CACHE", None)
    else:
        os.environ["SPARSEBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH sshd on 127.0.0.1 (free port, temporary keys and config), shared by the session's tests.
    Fails, never skips, when it cannot start: the SSH tests are part of CI."""
    server = start_test_sshd(tmp_path_factory, "sshd")
    yield server
    server.stop()


def start_test_sshd(tmp_path_factory, name: str):
    """A new real sshd in a fresh temporary folder ``name``; the test fails (never skips) when it cannot start."""
    from sshd import SSHDUnavailable, start_sshd

    try:
        return start_sshd(tmp_path_factory.mktemp(name))
    except SSHDUnavailable as err:
        pytest.fail(f"cannot start the test sshd {name}: {err}", pytrace=False)


def make_small_model(folder: Path, *, k=48, hidden=96, n_out=10, n_eval=40, seed=1) -> tuple[Path, Path]:
    """A 48-96-96-10 MLP with seeded weights; labels = the dense model's own argmax, so dense accuracy is 1.0."""
    import onnx

    from harness.models.zoo.onnx_build import mlp_onnx

    rng = np.random.default_rng(seed)
    sizes = (k, hidden, hidden, n_out)
    layers = [(rng.normal(0, 1 / np.sqrt(a), (b, a)), rng.normal(0, 0.1, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    x = rng.normal(0, 1, (n_eval, k)).astype(np.float32)
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    model_path, eval_path = folder / "small.onnx", folder / "small.npz"
    onnx.save(mlp_onnx(layers, name="small"), model_path)
    np.savez(eval_path, x=x, y=h.argmax(axis=1))
    return model_path, eval_path


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> tuple[Path, Path]:
    return make_small_model(tmp_path_factory.mktemp("model"))


def write_config(path: Path, *, model: Path, eval_set: Path | None, db: Path, levels=(0, 0.5, 0.9),
                 methods=("unstructured", "block:8x1"), batch=(1,), target="local", min_s=0.05, min_runs=20,
                 extra: str = "", name: str = "small", model_extra: str = "", peers=()) -> Path:
    """A config for one model; ``extra``: more top-level TOML (before [[models]]); ``model_extra``: more keys of the
    [[models]] table (``outputs = [...]``, ``shapes = {...}``); ``peers``: [compare].peers (``None``: no [compare]
    table, the default peers; ``()``, the default here: no peer rows, so tests count only our own variants)."""
    compare = "" if peers is None else f"[compare]\npeers = {list(peers)}\n"
    eval_line = f'eval = "{eval_set}"' if eval_set else ""
    path.write_text(f"""
[run]
name = "test"
target = "{target}"
db = "{db}"
[sparsify]
levels = {list(levels)}
methods = {list(methods)}
{compare}[measure]
warmup_runs = 2
warmup_s = 0.01
min_runs = {min_runs}
min_s = {min_s}
max_ci = 10.0
max_spread = 10.0
extend_s = 0.0
{extra}
[[models]]
name = "{name}"
path = "{model}"
{eval_line}
batch = {list(batch)}
{model_extra}
""")
    return path


def sparsebench(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed ``sparsebench`` console script as a user would: a separate process, from another folder."""
    script = Path(sys.executable).with_name("sparsebench")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd or Path.home(), timeout=timeout,
                          env=dict(os.environ))
