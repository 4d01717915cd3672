"""The built-in zoo: small models made here (no downloads), each with its evaluation set.

``materialize(name)`` returns the ONNX file and ``.npz`` evaluation set, building them the first time into the
cache. The cache key hashes the builder's source, so editing a builder rebuilds its model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...paths import cache_dir

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ZooModel:
    """A built-in model: ``build(onnx_path, eval_path)`` writes both files."""

    name: str
    description: str
    build: Callable[[Path, Path], None]
    sources: tuple[str, ...]  # files whose content defines the model (hashed into the cache key)


def _build_digits(onnx_path: Path, eval_path: Path) -> None:
    import onnx

    from .onnx_build import mlp_onnx
    from .train_digits import train

    params, _accuracy, (x_ev, y_ev) = train()
    onnx.save(mlp_onnx(params, name="digits-mlp"), onnx_path)
    np.savez(eval_path, x=x_ev, y=y_ev)


FFN_SEED = 768


def _build_ffn(onnx_path: Path, eval_path: Path) -> None:
    """Transformer feed-forward block 768 -> 3072 -> ReLU -> 768, seeded random weights; no labels."""
    import onnx

    from .onnx_build import mlp_onnx

    rng = np.random.default_rng(FFN_SEED)
    d, h = 768, 3072
    layers = [
        (rng.normal(0, 1 / np.sqrt(d), (h, d)), rng.normal(0, 0.02, h)),
        (rng.normal(0, 1 / np.sqrt(h), (d, h)), rng.normal(0, 0.02, d)),
    ]
    onnx.save(mlp_onnx(layers, name="ffn-768"), onnx_path)
    np.savez(eval_path, x=rng.normal(0, 1, (64, d)).astype(np.float32))


def _build_cnn(onnx_path: Path, eval_path: Path) -> None:
    import onnx

    from .train_cnn import cnn_onnx, train

    params, _accuracy, (x_ev, y_ev) = train()
    onnx.save(cnn_onnx(params, name="digits-cnn"), onnx_path)
    np.savez(eval_path, x=x_ev, y=y_ev)


ENCODER_SEED = 64
ENCODER_EVAL_ROWS = 16  # random sequences: enough for a fidelity figure, few enough to run at batch 1 quickly


def _build_encoder(onnx_path: Path, eval_path: Path) -> None:
    """One transformer encoder block (d 64, 4 heads, FFN 256, 32 tokens), seeded random weights; no labels."""
    import onnx

    from .encoder_build import D_MODEL, SEQ, encoder_onnx, encoder_weights

    rng = np.random.default_rng(ENCODER_SEED)
    onnx.save(encoder_onnx(encoder_weights(rng), name="tiny-encoder"), onnx_path)
    np.savez(eval_path, x=rng.normal(0, 1, (ENCODER_EVAL_ROWS, SEQ, D_MODEL)).astype(np.float32))


MODELS: dict[str, ZooModel] = {
    "digits-mlp": ZooModel(
        "digits-mlp", "8x8 handwritten digits classifier, 64-1024-1024-10 MLP trained here; 359 held-out images",
        _build_digits, ("train_digits.py", "onnx_build.py", "digits.npz"),
    ),
    "ffn-768": ZooModel(
        "ffn-768", "transformer feed-forward block 768-3072-768 (ReLU), seeded random weights, 64 random inputs",
        _build_ffn, ("onnx_build.py",),
    ),
    "digits-cnn": ZooModel(
        "digits-cnn", "8x8 digits CNN trained here: 3x3 convs 1-16-32, depthwise 3x3 stride 2, 1x1 conv to 64, "
        "global average pool, fc 64-10; the digits-mlp split, 359 held-out images",
        _build_cnn, ("train_cnn.py", "train_digits.py", "digits.npz"),
    ),
    "tiny-encoder": ZooModel(
        "tiny-encoder", "one transformer encoder block (32 tokens, d 64, 4 heads, GELU FFN 256, layer norms), "
        "seeded random weights, 16 random inputs",
        _build_encoder, ("encoder_build.py",),
    ),
}


def materialize(name: str) -> tuple[Path, Path]:
    """(onnx path, eval ``.npz`` path) of zoo model ``name``, building it into the cache on first use."""
    model = MODELS[name]
    digest = hashlib.sha256(name.encode())
    digest.update(Path(__file__).read_bytes())
    for src in model.sources:
        digest.update((_HERE / src).read_bytes())
    folder = cache_dir() / "zoo"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{digest.hexdigest()[:12]}"
    onnx_path, eval_path = folder / f"{stem}.onnx", folder / f"{stem}.npz"
    if not (onnx_path.exists() and eval_path.exists()):
        # Build into temporary names and rename, so an interrupted build never leaves a half-written model.
        tmp_onnx, tmp_eval = folder / f".{stem}.tmp.onnx", folder / f".{stem}.tmp.npz"
        model.build(tmp_onnx, tmp_eval)
        tmp_eval.replace(eval_path)
        tmp_onnx.replace(onnx_path)
    return onnx_path, eval_path
