"""Train ``digits-mlp``: 64 -> 1024 -> 1024 -> 10 on the 8x8 handwritten digits, in numpy.

Data: ``digits.npz`` next to this file holds the 1,797 8x8 images (pixel values 0..16) and labels of the UCI
"Optical Recognition of Handwritten Digits" test set, as shipped by scikit-learn. A seeded 80/20 split: the 20 %
held out is the evaluation set and never seen in training. Hidden layers are 1024 wide so the matmuls dominate.

Run as ``python -m harness.models.zoo.train_digits OUT.onnx OUT_eval.npz``; the zoo calls :func:`train` itself
the first time the model is asked for and caches the result (keyed by this file's hash), so nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).with_name("digits.npz")
HIDDEN = (1024, 1024)
SEED = 0
EPOCHS = 25
BATCH = 64
LR = 1e-3


def load_split(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_eval, y_eval); x scaled to [0, 1] float32, y int64."""
    data = np.load(DATA)
    x = data["x"].astype(np.float32) / 16.0
    y = data["y"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_eval = len(x) // 5
    ev, tr = order[:n_eval], order[n_eval:]
    return x[tr], y[tr], x[ev], y[ev]


def _forward(params, x):
    acts = [x]
    for i, (w, b) in enumerate(params):
        z = acts[-1] @ w.T + b
        acts.append(np.maximum(z, 0.0) if i < len(params) - 1 else z)
    return acts


def train(seed: int = SEED) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, tuple[np.ndarray, np.ndarray]]:
    """Train with Adam on softmax cross-entropy. Returns (layers [(W, b)], held-out accuracy, (x_eval, y_eval))."""
    x_tr, y_tr, x_ev, y_ev = load_split(seed)
    rng = np.random.default_rng(seed)
    sizes = (x_tr.shape[1], *HIDDEN, 10)
    params = [
        (rng.normal(0, np.sqrt(2.0 / k), size=(n, k)).astype(np.float32), np.zeros(n, np.float32))
        for k, n in zip(sizes[:-1], sizes[1:])
    ]
    m = [[np.zeros_like(p) for p in layer] for layer in params]
    v = [[np.zeros_like(p) for p in layer] for layer in params]
    step = 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(x_tr))
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            acts = _forward(params, x_tr[idx])
            logits = acts[-1]
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob /= prob.sum(axis=1, keepdims=True)
            grad = prob
            grad[np.arange(len(idx)), y_tr[idx]] -= 1.0
            grad /= len(idx)
            step += 1
            for i in reversed(range(len(params))):
                w, b = params[i]
                gw, gb = grad.T @ acts[i], grad.sum(axis=0)
                if i:
                    grad = (grad @ w) * (acts[i] > 0)
                for j, (p, g) in enumerate(((w, gw), (b, gb))):
                    m[i][j] = 0.9 * m[i][j] + 0.1 * g
                    v[i][j] = 0.999 * v[i][j] + 0.001 * g * g
                    mhat = m[i][j] / (1 - 0.9**step)
                    vhat = v[i][j] / (1 - 0.999**step)
                    p -= (LR * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
    accuracy = float((_forward(params, x_ev)[-1].argmax(axis=1) == y_ev).mean())
    return params, accuracy, (x_ev, y_ev)


def main(argv: list[str]) -> int:
    from .onnx_build import mlp_onnx
    import onnx

    out_model, out_eval = Path(argv[0]), Path(argv[1])
    params, accuracy, (x_ev, y_ev) = train()
    onnx.save(mlp_onnx(params, name="digits-mlp"), out_model)
    np.savez(out_eval, x=x_ev, y=y_ev)
    print(f"digits-mlp: held-out accuracy {accuracy:.4f} on {len(y_ev)} images -> {out_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
