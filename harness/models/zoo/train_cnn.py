"""Train ``digits-cnn``: a small convolutional classifier of the 8x8 digits, in numpy (no torch at run time).

Layers (NCHW, float32)::

    x [N, 1, 8, 8] -> conv 3x3 1->16 pad 1 -> ReLU -> conv 3x3 16->32 pad 1 -> ReLU
      -> depthwise 3x3 (32 groups) stride 2 pad 1 -> ReLU   [N, 32, 4, 4]
      -> conv 1x1 32->64 -> ReLU -> global average pool -> flatten -> fc 64->10

so the demo exercises the ops a torchvision-style CNN export has: 3x3, depthwise and 1x1 convolutions with bias,
pooling and a ``Gemm(transB=1)`` head. Data and split are ``train_digits.load_split`` (the same seeded 80/20 split
and held-out evaluation set as ``digits-mlp``). Convolutions are im2col matmuls; training is Adam on softmax
cross-entropy, seeded. Run as ``python -m harness.models.zoo.train_cnn OUT.onnx OUT_eval.npz``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .train_digits import SEED, load_split

EPOCHS = 15
BATCH = 32
LR = 3e-3


@dataclass(frozen=True)
class ConvSpec:
    """One convolution: out/in channels, square kernel size, stride, padding and groups (ONNX Conv attributes)."""

    name: str
    c_out: int
    c_in: int
    k: int
    stride: int = 1
    pad: int = 0
    groups: int = 1


CONVS = (
    ConvSpec("conv1", 16, 1, 3, pad=1),
    ConvSpec("conv2", 32, 16, 3, pad=1),
    ConvSpec("dwconv", 32, 32, 3, stride=2, pad=1, groups=32),
    ConvSpec("pwconv", 64, 32, 1),
)
N_CLASSES = 10


def _patches(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """im2col: [N, C, k*k, Ho, Wo], the input window of every output pixel (zero padded)."""
    n, c, h, w = x.shape
    ho = (h + 2 * spec.pad - spec.k) // spec.stride + 1
    wo = (w + 2 * spec.pad - spec.k) // spec.stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (spec.pad, spec.pad), (spec.pad, spec.pad)))
    s = spec.stride
    return np.stack([xp[:, :, i:i + s * ho:s, j:j + s * wo:s] for i in range(spec.k) for j in range(spec.k)], axis=2)


def _fold(cols: np.ndarray, spec: ConvSpec, shape: tuple[int, ...]) -> np.ndarray:
    """col2im, the adjoint of :func:`_patches`: sums each window's gradient [N, C, k*k, Ho, Wo] back into the
    input's [N, C, H, W]."""
    n, c, h, w = shape
    ho, wo = cols.shape[-2:]
    s, p = spec.stride, spec.pad
    xp = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=cols.dtype)
    for t in range(spec.k * spec.k):
        i, j = divmod(t, spec.k)
        xp[:, :, i:i + s * ho:s, j:j + s * wo:s] += cols[:, :, t]
    return xp[:, :, p:p + h, p:p + w]


def conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, spec: ConvSpec) -> tuple[np.ndarray, np.ndarray]:
    """(y [N, O, Ho, Wo], patches for the backward pass); ``w`` is ONNX's [O, I/groups, k, k]. Grouped
    convolutions are depthwise only (groups == in == out channels), the one kind the model has."""
    cols = _patches(x, spec)  # [N, C, kk, Ho, Wo]
    ho, wo = cols.shape[-2:]
    if spec.groups == 1:
        y = np.einsum("ok,nkp->nop", w.reshape(spec.c_out, -1), cols.reshape(len(x), -1, ho * wo), optimize=True)
        y = y.reshape(len(x), spec.c_out, ho, wo)
    else:  # depthwise: one input channel per output channel
        y = np.einsum("ck,nckhw->nchw", w.reshape(spec.c_out, -1), cols, optimize=True)
    return y + b[None, :, None, None], cols


def conv_backward(dy: np.ndarray, cols: np.ndarray, w: np.ndarray, spec: ConvSpec, x_shape: tuple[int, ...],
                  need_dx: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx or None, dw, db) of :func:`conv_forward` given the output gradient ``dy`` [N, O, Ho, Wo]."""
    n = len(dy)
    db = dy.sum(axis=(0, 2, 3))
    if spec.groups == 1:
        flat_cols = cols.reshape(n, -1, dy.shape[2] * dy.shape[3])  # [N, C*kk, P]
        flat_dy = dy.reshape(n, spec.c_out, -1)  # [N, O, P]
        dw = np.einsum("nop,nkp->ok", flat_dy, flat_cols, optimize=True).reshape(w.shape)
        dx = None
        if need_dx:
            dcols = np.einsum("ok,nop->nkp", w.reshape(spec.c_out, -1), flat_dy, optimize=True)
            dx = _fold(dcols.reshape(cols.shape), spec, x_shape)
    else:
        dw = np.einsum("nchw,nckhw->ck", dy, cols, optimize=True).reshape(w.shape)
        dx = None
        if need_dx:
            dcols = np.einsum("ck,nchw->nckhw", w.reshape(spec.c_out, -1), dy, optimize=True)
            dx = _fold(dcols, spec, x_shape)
    return dx, dw, db


def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-initialised weights in ONNX layout (``<layer>.weight``, ``<layer>.bias``; fc.weight is [10, 64])."""
    params = {}
    for spec in CONVS:
        fan_in = spec.c_in // spec.groups * spec.k * spec.k
        params[f"{spec.name}.weight"] = rng.normal(0, np.sqrt(2.0 / fan_in),
                                                   (spec.c_out, spec.c_in // spec.groups, spec.k, spec.k))
        params[f"{spec.name}.bias"] = np.zeros(spec.c_out)
    c_last = CONVS[-1].c_out
    params["fc.weight"] = rng.normal(0, np.sqrt(1.0 / c_last), (N_CLASSES, c_last))
    params["fc.bias"] = np.zeros(N_CLASSES)
    return {k: v.astype(np.float32) for k, v in params.items()}


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list]:
    """(logits [N, 10], per-layer cache for :func:`backward`) for images ``x`` [N, 1, 8, 8]."""
    cache = []
    h = x
    for spec in CONVS:
        z, cols = conv_forward(h, params[f"{spec.name}.weight"], params[f"{spec.name}.bias"], spec)
        cache.append((h.shape, cols, z))
        h = np.maximum(z, 0.0)
    pooled = h.mean(axis=(2, 3))  # global average pool + flatten: [N, 64]
    cache.append((h.shape, pooled))
    return pooled @ params["fc.weight"].T + params["fc.bias"], cache


def backward(params: dict[str, np.ndarray], cache: list, dlogits: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of every parameter given d(loss)/d(logits) [N, 10]."""
    grads = {}
    act_shape, pooled = cache[-1]
    grads["fc.weight"] = dlogits.T @ pooled
    grads["fc.bias"] = dlogits.sum(axis=0)
    dpooled = dlogits @ params["fc.weight"]
    dh = np.broadcast_to(dpooled[:, :, None, None] / (act_shape[2] * act_shape[3]), act_shape)
    for index in reversed(range(len(CONVS))):
        spec = CONVS[index]
        x_shape, cols, z = cache[index]
        dz = dh * (z > 0)
        dh, grads[f"{spec.name}.weight"], grads[f"{spec.name}.bias"] = conv_backward(
            dz, cols, params[f"{spec.name}.weight"], spec, x_shape, need_dx=index > 0)
    return grads


def images(x_flat: np.ndarray) -> np.ndarray:
    """[N, 64] rows of ``load_split`` -> [N, 1, 8, 8] images."""
    return np.ascontiguousarray(x_flat.reshape(-1, 1, 8, 8), dtype=np.float32)


def train(seed: int = SEED) -> tuple[dict[str, np.ndarray], float, tuple[np.ndarray, np.ndarray]]:
    """Train with Adam on softmax cross-entropy. Returns (params by ONNX initializer name, held-out accuracy,
    (x_eval [359, 1, 8, 8], y_eval))."""
    x_tr, y_tr, x_ev, y_ev = load_split(seed)
    x_tr, x_ev = images(x_tr), images(x_ev)
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    step = 0
    for epoch in range(EPOCHS):
        lr = LR * 0.5 * (1 + np.cos(np.pi * epoch / EPOCHS))  # cosine decay: settles the last epochs
        order = rng.permutation(len(x_tr))
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            logits, cache = forward(params, x_tr[idx])
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob /= prob.sum(axis=1, keepdims=True)
            prob[np.arange(len(idx)), y_tr[idx]] -= 1.0
            grads = backward(params, cache, (prob / len(idx)).astype(np.float32))
            step += 1
            for name, g in grads.items():
                m[name] = 0.9 * m[name] + 0.1 * g
                v[name] = 0.999 * v[name] + 0.001 * g * g
                mhat = m[name] / (1 - 0.9**step)
                vhat = v[name] / (1 - 0.999**step)
                params[name] -= (lr * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
    accuracy = float((forward(params, x_ev)[0].argmax(axis=1) == y_ev).mean())
    return params, accuracy, (x_ev, y_ev)


def cnn_onnx(params: dict[str, np.ndarray], name: str = "digits-cnn") -> "onnx.ModelProto":
    """The network as ``torch.onnx.export`` writes it at opset 17: Conv (with bias; ``group`` for the depthwise),
    Relu, GlobalAveragePool, Flatten, Gemm(transB=1); input ``x`` [N, 1, 8, 8], output ``y`` [N, 10], N symbolic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, cur = [], "x"
    for spec in CONVS:
        out = f"/{spec.name}/Conv_output_0"
        nodes.append(helper.make_node(
            "Conv", [cur, f"{spec.name}.weight", f"{spec.name}.bias"], [out], name=f"/{spec.name}/Conv",
            kernel_shape=[spec.k, spec.k], pads=[spec.pad] * 4, strides=[spec.stride] * 2, dilations=[1, 1],
            group=spec.groups))
        cur = f"/{spec.name}/Relu_output_0"
        nodes.append(helper.make_node("Relu", [out], [cur], name=f"/{spec.name}/Relu"))
    pooled = "/pool/GlobalAveragePool_output_0"
    nodes += [
        helper.make_node("GlobalAveragePool", [cur], [pooled], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", [pooled], ["/Flatten_output_0"], name="/Flatten", axis=1),
        helper.make_node("Gemm", ["/Flatten_output_0", "fc.weight", "fc.bias"], ["y"], name="/fc/Gemm",
                         alpha=1.0, beta=1.0, transB=1),
    ]
    inits = [numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), k) for k, v in params.items()]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", N_CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sparsebench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main(argv: list[str]) -> int:
    import onnx

    out_model, out_eval = Path(argv[0]), Path(argv[1])
    params, accuracy, (x_ev, y_ev) = train()
    onnx.save(cnn_onnx(params), out_model)
    np.savez(out_eval, x=x_ev, y=y_ev)
    print(f"digits-cnn: held-out accuracy {accuracy:.4f} on {len(y_ev)} images -> {out_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
