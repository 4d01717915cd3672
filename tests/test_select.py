"""Kernel selection as its own step: candidates timed on the device through the transport, cached per device
fingerprint, a plan the compile step follows without timing anything, the rule (saying why) when the device
cannot be measured. The aarch64 case (times from an emulated Pi over ssh) is in tests/test_cross.py."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from conftest import make_small_model
from harness.compile.cache import BuildRequest, build_key
from harness.compile.plan import KernelPlan
from harness.compile.select import select_kernels
from harness.config import Method, load_target
from harness.models.inputs import InputSpec
from harness.transports.local import LocalTransport


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    """A timing cache of this module's own: "first" must mean nothing was timed for this device yet."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SPARSEBENCH_CACHE", str(tmp_path_factory.mktemp("select-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def requests_(tmp_path_factory, _own_cache):
    from harness.sparsify import make_variant

    folder = tmp_path_factory.mktemp("select")
    model, _ = make_small_model(folder)
    target = load_target("local").tvm_target
    out = []
    for method, level in ((None, 0.0), (Method("block", (16, 1)), 0.9)):
        v = make_variant("small", model, method, level, folder / "variants")
        inputs = (InputSpec("x", "float32", (1, 48)),)
        out.append(BuildRequest(v.onnx_path, v.sha256, inputs, target, "ours", "native"))
    return out


def _select(reqs, python=sys.executable):
    return select_kernels(reqs, transport=LocalTransport(), python=python, toolchain="native", timeout_s=300)


def test_plan_is_timed_on_the_device_then_cached(requests_):
    first = _select(requests_)
    plan = first.plan
    assert plan.note == "" and first.timed > 0
    assert plan.fingerprint["machine"] and plan.fingerprint["tvm"]  # reported by the board-side timer
    assert plan.fingerprint["target"] == requests_[0].target
    sparse_layers = [layer for layer in plan.layers if len(layer.times_us) > 1]
    assert sparse_layers, plan.layers
    for layer in plan.layers:
        assert layer.choice == "measured" and not layer.cached
        assert all(t > 0 for t in layer.times_us.values())
        assert layer.kernel == min(layer.times_us, key=layer.times_us.get)
        assert layer.measured_on.startswith("localhost (")
    for layer in sparse_layers:
        assert {"dense", "bsr 16x1", "bsr 1x1"} <= set(layer.times_us)

    again = _select(requests_)  # same device fingerprint: nothing is timed again
    assert again.timed == 0 and again.reused == first.timed + first.reused
    assert [layer.kernel for layer in again.plan.layers] == [layer.kernel for layer in plan.layers]
    assert all(layer.cached for layer in again.plan.layers)


def test_compile_follows_the_plan(requests_):
    from harness.compile.tvm_adapter import build

    sparse = requests_[1]
    selection = _select([sparse])
    plan = selection.plan_for(sparse)
    built = build(replace(sparse, plan=plan))
    assert built.error is None, built.error
    assert [layer["weight"] for layer in built.layers] == ["fc0.weight", "fc1.weight", "fc2.weight"]
    by_shape = {tuple(layer.shape): layer for layer in plan.layers}
    for record in built.layers:
        chosen = by_shape[tuple(record["shape"])]
        assert record["choice"] == "measured" and record["alternatives_us"] == chosen.times_us
        assert record["measured_on"] == chosen.measured_on

    # a plan that says otherwise is obeyed (the compile step times nothing), and is a different artifact
    def slowest(layer):
        label = max(layer.times_us, key=layer.times_us.get)
        kind, _, block = label.partition(" ")
        shape = tuple(int(v) for v in block.replace(":", "x").split("x")) if block else None
        return replace(layer, kernel=label, candidate=(kind, shape))

    forced = replace(plan, layers=tuple(slowest(layer) for layer in plan.layers))
    assert [layer.kernel for layer in forced.layers] != [layer.kernel for layer in plan.layers]
    rebuilt = build(replace(sparse, plan=forced))
    assert [[record["kernel"]] + (record["block"] or []) for record in rebuilt.layers] == \
        [[layer.candidate[0]] + list(layer.candidate[1] or ()) for layer in forced.layers]
    assert build_key(replace(sparse, plan=forced), "v") != build_key(replace(sparse, plan=plan), "v")
    assert KernelPlan.from_json(plan.to_json()) == plan


def test_unreachable_device_means_the_rule_and_says_why(requests_):
    selection = _select(requests_[1:], python="/nonexistent/python3")
    plan = selection.plan
    assert "kernel selection on localhost failed" in plan.note
    assert plan.layers and all(layer.choice == "rule" for layer in plan.layers)
    assert all("kernel selection on localhost failed" in layer.rule for layer in plan.layers)
    assert {layer.kernel for layer in plan.layers} >= {"bsr 16x1"}


def test_corrupt_timing_cache_is_measured_again(requests_):
    from harness.compile.select import timing_cache

    first = _select(requests_[:1])
    cache = timing_cache(first.plan.fingerprint)
    cache.path.write_bytes(b"\x00not json")  # a torn write, a disk error: never trusted, never a crash
    again = _select(requests_[:1])
    assert again.timed > 0 and again.plan.note == ""
    assert all(layer.choice == "measured" for layer in again.plan.layers)


# ---------------------------------------------------------------------------------------------------------------
# CUDA targets: our kernels against TVM's default schedule, timed on the GPU; without one, the rule, saying why


def _cuda(req):
    return replace(req, target={"kind": "cuda", "arch": "sm_90", "host": req.target})


class _GpuBoard:
    """A device with a GPU behind a transport that times kernels itself (as the rpc transport does). Its made-up
    times follow the stored weight: TVM's kernel 5 µs, our dense kernel 20 µs, a sparse kernel 1 µs per thousand
    stored values (+1)."""

    device = "gpu-board"

    def __init__(self):
        self.calls = []

    def fingerprint(self) -> dict:
        return {"machine": "x86_64", "gpu": "a made-up one"}

    def time_kernels(self, library, arrays, specs, *, repeat, min_repeat_ms, timeout_s, device="cpu"):
        import numpy as np

        self.calls.append({"device": device, "library": library.read_bytes(), "specs": specs})
        with np.load(arrays) as npz:
            consts = {spec["id"]: [npz[name] for name in spec["args"][1:]] for spec in specs}
        times = {}
        for kid, args in consts.items():
            if len(args) > 1:  # values, indices, indptr: a sparse kernel of ours
                times[kid] = 1.0 + args[0].size / 1000
            else:  # TVM keeps W as [K, N]; our dense kernel packs it [N/32, K, 32]
                times[kid] = 5.0 if args[0].ndim == 2 else 20.0
        return {kid: {"median_us": us, "results_us": [us]} for kid, us in times.items()}


def test_cuda_layers_time_ours_and_tvms_kernel_on_the_gpu_and_the_build_follows(requests_):
    import shutil
    import struct

    from harness.compile.tvm_adapter import build

    board = _GpuBoard()
    reqs = [_cuda(req) for req in requests_]
    selection = select_kernels(reqs, transport=board, python="", toolchain="native", timeout_s=300)
    assert selection.plan.note == "" and len(board.calls) == 1
    call = board.calls[0]
    assert call["device"] == "cuda"  # the timer runs the bundle on the GPU, not the CPU
    if shutil.which("nvcc"):  # the board's runtime-only TVM cannot compile CUDA source: the bundle carries a fatbin
        assert struct.pack("<I", 0xBA55ED50) in call["library"] and b'extern "C" __global__' not in call["library"]
    layers = selection.plan.layers
    assert layers and all(layer.choice == "measured" for layer in layers)
    assert all({"dense", "tvm"} <= set(layer.times_us) for layer in layers)
    assert not [label for layer in layers for label in layer.times_us if label.startswith("nm")]
    sparse = [layer for layer in layers if len(layer.times_us) > 2]
    assert sparse and all(layer.kernel.startswith("bsr") for layer in sparse)
    assert all(layer.kernel == "tvm" for layer in layers if layer not in sparse)

    built = build(replace(reqs[1], plan=selection.plan_for(reqs[1])))
    assert built.error is None, built.error
    by_key = {(tuple(layer.shape), layer.batch): layer for layer in selection.plan_for(reqs[1]).layers}
    for record in built.layers:
        chosen = by_key[(tuple(record["shape"]), record["batch"])]
        assert record["kernel"] == chosen.candidate[0] and record["choice"] == "measured"
        assert record["alternatives_us"] == chosen.times_us
    assert {record["kernel"] for record in built.layers} >= {"bsr"}


def test_cuda_selection_without_a_gpu_means_the_rule_and_says_why(requests_):
    """This machine has no GPU: the timer fails in one line, and TVM's default schedule decides, citing the
    measurements that justify it."""
    selection = _select([_cuda(requests_[1])])
    note = selection.plan.note
    assert "the kernel timer on localhost failed: no CUDA device" in note and "\n" not in note
    assert selection.plan.layers
    for layer in selection.plan.layers:
        assert layer.choice == "rule" and layer.kernel == "tvm" and layer.candidate == ("tvm", None)
        assert "cuda_measurements.json" in layer.rule and "no CUDA device" in layer.rule
