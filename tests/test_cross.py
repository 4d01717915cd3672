"""Cross-compilation and the emulated aarch64 check (loopback tier: real cross linkers, real qemu-user).

The Raspberry Pi 5 profile's builds of `digits-mlp`, dense and 90 % sparse (16x1 blocks), are linked with the
aarch64 cross toolchain and run under qemu-user on a Debian arm64 sysroot with the aarch64 TVM runtime; their
outputs must equal the host build's. `.ci/run` installs gcc/g++-aarch64-linux-gnu and qemu-user; without them these
tests fail with the install command (a skipped emulation test would prove nothing). The sysroot is built into the
session's cache on first use (~15-60 s: apt-get download, pip download of the aarch64 wheels).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import sparsebench
from harness.compile import toolchains
from harness.compile.cache import BuildRequest
from harness.compile.toolchains import cuda_plan, find_toolchain, replace_cuda_code
from harness.config import Method, load_target
from harness.emulate import elf_machine, ensure_sysroot, load_sysroot, verify_artifact
from harness.errors import HarnessError

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)


@pytest.fixture(scope="module")
def digits():
    from harness.models import zoo
    from harness.models.onnx_io import load_model
    from harness.paths import cache_dir
    from harness.sparsify import make_variant

    onnx_path, eval_path = zoo.materialize("digits-mlp")
    model = load_model("digits-mlp", onnx_path, eval_path)
    folder = cache_dir() / "variants"
    variants = {"dense": make_variant("digits-mlp", onnx_path, None, 0.0, folder),
                "sparse": make_variant("digits-mlp", onnx_path, Method("block", (16, 1)), 0.9, folder)}
    return model, variants


def build_for(model, variant, profile_name: str, role: str = "cpu"):
    from harness.compile.tvm_adapter import build

    profile = load_target(profile_name)
    return build(BuildRequest(variant.onnx_path, variant.sha256, model.shapes_for_batch(1), profile.tvm_targets[role],
                              "ours", profile.toolchain))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["dense", "sparse"])
def test_rpi5_builds_pass_under_emulation(digits, which):
    model, variants = digits
    built = build_for(model, variants[which], "rpi5")
    assert built.error is None, built.error
    assert elf_machine(built.artifact) == "aarch64"
    assert built.toolchain.startswith("aarch64-linux-gnu/")
    kernels = {layer["kernel"] for layer in built.layers}
    assert ("bsr" in kernels) == (which == "sparse"), built.layers  # the sparse build really runs our BSR kernel

    result = verify_artifact(built.artifact, arch="aarch64", inputs=model.eval_inputs["x"][:48])
    assert result.ok, result.summary()
    assert result.n_outputs == 48 and result.max_abs_err <= 1e-4 * result.scale
    assert result.device_meta["machine"] == "aarch64" and result.device_meta["tvm_runtime_only"]
    assert result.emulated_s < 60, result.summary()


@pytest.mark.parametrize("profile", ["x86-64", "rpi4", "rpi5", "jetson-orin-nano", "jetson-agx-orin",
                                     "jetson-xavier-nx", "android-snapdragon8"])
def test_every_board_profile_compiles_digits_mlp_here(digits, profile):
    model, variants = digits
    built = build_for(model, variants["sparse"], profile)
    if profile.startswith("android") and built.error and built.error.startswith("toolchain:"):
        assert "ANDROID_NDK_HOME" in built.error  # no NDK on this machine: the clear error, as a row
        return
    assert built.error is None, built.error
    assert elf_machine(built.artifact) == ("x86_64" if profile == "x86-64" else "aarch64")


def test_sysroot_is_cached_complete_and_small():
    sysroot = ensure_sysroot("aarch64")  # built by the test above
    info = sysroot.info
    assert info["smoke"]["machine"] == "aarch64" and info["smoke"]["tvm"].startswith("0.27")
    assert "python3.11" in info["packages"] and "apache_tvm" in info["wheels"]
    assert not (sysroot.site / "tvm" / "lib" / "libtvm_compiler.so").exists()  # the 240 MB compiler stays behind
    assert (sysroot.site / "tvm" / "lib" / "libtvm_runtime.so").exists()
    assert info["bytes"] < 400e6, info["bytes"]


def test_half_built_or_outdated_sysroot_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path))
    root = tmp_path / "sysroot-aarch64"
    (root / "usr" / "bin").mkdir(parents=True)  # what an interrupted build leaves: files, no marker
    assert load_sysroot("aarch64") is None
    from harness.emulate import sysroot as sr

    (root / sr.MARKER).write_text(json.dumps({"recipe_hash": "from-an-older-recipe"}))
    assert load_sysroot("aarch64") is None
    (root / sr.MARKER).write_text(json.dumps({"recipe_hash": sr._recipe_hash(sr.recipe("aarch64"))}))
    assert load_sysroot("aarch64").root == root


def test_verify_cli(digits):
    model, variants = digits
    built = build_for(model, variants["sparse"], "rpi5")
    proc = sparsebench("verify", built.key[:12], "--emulate", "aarch64")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: ") and "(aarch64)" in proc.stdout

    host = build_for(model, variants["sparse"], "local")
    proc = sparsebench("verify", str(host.artifact), "--emulate", "aarch64")
    assert proc.returncode == 2 and "is built for x86_64, not aarch64" in proc.stderr, proc.stderr


def test_missing_qemu_names_the_package(monkeypatch, tmp_path):
    from harness.emulate import find_qemu

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HarnessError, match="apt-get install -y qemu-user"):
        find_qemu("aarch64")


# ---------------------------------------------------------------------------------------------------------------
# a benchmark run for the Pi: aarch64 artifacts through the real ssh transport, "board" = this machine under qemu


@pytest.mark.slow
def test_run_for_rpi5_over_ssh_measures_aarch64_artifacts(sshd, tmp_path):
    from harness.compile import ArtifactCache

    db = tmp_path / "results.db"
    cfg = tmp_path / "pi.toml"
    cfg.write_text(f"""
[run]
name = "pi"
target = "rpi5"
db = "{db}"
[sparsify]
levels = [0, 0.9]
methods = ["block:16x1"]
[measure]
warmup_runs = 1
warmup_s = 0.0
min_runs = 5
min_s = 0.0
max_ci = 10.0
max_spread = 10.0
extend_s = 0.0
energy_idle_s = 0.0
energy_window_s = 0.0
[[models]]
name = "digits-mlp"
""")
    board_python = ensure_sysroot("aarch64").wrapper()  # the Pi's venv python, emulated
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(cfg), "--no-progress", "--device", sshd.url,
         "--identity", str(sshd.user_key), "--known-hosts", str(sshd.known_hosts), "--python", str(board_python),
         "--remote-root", str(tmp_path / "remote")],
        capture_output=True, text=True, timeout=900, env=sshd.client_env(), cwd=sshd.home)
    assert proc.returncode == 0, proc.stderr
    from harness.store import ResultStore

    store = ResultStore(db)
    rows = store.results(store.resolve_run(None))
    assert len(rows) == 2
    for row in rows:
        assert row.verdict != "ERROR", row.error
        assert row.device_meta.machine == "aarch64" and row.transport == "ssh"
        artifact = ArtifactCache().root / row.artifact_key[:32] / "model.so"
        assert elf_machine(artifact) == "aarch64"
    dense = next(r for r in rows if r.method == "dense")
    assert dense.accuracy > 0.9
    # kernels were chosen by timings taken on the (emulated) Pi through the same ssh transport, not on this host
    sparse = next(r for r in rows if r.method == "block")
    layers = [layer for layer in sparse.layers if layer.choice != "none"]
    assert layers and all(layer.choice == "measured" for layer in layers), sparse.layers
    assert all("aarch64" in layer.measured_on and "127.0.0.1" in layer.measured_on for layer in layers)
    assert all(set(layer.alternatives_us) >= {"dense"} for layer in layers)


# ---------------------------------------------------------------------------------------------------------------
# missing toolchains: one clear error, before anything is stored or measured


def test_missing_aarch64_toolchain_is_one_clear_error(monkeypatch, tmp_path, digits):
    from harness.bench import Benchmark
    from harness.compile.tvm_adapter import build
    from harness.config import parse_config
    from harness.store import ResultStore
    from harness.transports.spec import DeviceSpec

    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-gcc/g++ ...
    monkeypatch.setattr(toolchains, "zig_available", lambda: False)  # ... and no ziglang
    with pytest.raises(HarnessError) as info:
        find_toolchain("aarch64-linux-gnu")
    message = str(info.value)
    assert "apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu" in message
    assert "pip install ziglang" in message

    cfg = parse_config({"run": {"target": "rpi5", "db": str(tmp_path / "r.db")}, "models": [{"name": "digits-mlp"}]})
    store = ResultStore(tmp_path / "r.db")
    with pytest.raises(HarnessError, match="no aarch64 cross linker"):
        Benchmark(cfg, store, device=DeviceSpec(device="ssh://pi@127.0.0.1:9"))
    assert store.list_runs() == []

    model, variants = digits  # the compile room itself: an error row, not an exception
    built = build(BuildRequest(variants["dense"].onnx_path, variants["dense"].sha256, model.shapes_for_batch(1),
                               load_target("rpi5").tvm_target, "ours", "aarch64-linux-gnu"))
    assert built.artifact is None and built.error.startswith("toolchain: no aarch64 cross linker")


def test_zig_is_the_fallback_linker(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(toolchains, "zig_available", lambda: True)
    monkeypatch.setattr(toolchains, "_zig_version", lambda: "zig 0.0-test")
    found = find_toolchain("aarch64-linux-gnu")
    assert found.kind == "zig" and found.cross
    script = Path(found.compiler).read_text()
    assert f'"{sys.executable}" -m ziglang cc -target aarch64-linux-gnu "$@"' in script
    assert os.access(found.compiler, os.X_OK)


def test_local_run_of_a_cross_target_is_refused():
    from harness.compile.toolchains import check_run_toolchain

    with pytest.raises(HarnessError, match="cannot load: name the board with --device ssh://"):
        check_run_toolchain(load_target("rpi5"), "local")


def test_android_needs_the_ndk(monkeypatch, tmp_path):
    for var in ("TVM_NDK_CC", "ANDROID_NDK_HOME", "ANDROID_NDK_ROOT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(HarnessError) as info:
        find_toolchain("aarch64-linux-android")
    assert "ANDROID_NDK_HOME" in str(info.value) and "TVM_NDK_CC" in str(info.value)

    bin_dir = tmp_path / "ndk" / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "bin"
    bin_dir.mkdir(parents=True)
    for api in (21, 24, 33):
        clang = bin_dir / f"aarch64-linux-android{api}-clang++"
        clang.write_text("#!/bin/sh\necho 'Android (0, based on r0) clang version 17.0.2'\n")
        clang.chmod(0o755)
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path / "ndk"))
    found = find_toolchain("aarch64-linux-android")
    assert found.kind == "ndk" and found.compiler.endswith("aarch64-linux-android24-clang++")
    assert "clang version 17" in found.version


# ---------------------------------------------------------------------------------------------------------------
# CUDA (Jetson): compiled here; with nvcc the kernels travel as a fatbin, without it as source


def test_jetson_cuda_build_compiles_here(digits):
    model, variants = digits
    built = build_for(model, variants["dense"], "jetson-orin-nano", role="cuda")
    assert built.error is None, built.error
    assert elf_machine(built.artifact) == "aarch64"
    data = built.artifact.read_bytes()
    if shutil.which("nvcc"):
        assert built.toolchain.endswith("+cuda/sm_87/fatbin/" + cuda_plan("sm_87").nvcc_version)
        assert FATBIN_MAGIC in data and struct.pack("<Q", 6) + b"fatbin" in data
        assert b'extern "C" __global__' not in data  # no source left for the board to compile
        assert "no compiler needed" in built.notes[0]
    else:
        assert "+cuda/sm_87/source/" in built.toolchain and "NVRTC" in built.notes[0]
        assert b'extern "C" __global__' in data


def test_cuda_kernels_load_in_the_format_the_plan_says(digits, tmp_path):
    """Load an x86 host + CUDA build in a fresh process with a stand-in CUDA loader: the runtime must see the
    fatbin (nvcc here) or the source (no nvcc), framed as TVM's loader reads it."""
    model, variants = digits
    from harness.compile.tvm_adapter import build

    host = load_target("local").tvm_target
    built = build(BuildRequest(variants["dense"].onnx_path, variants["dense"].sha256, model.shapes_for_batch(1),
                               {"kind": "cuda", "arch": "sm_90", "host": host}, "ours", "native"))
    assert built.error is None, built.error
    script = tmp_path / "load.py"
    script.write_text(f"""
import json, struct, tvm, tvm_ffi
seen = []
@tvm_ffi.register_global_func("ffi.Module.load_from_bytes.cuda", override=True)
def _load(blob):
    blob = bytes(blob)
    (n,) = struct.unpack_from("<Q", blob, 0)
    seen.append({{"fmt": blob[8:8 + n].decode(), "fatbin": {FATBIN_MAGIC!r} in blob}})
    return tvm_ffi.get_global_func("runtime.CSourceModuleCreate")("", "c", [], [])
tvm.runtime.load_module({str(built.artifact)!r})
print(json.dumps(seen))
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    ahead = cuda_plan("sm_90").ahead
    assert seen == [{"fmt": "fatbin" if ahead else "cuda", "fatbin": ahead}]


def test_cuda_plan_says_what_the_board_needs(monkeypatch):
    monkeypatch.setattr(toolchains, "_nvcc", lambda: (None, ""))
    plan = cuda_plan("sm_87")
    assert not plan.ahead and "NVRTC" in plan.note and "cuda-bindings" in plan.note
    monkeypatch.setattr(toolchains, "_nvcc", lambda: ("/opt/cuda/bin/nvcc", "13.0"))
    monkeypatch.setattr(toolchains, "_nvcc_archs", lambda _path: frozenset({"sm_75", "sm_87", "sm_100"}))
    plan = cuda_plan("sm_72")  # Xavier: CUDA 13 dropped it
    assert not plan.ahead and "sm_75..sm_100" in plan.note and "CUDA <= 12" in plan.note
    plan = cuda_plan("sm_87")
    assert plan.ahead and plan.gencode() == ["-gencode", "arch=compute_87,code=[sm_87,compute_87]"]


def test_replace_cuda_code_rewrites_only_module_records():
    u64 = lambda n: struct.pack("<Q", n)  # noqa: E731
    src, fatbin = b"extern \"C\" __global__ void k() {}", FATBIN_MAGIC + b"\x01" * 20
    fmap = u64(1) + b"\x07fmapdata"
    record = u64(4) + b"cuda" + fmap + u64(len(src)) + src
    decoy = u64(4) + b"cuda" + u64(3) + b"abc"  # the key's bytes inside weight data: left alone
    body = u64(3) + u64(5) + b"relax" + u64(len(decoy)) + decoy + u64(4) + b"cuda" + u64(len(record)) + record
    blob = u64(len(body)) + body
    out = replace_cuda_code(blob, {src: fatbin})
    new_record = u64(6) + b"fatbin" + fmap + u64(len(fatbin)) + fatbin
    expected = u64(3) + u64(5) + b"relax" + u64(len(decoy)) + decoy + u64(4) + b"cuda" + u64(len(new_record)) \
        + new_record
    assert out == u64(len(expected)) + expected
    with pytest.raises(ValueError, match="found 0 of 1 CUDA source"):
        replace_cuda_code(blob, {b"other source": fatbin})
    np.testing.assert_equal(len(out) - 8, struct.unpack_from("<Q", out)[0])


def test_cuda_timing_bundle_holds_tvms_kernel_beside_ours(tmp_path):
    """The timing bundle of a CUDA layer (our dense and BSR kernels and TVM's dlight-scheduled one) builds here for
    sm_90 with an x86-64 host; with nvcc its kernels travel as a fatbin the board's runtime loads as is."""
    from harness.compile.tvm_adapter import export_bundle
    from harness.kernelbench.plan import block_pruned
    from schedules.cuda import GpuInfo

    weight = block_pruned(256, 64, (16, 1), 0.9, np.random.default_rng(3))
    kernels = [(f"k{i}", candidate, weight, 1) for i, candidate in enumerate([("dense", None), ("tvm", None),
                                                                              ("bsr", (16, 1))])]
    target = {"kind": "cuda", "arch": "sm_90", "host": load_target("local").tvm_target}
    lib, npz, specs = export_bundle(kernels, GpuInfo("sm_90"), target, find_toolchain("native"), tmp_path)
    assert [spec["func"] for spec in specs] == ["t_k0", "t_k1", "t_k2"]
    assert [len(spec["args"]) for spec in specs] == [2, 2, 4]  # x, then packed W / W [K, N] / BSR arrays
    data = Path(lib).read_bytes()
    assert all(name.encode() in data for name in ("t_k0", "t_k1", "t_k2"))
    if shutil.which("nvcc"):
        assert FATBIN_MAGIC in data and b'extern "C" __global__' not in data
    else:
        assert b'extern "C" __global__' in data


def test_cuda_build_without_a_measurement_leaves_every_layer_to_tvm(digits):
    """No plan (nothing timed on the GPU): the rule gives every layer, sparse or not, TVM's default schedule and
    each record says so, citing the measurements behind the rule."""
    model, variants = digits
    built = build_for(model, variants["sparse"], "jetson-orin-nano", role="cuda")
    assert built.error is None, built.error
    assert len(built.layers) == 3
    for record in built.layers:
        assert (record["kernel"], record["choice"], record["block"]) == ("tvm", "rule", None)
        assert record["rule"].startswith("TVM's default schedule") and "cuda_measurements.json" in record["rule"]


def test_cuda_build_follows_a_plan_that_picks_our_bsr_kernel(digits):
    """A plan (as measured on a GPU) that picks bsr 16x1 for the 90 %-block-sparse layers gets our CUDA BSR kernel
    there; a layer the plan leaves out gets the rule (TVM's schedule), saying it was not in the plan."""
    from harness.compile.plan import KernelPlan, LayerPlan
    from harness.compile.tvm_adapter import build, survey

    model, variants = digits
    target = {"kind": "cuda", "arch": "sm_90", "host": load_target("local").tvm_target}
    req = BuildRequest(variants["sparse"].onnx_path, variants["sparse"].sha256, model.shapes_for_batch(1), target,
                       "ours", "native")
    picks = [LayerPlan(key, tuple(weight.shape), m, "bsr 16x1", ("bsr", (16, 1)), "measured",
                       times_us={"bsr 16x1": 40.0, "tvm": 50.0, "dense": 70.0}, measured_on="an H200")
             for key, weight, m, _, _ in survey(req) if np.count_nonzero(weight) < 0.2 * weight.size]
    assert picks
    built = build(replace(req, plan=KernelPlan(device="gpu-board", layers=tuple(picks))))
    assert built.error is None, built.error
    sparse = {tuple(layer.shape) for layer in picks}
    for record in built.layers:
        if tuple(record["shape"]) in sparse:
            assert (record["kernel"], record["block"], record["choice"]) == ("bsr", [16, 1], "measured")
            assert record["epilogue"] and record["epilogue"].startswith("bias")  # fused into our kernel
        else:
            assert record["kernel"] == "tvm" and "not in the kernel plan" in record["rule"]
