"""The zoo's CNN and transformer encoder block: exported ONNX == numpy maths (onnxruntime), TVM builds them, the
trained CNN is accurate, and pruning sees the layers the demo config means to prune."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from harness.models.zoo import MODELS, encoder_build, materialize, train_cnn


def _ort(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_cnn_onnx_matches_numpy_forward():
    rng = np.random.default_rng(3)
    params = train_cnn.init_params(rng)
    model = train_cnn.cnn_onnx(params)
    for batch in (1, 5):  # the batch dimension is symbolic
        x = rng.normal(size=(batch, 1, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(_ort(model, x), train_cnn.forward(params, x)[0], rtol=1e-5, atol=1e-5)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 4 and "GlobalAveragePool" in ops and ops[-1] == "Gemm"
    depthwise = next(n for n in model.graph.node if n.name == "/dwconv/Conv")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in depthwise.attribute}["group"] == 32


def test_cnn_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    params = {k: v.astype(np.float64) for k, v in train_cnn.init_params(rng).items()}
    x, y = rng.normal(size=(3, 1, 8, 8)), np.array([1, 2, 3])

    def loss(p):
        logits = train_cnn.forward(p, x)[0]
        logits = logits - logits.max(axis=1, keepdims=True)
        return -(logits[np.arange(3), y] - np.log(np.exp(logits).sum(axis=1))).sum()

    logits, cache = train_cnn.forward(params, x)
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    prob[np.arange(3), y] -= 1
    grads = train_cnn.backward(params, cache, prob)
    for name, value in params.items():
        index = tuple(int(rng.integers(0, s)) for s in value.shape)
        plus = {k: v.copy() for k, v in params.items()}
        minus = {k: v.copy() for k, v in params.items()}
        plus[name][index] += 1e-6
        minus[name][index] -= 1e-6
        numeric = (loss(plus) - loss(minus)) / 2e-6
        assert abs(numeric - grads[name][index]) < 1e-6 + 1e-5 * abs(numeric), name


def test_encoder_onnx_matches_numpy_reference():
    rng = np.random.default_rng(5)
    weights = encoder_build.encoder_weights(rng)
    model = encoder_build.encoder_onnx(weights)
    for batch in (1, 3):
        x = rng.normal(size=(batch, encoder_build.SEQ, encoder_build.D_MODEL)).astype(np.float32)
        np.testing.assert_allclose(_ort(model, x), encoder_build.encoder_reference(weights, x), rtol=1e-4, atol=1e-4)
    ops = {n.op_type for n in model.graph.node}
    assert {"Softmax", "LayerNormalization", "Erf", "Transpose", "Reshape"} <= ops


def test_pruning_sees_the_projections_and_convs(tmp_path):
    from harness.config import Method
    from harness.sparsify.prune import make_variant

    enc_path = tmp_path / "enc.onnx"
    onnx.save(encoder_build.encoder_onnx(encoder_build.encoder_weights(np.random.default_rng(0))), enc_path)
    variant = make_variant("tiny-encoder", enc_path, Method("unstructured"), 0.9, tmp_path / "v", prune_last=True)
    # Q, K, V, output projection, FFN in and out; the attention's activation x activation matmuls are not weights
    assert [l.weight for l in variant.layers] == ["q.weight", "k.weight", "v.weight", "o.weight", "ffn1.weight",
                                                 "ffn2.weight"]
    assert all(l.pruned and abs(l.sparsity_actual - 0.9) < 0.01 for l in variant.layers)

    cnn_path = tmp_path / "cnn.onnx"
    onnx.save(train_cnn.cnn_onnx(train_cnn.init_params(np.random.default_rng(0))), cnn_path)
    variant = make_variant("digits-cnn", cnn_path, Method("block", (16, 1)), 0.9, tmp_path / "v", prune_first=False)
    assert [(l.weight, l.shape, l.pruned) for l in variant.layers] == [
        ("conv1.weight", (16, 9), False), ("conv2.weight", (32, 144), True), ("dwconv.weight", (32, 9), True),
        ("pwconv.weight", (64, 32), True), ("fc.weight", (10, 64), False)]


@pytest.mark.parametrize("name", ["tiny-encoder", "digits-cnn"])
def test_tvm_dense_build_matches_onnxruntime(name, tmp_path, monkeypatch):
    """A real compile of the zoo model at batch 1 (our rewrite + TVM's pipeline), run in this process."""
    import tvm
    from tvm import relax

    from harness.compile.cache import ArtifactCache, BuildRequest
    from harness.compile.tvm_adapter import build
    from harness.config import load_target
    from harness.models.inputs import InputSpec

    if name == "digits-cnn":  # untrained weights: the same graph without waiting for training
        model = train_cnn.cnn_onnx(train_cnn.init_params(np.random.default_rng(2)))
        x = np.random.default_rng(4).normal(size=(1, 1, 8, 8)).astype(np.float32)
    else:
        model = onnx.load(str(materialize(name)[0]))
        x = np.load(materialize(name)[1])["x"][:1]
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    profile = load_target("local")
    built = build(BuildRequest(path, name, (InputSpec("x", "float32", x.shape),), profile.tvm_target, "ours",
                               profile.toolchain), ArtifactCache(tmp_path / "artifacts"))
    assert built.error is None, built.error
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(built.artifact)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, _ort(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_digits_cnn_trains_to_95_percent():
    x_ev, y_ev = (np.load(materialize("digits-cnn")[1])[k] for k in ("x", "y"))
    model = onnx.load(str(materialize("digits-cnn")[0]))
    assert x_ev.shape == (359, 1, 8, 8)
    assert (_ort(model, x_ev).argmax(axis=1) == y_ev).mean() >= 0.95


def test_zoo_lists_the_new_models():
    assert {"digits-cnn", "tiny-encoder"} <= set(MODELS)
    assert all(MODELS[n].description for n in MODELS)
