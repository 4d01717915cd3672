"""Build ``tiny-encoder``: one post-norm transformer encoder block (BERT layout) as ONNX, from numpy weights.

The graph is written node by node as ``torch.onnx.export`` writes ``nn.TransformerEncoderLayer``-style code at
opset 17: 3-D ``MatMul`` + ``Add`` for every projection, ``Reshape``/``Transpose`` to heads, ``Div`` by
sqrt(head size), ``Softmax``, GELU as the ``Erf`` formula, ``LayerNormalization``. Weights are seeded random (no
training, no labels): the demo measures its fidelity to the dense build, not an accuracy.
"""

from __future__ import annotations

import numpy as np

SEQ = 32  # tokens per row
D_MODEL = 64
HEADS = 4
D_FF = 256
EPS = 1e-5  # LayerNormalization epsilon (torch's default)


def encoder_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Initializers by name; projection weights are [in, out] (the layout a MatMul's constant input has)."""
    def linear(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.normal(0, 1 / np.sqrt(k), (k, n)), rng.normal(0, 0.02, n)

    w = {}
    for name, (k, n) in {"q": (D_MODEL, D_MODEL), "k": (D_MODEL, D_MODEL), "v": (D_MODEL, D_MODEL),
                         "o": (D_MODEL, D_MODEL), "ffn1": (D_MODEL, D_FF), "ffn2": (D_FF, D_MODEL)}.items():
        w[f"{name}.weight"], w[f"{name}.bias"] = linear(k, n)
    for ln in ("ln1", "ln2"):
        w[f"{ln}.weight"] = 1 + rng.normal(0, 0.1, D_MODEL)
        w[f"{ln}.bias"] = rng.normal(0, 0.1, D_MODEL)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()}


def encoder_reference(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The block in numpy (float64), for tests: x [N, SEQ, D_MODEL] -> [N, SEQ, D_MODEL]."""
    from math import erf

    x = x.astype(np.float64)
    head = D_MODEL // HEADS

    def proj(h, name):
        return h @ w[f"{name}.weight"] + w[f"{name}.bias"]

    def split(h):  # [N, S, D] -> [N, H, S, d]
        return h.reshape(len(h), SEQ, HEADS, head).transpose(0, 2, 1, 3)

    def norm(h, name):
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + EPS) * w[f"{name}.weight"] + w[f"{name}.bias"]

    q, k, v = split(proj(x, "q")), split(proj(x, "k")), split(proj(x, "v"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head)
    prob = np.exp(scores - scores.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    ctx = (prob @ v).transpose(0, 2, 1, 3).reshape(len(x), SEQ, D_MODEL)
    h1 = norm(x + proj(ctx, "o"), "ln1")
    f = proj(h1, "ffn1")
    f = 0.5 * f * (1 + np.vectorize(erf)(f / np.sqrt(2)))
    return norm(h1 + proj(f, "ffn2"), "ln2")


def encoder_onnx(w: dict[str, np.ndarray], name: str = "tiny-encoder") -> "onnx.ModelProto":
    """One encoder block: input ``x`` [N, 32, 64] float32 -> output ``y`` of the same shape, N symbolic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    head = D_MODEL // HEADS
    nodes = []
    consts = {
        "heads_shape": np.array([-1, SEQ, HEADS, head], np.int64),  # -1: the batch, whatever it is at run time
        "model_shape": np.array([-1, SEQ, D_MODEL], np.int64),
        "scale": np.array(np.sqrt(head), np.float32),
        "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
    }

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], name=f"/{out}/{op}", **attrs))
        return out

    def linear(src, layer):
        mm = node("MatMul", [src, f"{layer}.weight"], f"{layer}_mm")
        return node("Add", [mm, f"{layer}.bias"], f"{layer}_out")

    def heads(src, label, perm):
        return node("Transpose", [node("Reshape", [src, "heads_shape"], f"{label}_split")], f"{label}_heads", perm=perm)

    q = heads(linear("x", "q"), "q", [0, 2, 1, 3])  # [N, H, S, d]
    k_t = heads(linear("x", "k"), "k", [0, 2, 3, 1])  # [N, H, d, S]
    v = heads(linear("x", "v"), "v", [0, 2, 1, 3])
    scores = node("Div", [node("MatMul", [q, k_t], "scores"), "scale"], "scores_scaled")
    prob = node("Softmax", [scores], "attn", axis=-1)
    ctx = node("Transpose", [node("MatMul", [prob, v], "ctx_heads")], "ctx_t", perm=[0, 2, 1, 3])
    ctx = node("Reshape", [ctx, "model_shape"], "ctx")
    res1 = node("Add", ["x", linear(ctx, "o")], "res1")
    h1 = node("LayerNormalization", [res1, "ln1.weight", "ln1.bias"], "h1", axis=-1, epsilon=EPS)
    f = linear(h1, "ffn1")
    erf = node("Erf", [node("Div", [f, "sqrt2"], "gelu_div")], "gelu_erf")  # GELU(f) = f * (1 + erf(f/√2)) / 2
    gelu = node("Mul", [node("Mul", [f, node("Add", [erf, "one"], "gelu_add")], "gelu_mul"), "half"], "gelu")
    res2 = node("Add", [h1, linear(gelu, "ffn2")], "res2")
    nodes.append(helper.make_node("LayerNormalization", [res2, "ln2.weight", "ln2.bias"], ["y"], name="/ln2",
                                  axis=-1, epsilon=EPS))

    inits = [numpy_helper.from_array(v, k) for k, v in {**w, **consts}.items()]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SEQ, D_MODEL])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SEQ, D_MODEL])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sparsebench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
