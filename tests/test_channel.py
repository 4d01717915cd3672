"""Channel (structured) pruning and ``as-is`` (already-pruned models): the ONNX they produce or read, the patterns
found, the one-line refusals. The end-to-end run (both rows VALID, the comparison table) is in test_channel_e2e.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness.config import Method, parse_method
from harness.errors import HarnessError
from harness.models import zoo
from harness.models.reference import reference_outputs
from harness.sparsify import make_variant
from harness.sparsify.asis import detect_pattern, make_asis_variant
from harness.sparsify.channel import make_channel_variant


def _weights(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _inputs(eval_path, n=64):
    data = np.load(eval_path)
    return {"x": data["x"][:n]}, data["y"][:n]


def test_methods_parse():
    assert parse_method("channel") == Method("channel") and parse_method("as-is") == Method("as-is")
    assert Method("channel").fixed_level is None and Method("channel").label == "channel"
    with pytest.raises(HarnessError, match="channel, as-is"):
        parse_method("channels")


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_channel_mlp(tmp_path, level):
    path, eval_path = zoo.materialize("digits-mlp")
    v = make_channel_variant("digits-mlp", path, level, tmp_path)
    model = onnx.load(str(v.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    w = _weights(v.onnx_path)
    h = w["fc0.weight"].shape[0]
    # one fraction for both hidden layers; the last layer keeps its 10 outputs, the first its 64 inputs
    assert w["fc0.weight"].shape == (h, 64) and w["fc0.bias"].shape == (h,)
    assert w["fc1.weight"].shape == (h, h) and w["fc2.weight"].shape == (10, h)
    after, before = v.params
    assert before == 1024 * 64 + 1024 * 1024 + 10 * 1024 == sum(a.size for k, a in w.items() if "weight" in k) + (
        before - after)
    assert abs(after / before - (1 - level)) < 0.01  # "channel 0.9" has the parameter count of "block 0.9"
    assert abs(v.sparsity_actual - level) < 0.01 and v.key == f"digits-mlp/channel/{level:g}"
    assert all(l.pruned and l.detail.startswith("channel:") for l in v.layers)
    x, y = _inputs(eval_path)
    out, _ = reference_outputs(v.onnx_path, x, 16)
    assert out.shape == (len(y), 10)
    dense, _ = reference_outputs(path, x, 16)
    agree = (out.argmax(1) == dense.argmax(1)).mean()
    assert agree > (0.8 if level == 0.5 else 0.3), agree


def test_channel_removing_zero_units_keeps_outputs(tmp_path):
    """Units whose weights and bias are zero contribute nothing: removing exactly those changes no output."""
    path, eval_path = zoo.materialize("digits-mlp")
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    arrays = {k: numpy_helper.to_array(inits[k]).copy() for k in ("fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias")}
    dead0 = rng.choice(1024, 512, replace=False)
    dead1 = rng.choice(1024, 512, replace=False)
    arrays["fc0.weight"][dead0] = 0
    arrays["fc0.bias"][dead0] = 0
    arrays["fc1.weight"][dead1] = 0
    arrays["fc1.bias"][dead1] = 0
    for k, a in arrays.items():
        inits[k].CopyFrom(numpy_helper.from_array(a, k))
    zeroed = tmp_path / "zeroed.onnx"
    onnx.save(model, zeroed)
    # half the units of both layers: fc1 at 512x512 of 1024x1024, ... -> level so that 512 units are kept
    before = 1024 * 64 + 1024 * 1024 + 10 * 1024
    after = 512 * 64 + 512 * 512 + 10 * 512
    v = make_channel_variant("digits-mlp", zeroed, 1 - after / before, tmp_path)
    w = _weights(v.onnx_path)
    assert w["fc1.weight"].shape == (512, 512)
    x, _ = _inputs(eval_path)
    a, _ = reference_outputs(zeroed, x, 16)
    b, _ = reference_outputs(v.onnx_path, x, 16)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_channel_cnn(tmp_path, level):
    path, eval_path = zoo.materialize("digits-cnn")
    v = make_channel_variant("digits-cnn", path, level, tmp_path)
    onnx.checker.check_model(onnx.load(str(v.onnx_path)), full_check=True)
    w = _weights(v.onnx_path)
    c1, c2, c3 = (w[k].shape[0] for k in ("conv1.weight", "conv2.weight", "pwconv.weight"))
    assert c1 < 16 and c2 < 32 and c3 < 64
    assert w["conv2.weight"].shape == (c2, c1, 3, 3) and w["conv1.bias"].shape == (c1,)
    # the depthwise conv goes with conv2's channels (its filters, bias and group), then pwconv's inputs
    assert w["dwconv.weight"].shape == (c2, 1, 3, 3) and w["dwconv.bias"].shape == (c2,)
    dw = next(n for n in onnx.load(str(v.onnx_path)).graph.node if n.input[1:2] == ["dwconv.weight"])
    assert next(a.i for a in dw.attribute if a.name == "group") == c2
    assert w["pwconv.weight"].shape == (c3, c2, 1, 1)
    assert w["fc.weight"].shape == (10, c3)  # through GlobalAveragePool + Flatten
    by = {l.weight: l for l in v.layers}
    assert by["dwconv.weight"].pruned and "depthwise" in by["dwconv.weight"].detail
    after, before = v.params
    assert abs(after / before - (1 - level)) < 0.03
    data = np.load(eval_path)
    out, _ = reference_outputs(v.onnx_path, {"x": data["x"][:32]}, 8)
    assert out.shape == (32, 10) and np.isfinite(out).all()


def test_channel_leaves_unsafe_models_unchanged(tmp_path):
    path, _ = zoo.materialize("tiny-encoder")
    v = make_channel_variant("tiny-encoder", path, 0.5, tmp_path)
    assert v.params is None and not any(l.pruned for l in v.layers)
    assert "no layer's outputs can be removed safely" in v.notes[0] and "Reshape" in v.notes[0]


def test_asis_detects_blocks_and_nm(tmp_path):
    path, _ = zoo.materialize("digits-mlp")
    block = make_variant("digits-mlp", path, Method("block", (16, 1)), 0.9, tmp_path)
    v = make_asis_variant("pruned-mlp", block.onnx_path)
    # 0.9 on the two big layers (prune_last is off): the model's own figure is its sparsity, in its key
    assert v.method == "as-is" and 0.85 < v.sparsity_target < 0.9 and v.key == f"pruned-mlp/as-is/{v.sparsity_target:g}"
    assert [l.pattern for l in v.layers] == ["16x1 blocks", "16x1 blocks", "dense"] and v.block_str == "16x1"
    assert abs(v.layers[1].sparsity_actual - 0.9) < 0.01
    nm = make_variant("digits-mlp", path, Method("nm", (2, 4)), 0.5, tmp_path)
    v = make_asis_variant("nm-mlp", nm.onnx_path)
    assert [l.pattern for l in v.layers] == ["2:4", "2:4", "dense"] and v.block_str == "2:4"
    assert "2:4" in v.notes[0]
    assert detect_pattern(np.ones((8, 8))) == "dense"


def test_asis_refuses_a_dense_model(tmp_path):
    path, _ = zoo.materialize("digits-mlp")
    with pytest.raises(HarnessError) as err:
        make_asis_variant("digits-mlp", path)
    text = str(err.value)
    assert "\n" not in text and "digits-mlp" in text and "block:16x1" in text


def test_plan_has_no_channel_row_for_a_model_that_cannot_be_cut():
    from harness.bench import load_models, plan_jobs
    from harness.config import parse_config

    cfg = parse_config({"sparsify": {"levels": [0, 0.5], "methods": ["channel"]}, "compare": {"peers": []},
                        "models": [{"name": "tiny-encoder"}]})
    jobs = plan_jobs(cfg, load_models(cfg))
    assert [j.variant.method for j in jobs] == ["dense"]
    assert any("no channel row is measured" in n for n in jobs[0].variant.notes)


def test_plan_asis_with_and_without_a_dense_reference(tmp_path):
    import shutil

    from harness.bench import load_models, plan_jobs
    from harness.config import parse_config

    path, eval_path = zoo.materialize("digits-mlp")
    pruned = make_variant("digits-mlp", path, Method("nm", (2, 4)), 0.5, tmp_path / "v")
    shutil.copy(pruned.onnx_path, tmp_path / "pruned.onnx")
    shutil.copy(path, tmp_path / "dense.onnx")
    model = {"name": "mine", "path": "pruned.onnx", "eval": str(eval_path), "methods": ["as-is"]}

    def plan(**extra):
        cfg = parse_config({"compare": {"peers": []}, "models": [{**model, **extra}]}, base=tmp_path)
        return plan_jobs(cfg, load_models(cfg))

    dense, asis = plan(dense="dense.onnx")
    assert not dense.force_dense and dense.variant.sha256 != asis.variant.sha256
    assert "the dense row is" in dense.variant.notes[0] and asis.variant.block_str == "2:4"
    dense, asis = plan()
    assert dense.force_dense and dense.variant.sha256 == make_variant("mine", tmp_path / "pruned.onnx", None, 0,
                                                                      tmp_path / "v").sha256
    assert "no dense model given" in dense.variant.notes[0]
    with pytest.raises(HarnessError, match="does not exist"):
        plan(dense="missing.onnx")
    other = onnx.load(str(path))
    other.graph.input[0].name = "other"
    other.graph.node[0].input[0] = "other"
    onnx.save(other, tmp_path / "other.onnx")
    with pytest.raises(HarnessError, match="other inputs or outputs"):
        plan(dense="other.onnx")


def test_channel_cuts_through_a_reshape_after_a_global_pool(tmp_path):
    """PyTorch's ``x.view(x.size(0), -1)`` after the pool: a Reshape to [N, -1] keeps one feature per channel."""
    path, eval_path = zoo.materialize("digits-cnn")
    model = onnx.load(str(path))
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    flat.op_type, flat.input[:] = "Reshape", [flat.input[0], "flat_shape"]
    del flat.attribute[:]
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"))
    onnx.save(model, tmp_path / "reshape.onnx")
    v = make_channel_variant("cnn", tmp_path / "reshape.onnx", 0.5, tmp_path)
    w = _weights(v.onnx_path)
    assert w["fc.weight"].shape == (10, w["pwconv.weight"].shape[0]) and w["pwconv.weight"].shape[0] < 64
    data = np.load(eval_path)
    out, _ = reference_outputs(v.onnx_path, {"x": data["x"][:8]}, 8)
    assert out.shape == (8, 10)
