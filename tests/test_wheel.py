"""sparsebench installs as a package (not only as a checkout): the wheel carries the device profiles, the demo
configs, the zoo data, the board package and the kernels, and the installed CLI runs from any folder."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, make_small_model, write_config
from harness.board import SHIPPED

pytestmark = pytest.mark.slow

#: What a user of the installed package needs besides the Python modules.
NEEDED = ["harness/configs/demo.toml", "harness/configs/demo-quick.toml", "harness/models/zoo/digits.npz",
          *[f"harness/targets/{p.name}" for p in (ROOT / "targets").glob("*.toml")],
          *[f"harness/board/{rel}" for rel in SHIPPED], "schedules/__init__.py", "schedules/rewrite.py"]


def _can_build_without_isolation() -> bool:
    """setuptools builds wheels itself from 70.1; older ones need the ``wheel`` package."""
    import setuptools

    major, minor = (int(n) for n in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, a folder it is installed into with ``pip install --target``)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy of the sources: a build/ folder left in the checkout would leak stale files into the wheel
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "results", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "tests", "*.so"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp / "dist"), str(src)]
    if _can_build_without_isolation():  # else pip fetches setuptools into an isolated build environment
        build.insert(4, "--no-build-isolation")
    proc = subprocess.run(build, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("sparsebench-*.whl")
    site = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return wheel, site


def _cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))  # only the installed copy: never this checkout
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)


def test_wheel_carries_what_a_user_needs(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in NEEDED if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.startswith(("tests/", "targets/")) or "/device/runner.py" in n]


def test_installed_package_runs_from_another_folder(installed, tmp_path):
    _, site = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "import harness, schedules, harness.paths as p; "
                            "print(harness.__file__); print(schedules.__file__); print(p.TARGETS_DIR)"],
                           capture_output=True, text=True, env=env, cwd=elsewhere, timeout=120)
    assert probe.returncode == 0, probe.stderr
    for line in probe.stdout.split():
        assert Path(line).is_relative_to(site), line

    proc = _cli(site, "targets", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in ("rpi5", "jetson-orin-nano", "local", "x86-64"))

    model, eval_set = make_small_model(tmp_path)
    cfg = write_config(elsewhere / "c.toml", model=model, eval_set=eval_set, db=elsewhere / "r.db", levels=(0, 0.9),
                       methods=("block:8x1",), min_s=0.02, min_runs=10)
    proc = _cli(site, "run", str(cfg), "--out", str(elsewhere / "report"), "--no-progress", cwd=elsewhere)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(elsewhere / "report" / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["verdict"] in ("VALID", "INVALID") and not r["error"] for r in rows), rows
