"""The prepared GPU check (``harness/gpucheck``) on a host without a GPU.

``build --quick --no-tvm`` runs for real (TVM compiles ffn-768 for CUDA sm_90, nvcc makes the fatbins); the bundle's
own ``check.py`` restores every artifact (seeded weights refilled, sha256 checked) and must exit 2 here with one
line naming the missing GPU. A restored artifact loads with TVM's runtime library only, its CUDA module a fatbin
(a stand-in loader: no CUDA driver here). The runner job it writes and its torch peers run on the CPU (the same functions, with
``device="cpu"``) so the job format, the output checks and the peers' arithmetic are exercised without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.compile.toolchains import cuda_plan

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpucheck") / "bundle"
    proc = subprocess.run([sys.executable, "-m", "harness.gpucheck", "build", "--out", str(out), "--quick",
                           "--no-tvm"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if not cuda_plan("sm_90").ahead:  # no nvcc here: one clear refusal, nothing else to check
        assert proc.returncode == 1 and "cannot compile the CUDA kernels ahead" in proc.stderr, proc.stderr
        pytest.skip("no nvcc that knows sm_90 on this host: the bundle cannot be built")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "artifacts" in proc.stdout and "run.sh" in proc.stdout
    return out


def load_check(bundle: Path):
    """The bundle's own check.py as a module (what runs on the GPU machine)."""
    spec = importlib.util.spec_from_file_location("gpucheck_bundle_check", bundle / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_bundle_lists_every_variant_and_carries_fatbins(bundle, tmp_path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["arch"] == "sm_90" and manifest["tvm_runtime"] is None  # --no-tvm
    model = manifest["models"]["ffn-768"]
    assert [v["label"] for v in model["variants"]] == ["dense", "block16x1-90"]
    assert model["batches"] == [1]
    block = model["variants"][1]
    assert block["block"] == [16, 1] and abs(block["sparsity_actual"] - 0.9) < 0.01
    arts = {(a["variant"], a["kernels"]): a for a in manifest["artifacts"]}
    assert set(arts) == {("dense", "tvm-default"), ("dense", "ours"), ("block16x1-90", "ours")}
    assert [l["kernel"] for l in arts[("block16x1-90", "ours")]["layers"]] == ["bsr", "bsr"]
    assert [l["kernel"] for l in arts[("dense", "ours")]["layers"]] == ["dense", "dense"]
    for name in ("run.sh", "check.py", "sparsebench_board/runner.py", "sparsebench_board/rounds.py",
                 model["inputs"], model["refs"], model["masks"]):
        assert (bundle / name).is_file(), name
    assert os.access(bundle / "run.sh", os.X_OK)

    check = load_check(bundle)
    data = check.ModelData("ffn-768", model, bundle)
    for art in manifest["artifacts"]:
        # shipped without the weights (~19 MB dense): only code, fatbin and what no seed regenerates
        assert art["holes"] and art["shipped_bytes"] < 100_000 < art["bytes"]
        assert art["toolchain"].endswith("+cuda/sm_90/fatbin/" + cuda_plan("sm_90").nvcc_version)
        path = check.restore(art, data, bundle, tmp_path)  # sha256 of the built artifact checked inside
        blob = path.read_bytes()
        assert FATBIN_MAGIC in blob and struct.pack("<Q", 6) + b"fatbin" in blob, art["name"]
        assert b'extern "C" __global__' not in blob  # no CUDA source left for the GPU machine to compile
    # a corrupted refill is refused, not loaded
    art = dict(arts[("dense", "ours")], sha256="0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        check.restore(art, data, bundle, tmp_path)


def test_check_without_gpu_exits_2_with_one_line(bundle):
    if shutil.which("nvidia-smi"):
        pytest.skip("this host has nvidia-smi")
    proc = subprocess.run(["bash", str(bundle / "run.sh")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "no NVIDIA GPU: nvidia-smi not found (this check needs a machine with an NVIDIA GPU and its driver)"]
    assert proc.stderr == ""
    assert not (bundle / "results.json").exists()


def test_check_names_torch_when_it_sees_no_cuda_device(bundle, tmp_path):
    """An nvidia-smi that lists a GPU the machine does not have: torch (real, CPU-only here) must say no."""
    pytest.importorskip("torch")
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-test)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(bundle / "run.sh")], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no NVIDIA GPU: torch ") and "sees no CUDA device" in lines[0]


def test_runner_job_and_torch_peers_on_the_cpu(bundle, tmp_path):
    """The job check.py writes, run by the project's runner on a CPU build of the same variant, and the torch
    peers on the CPU: timings with a CI and outputs that pass the check against the bundle's references."""
    from harness.compile.cache import ArtifactCache, BuildRequest
    from harness.compile.tvm_adapter import build
    from harness.config import load_target
    from harness.models import zoo
    from harness.models.onnx_io import load_model

    manifest = json.loads((bundle / "manifest.json").read_text())
    check = load_check(bundle)
    info = manifest["models"]["ffn-768"]
    data = check.ModelData("ffn-768", info, bundle)
    onnx_path, eval_path = zoo.materialize("ffn-768")
    model = load_model("ffn-768", onnx_path, eval_path)
    built = build(BuildRequest(onnx_path, model.sha256, model.shapes_for_batch(1), load_target("local").tvm_target,
                               "ours", "native"), ArtifactCache(tmp_path / "cache"))
    assert built.error is None, built.error
    group = [{"name": "cpu-dense", "variant": "dense", "kernels": "ours", "layers": list(built.layers)}]
    rules = {**manifest["measure"], "min_runs": 20, "min_s": 0.1, "warmup_s": 0.02, "model_time_repeat": 3}
    got = check.run_runner(group, data, 1, {"cpu-dense": built.artifact}, rules, check.tvm_env(None), tmp_path,
                           device="cpu")
    assert got["_device_meta"]
    [row] = check.tvm_rows(group, got, {}, data, 1, manifest["tolerance"])
    assert "error" not in row, row.get("error")
    assert row["check"]["ok"] and row["n"] >= 20 and row["rounds"] == rules["rounds"]
    assert row["ci_us"][0] <= row["p50_us"] <= row["ci_us"][1] and row["dev_us"] > 0

    torch = pytest.importorskip("torch")
    rows = check.torch_rows(torch, data, 1, ["dense", "block16x1-90"], rules, 0, manifest["tolerance"],
                            device="cpu")
    assert [(r["variant"], r["engine"]) for r in rows] == [("dense", "torch-eager"), ("block16x1-90", "torch-csr")]
    for r in rows:
        assert "error" not in r, r.get("error")
        assert r["check"]["ok"] and r["p50_us"] > 0 and r["ci_us"], r
    # the sparse peer computes the pruned model: checked against the dense reference it must fail
    assert check.output_check(data.refs["dense"], data.refs["block16x1-90"], manifest["tolerance"])["ok"] is False
    # one table, every row on one line
    check.print_table([row, *rows])
    np.testing.assert_array_equal(data.inputs[0], model.eval_inputs["x"])


def test_check_py_imports_nothing_from_the_host_package():
    """check.py runs on the GPU machine beside the board package: the standard library, numpy, torch (optional)
    and ``sparsebench_board`` only -- never harness, schedules or TVM itself (the runner loads TVM)."""
    import ast

    source = (ROOT / "harness" / "gpucheck" / "check.py").read_text()
    allowed = set(sys.stdlib_module_names) | {"numpy", "torch", "sparsebench_board"}
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        for name in names:
            assert name.split(".")[0] in allowed, f"check.py imports {name}"


def test_weight_layouts_are_the_kernels():
    """The layouts check.py refills are the ones schedules/ stores (odd shapes: padded edges)."""
    from harness.gpucheck import check
    from schedules.bsr import to_bsr
    from schedules.cuda import pack_dense

    rng = np.random.default_rng(1)
    w = rng.normal(size=(50, 24)).astype(np.float32)
    np.testing.assert_array_equal(check.layout(w, {"form": "pack", "vn": 32}), pack_dense(w))
    w[rng.random(w.shape) < 0.8] = 0
    for block in ((16, 1), (1, 1)):
        ours = to_bsr(w, block)
        for part in ("data", "indices", "indptr"):
            got = check.layout(w, {"form": "bsr", "block": list(block), "part": part})
            np.testing.assert_array_equal(got, getattr(ours, part))
            assert got.dtype == getattr(ours, part).dtype


def test_restored_artifact_loads_in_the_tvm_runtime_with_its_fatbin(bundle, tmp_path):
    """A restored artifact loads in a fresh process with TVM's runtime library only (as on the GPU machine), the
    CUDA module arriving as a fatbin: a stand-in loader takes it, since this host has no CUDA driver."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    check = load_check(bundle)
    data = check.ModelData("ffn-768", manifest["models"]["ffn-768"], bundle)
    art = next(a for a in manifest["artifacts"] if a["variant"] == "block16x1-90")
    path = check.restore(art, data, bundle, tmp_path)
    script = tmp_path / "load.py"
    script.write_text(f"""
import json, struct, tvm, tvm_ffi
seen = []
@tvm_ffi.register_global_func("ffi.Module.load_from_bytes.cuda", override=True)
def _load(blob):
    blob = bytes(blob)
    (n,) = struct.unpack_from("<Q", blob, 0)
    seen.append({{"fmt": blob[8:8 + n].decode(), "fatbin": {FATBIN_MAGIC!r} in blob}})
    return tvm_ffi.get_global_func("ffi.Module.create.const_loader")({{}}, {{}})  # in the runtime library
lib = tvm.runtime.load_module({str(path)!r})
print(json.dumps({{"seen": seen, "kinds": [m.kind for m in lib.imports]}}))
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["seen"] == [{"fmt": "fatbin", "fatbin": True}]
