"""CUDA through the whole pipeline, on a machine without a GPU: the accelerator setting, the CUDA variants of the
zoo models compiled ahead to fatbins (nvcc from the `cuda` extra), `sparsebench compile` + `run --artifacts`, and
the one-line refusals. The test that runs the models on a GPU skips, saying why, where there is none."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from conftest import sparsebench
from harness.compile.toolchains import cuda_plan
from harness.config import nvidia_smi_arch
from harness.emulate import elf_machine

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
#: how TVM's packed imports frame a CUDA module whose code is a fatbin (see toolchains.replace_cuda_code): its
#: format string, length-prefixed
FATBIN_RECORD = struct.pack("<Q", 6) + b"fatbin"


def _config(path: Path, *, target: str, models: list[str], extra_run: str = "", levels=(0.0, 0.9),
            methods=("block:16x1",)) -> Path:
    blocks = "\n".join(f'[[models]]\nname = "{m}"\nbatch = [1]\n' for m in models)
    path.write_text(f"""
[run]
name = "cuda-test"
target = "{target}"
db = "{path.parent / 'r.db'}"
{extra_run}
[sparsify]
levels = {list(levels)}
methods = {json.dumps(list(methods))}
[measure]
warmup_runs = 2
warmup_s = 0.01
min_runs = 10
min_s = 0.02
max_ci = 10.0
max_spread = 10.0
extend_s = 0.0
{blocks}
""")
    return path


def _one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def test_the_test_extra_brings_an_nvcc_that_builds_fatbins():
    """CI installs `.[test]`, which pins nvcc 13.0 (the oldest CUDA 13 minor): CUDA kernels must travel as fatbins."""
    plan = cuda_plan("sm_87")
    assert plan.ahead, plan.note
    assert plan.nvcc_version == "13.0", f"nvcc {plan.nvcc_version} at {plan.nvcc}: the pin is 13.0 (see pyproject)"


def test_compile_all_zoo_models_for_a_jetson_cpu_and_gpu(tmp_path):
    """`sparsebench compile --accelerator all`: every zoo model's dense and 90 % block variants for the Orin's CPU
    (aarch64) and GPU (sm_87 fatbin, x TVM's default build as the GPU's baseline), with a manifest of all of them."""
    cfg = _config(tmp_path / "jet.toml", target="jetson-orin-nano",
                  models=["digits-mlp", "ffn-768", "digits-cnn", "tiny-encoder"])
    proc = sparsebench("compile", str(cfg), "--out", str(tmp_path / "art"), "--accelerator", "all", timeout=900)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["profile"] == "jetson-orin-nano" and set(manifest["accelerators"]) == {"cpu", "cuda"}
    cpu, cuda = manifest["accelerators"]["cpu"]["jobs"], manifest["accelerators"]["cuda"]["jobs"]
    assert len(cpu) == 8 and len(cuda) == 12  # 4 models x (dense, block 90 %) (+ tvm-default on the GPU)
    assert {k for k in cuda if "/tvm-default/" in k} == {f"{m}/tvm-default/0@b1" for m in
                                                         ("digits-mlp", "ffn-768", "digits-cnn", "tiny-encoder")}
    assert manifest["accelerators"]["cuda"]["target"]["arch"] == "sm_87"
    for key, entry in cuda.items():
        assert "error" not in entry, (key, entry)
        data = (tmp_path / "art" / entry["file"]).read_bytes()
        assert elf_machine(tmp_path / "art" / entry["file"]) == "aarch64"
        assert FATBIN_MAGIC in data and FATBIN_RECORD in data, key  # the kernels, compiled ahead, framed for TVM
        assert b'extern "C" __global__' not in data, key  # no source left for the board to compile
        assert entry["build"]["toolchain"].endswith("+cuda/sm_87/fatbin/13.0"), entry["build"]
    for key, entry in cpu.items():
        data = (tmp_path / "art" / entry["file"]).read_bytes()
        assert FATBIN_MAGIC not in data and "cuda" not in entry["build"]["toolchain"], key


def test_run_with_prebuilt_artifacts_compiles_nothing_and_checks_them(tmp_path):
    cfg = _config(tmp_path / "loc.toml", target="local", models=["digits-mlp"])
    art = tmp_path / "art"
    proc = sparsebench("compile", str(cfg), "--out", str(art))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((art / "manifest.json").read_text())
    jobs = manifest["accelerators"]["cpu"]["jobs"]
    assert set(jobs) == {"digits-mlp/dense/0@b1", "digits-mlp/block-16x1/0.9@b1"}
    # the rule chose (nothing to time kernels on), and the layer records say so
    assert all(layer.get("choice") == "rule" for entry in jobs.values() for layer in entry["layers"]
               if layer.get("kernel") != "default")

    proc = sparsebench("run", str(cfg), "--artifacts", str(art), "--no-progress", "--db", str(tmp_path / "r.db"))
    assert proc.returncode == 0, proc.stderr
    assert "kernel selection" not in proc.stderr and "compile " not in proc.stderr
    from harness.store import ResultStore

    store = ResultStore(tmp_path / "r.db")
    rows = {r.variant_key: r for r in store.results(store.resolve_run(None))}
    store.close()
    ours = {k: r for k, r in rows.items() if r.method != "onnxruntime"}
    assert set(ours) == set(jobs)
    for key, row in ours.items():
        assert row.verdict != "ERROR", row.error
        assert row.accelerator == "cpu" and row.artifact_key == jobs[key]["build"]["artifact_key"]
        assert row.ref_max_abs_err is not None and row.ref_max_abs_err < 1e-3

    # a damaged artifact is that row's error (with the fix), the rest are measured: exit 3
    victim = art / jobs["digits-mlp/block-16x1/0.9@b1"]["file"]
    victim.write_bytes(victim.read_bytes()[:1000])
    proc = sparsebench("run", str(cfg), "--artifacts", str(art), "--no-progress", "--db", str(tmp_path / "r2.db"))
    assert proc.returncode == 3, proc.stderr
    store = ResultStore(tmp_path / "r2.db")
    bad = [r for r in store.results(store.resolve_run(None)) if r.verdict == "ERROR"]
    store.close()
    assert [r.variant_key for r in bad] == ["digits-mlp/block-16x1/0.9@b1"]
    assert "does not match its checksum" in bad[0].error and "compile the config again" in bad[0].error

    # artifacts of another profile or accelerator: one line before anything runs
    jet = _config(tmp_path / "jet.toml", target="jetson-orin-nano", models=["digits-mlp"])
    proc = sparsebench("run", str(jet), "--artifacts", str(art), "--device", "local", "--no-progress")
    assert proc.returncode == 2 and "compiled for profile 'local', not 'jetson-orin-nano'" in _one_line(proc)
    proc = sparsebench("run", str(cfg), "--artifacts", str(tmp_path / "nowhere"), "--no-progress")
    assert proc.returncode == 2 and "no manifest.json there" in _one_line(proc)


def test_accelerator_refusals_are_one_line(tmp_path):
    cfg = _config(tmp_path / "loc.toml", target="local", models=["digits-mlp"])
    proc = sparsebench("run", str(cfg), "--accelerator", "cuda", "--no-progress")
    line = _one_line(proc)
    assert proc.returncode == 2 and "target 'local' has no cuda target" in line and "jetson-orin-nano" in line
    bad = _config(tmp_path / "bad.toml", target="local", models=["digits-mlp"], extra_run='accelerator = "gpu"')
    proc = sparsebench("run", str(bad), "--no-progress")
    assert proc.returncode == 2 and "[run].accelerator: unknown accelerator 'gpu'; known: cpu, cuda" in _one_line(proc)


def test_a_cuda_run_on_a_machine_without_a_usable_gpu_says_so(tmp_path):
    """local-cuda on this machine: without nvidia-smi the arch is unknown; with a stand-in nvidia-smi (the one piece
    of hardware that cannot exist here) the run gets as far as the device check, which finds no GPU."""
    cfg = _config(tmp_path / "lc.toml", target="local-cuda", models=["digits-mlp"])
    if nvidia_smi_arch() is None:
        proc = sparsebench("run", str(cfg), "--accelerator", "cuda", "--no-progress")
        assert proc.returncode == 2 and "nvidia-smi reports no GPU" in _one_line(proc)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 9.0\n")
    (fake / "nvidia-smi").chmod(0o755)
    env_path = os.environ["PATH"]
    os.environ["PATH"] = f"{fake}{os.pathsep}{env_path}"
    try:
        proc = sparsebench("run", str(cfg), "--accelerator", "cuda", "--no-progress")
    finally:
        os.environ["PATH"] = env_path
    if _gpu_here():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    line = _one_line(proc)
    assert proc.returncode == 2 and "device localhost: cannot run on its GPU" in line and "--accelerator cpu" in line


def _gpu_here() -> bool:
    """Whether TVM's runtime here sees a CUDA GPU (the runner's way of loading the CUDA runtime)."""
    import subprocess
    import sys

    from harness.device.preflight import CUDA_PROBE

    proc = subprocess.run([sys.executable, "-c", CUDA_PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    try:
        return bool(json.loads(proc.stdout.strip().splitlines()[-1]).get("exist"))
    except (ValueError, IndexError):
        return False


def test_a_cuda_run_end_to_end_on_this_machines_gpu(tmp_path):
    """Needs an NVIDIA GPU (and a CUDA 13 driver): dense, TVM's default build and 90 % block variants run on it,
    every output checked against the reference."""
    if nvidia_smi_arch() is None or not _gpu_here():
        pytest.skip("no NVIDIA GPU visible to TVM's runtime here (nvidia-smi and tvm.cuda(0)); this test runs on a "
                    "machine with one")
    cfg = _config(tmp_path / "lc.toml", target="local-cuda", models=["ffn-768"])
    proc = sparsebench("run", str(cfg), "--accelerator", "cuda", "--no-progress", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    from harness.store import ResultStore

    store = ResultStore(tmp_path / "r.db")
    rows = store.results(store.resolve_run(None))
    store.close()
    assert {r.method for r in rows} == {"dense", "tvm-default", "block"}
    assert all(r.accelerator == "cuda" and r.verdict == "VALID" for r in rows), [(r.variant_key, r.reasons) for r in rows]


def test_doctor_says_whether_the_gpu_is_usable():
    proc = sparsebench("doctor", "--target", "local-cuda")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a GPU missing is a warning: the CPU can be measured
    line = next(line for line in proc.stdout.splitlines() if line.split()[1:2] == ["gpu"])
    if _gpu_here():
        assert line.split()[0] == "OK" and "compute" in line
    else:
        assert line.split()[0] == "WARN" and "--accelerator cuda cannot run here" in line
