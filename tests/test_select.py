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
