"""Models exported the way people bring them, made here with random init (no downloads): torchvision networks and
a BERT-style encoder through ``torch.onnx.export``, a scikit-learn MLP through skl2onnx.

torch, torchvision, scikit-learn and skl2onnx are optional: each builder imports what it needs, and
:func:`missing` says which of a builder's packages are absent, so a caller can skip it with a reason.
Every builder writes the ONNX file and an ``.npz`` evaluation set (one array per model input, by input name)
and returns both paths.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

#: what the torch exporter is asked to use: "legacy" (TorchScript, ``dynamo=False``) or "default" (what
#: ``torch.onnx.export`` does without the argument: the dynamo exporter in torch >= 2.9)
EXPORTERS = ("default", "legacy")


def missing(*modules: str) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _export(module, args: tuple, path: Path, input_names: list[str], output_names: list[str], exporter: str) -> Path:
    """``torch.onnx.export`` of ``module`` in eval mode at the example ``args`` (fixed shapes: batch 1 as the
    default export gives). The dynamo exporter prints progress and warnings: kept out of the caller's output."""
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    module.eval()
    options = {"dynamo": False} if exporter == "legacy" else {}
    with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          opset_version=17 if exporter == "legacy" else None, external_data=False, **options)
    return path


def _image_eval(path: Path, size: int, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, input=rng.normal(0, 1, (n, 3, size, size)).astype(np.float32))
    return path


def small_cnn_module(classes: int = 10, seed: int = 0):
    """A small torchvision-style CNN built from torchvision's own blocks, random init: stem conv 3x3 + BN + ReLU,
    max pool, a ResNet ``BasicBlock`` (3x3 convs), a strided ``BasicBlock`` with a 1x1 conv downsample, a
    MobileNetV2 ``InvertedResidual`` (1x1 expand, depthwise 3x3, ReLU6, 1x1 project), global average pool,
    Linear. Widths 16-32-48 for a 32x32 input."""
    import torch
    from torch import nn
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock
    from torchvision.ops.misc import Conv2dNormActivation

    torch.manual_seed(seed)
    downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    net = nn.Sequential(
        Conv2dNormActivation(3, 16, kernel_size=3, activation_layer=nn.ReLU),
        nn.MaxPool2d(3, stride=2, padding=1),  # 32 -> 16
        BasicBlock(16, 16),
        BasicBlock(16, 32, stride=2, downsample=downsample),  # 16 -> 8
        InvertedResidual(32, 48, stride=1, expand_ratio=4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, classes),
    )
    _randomize_bn(net, seed)
    return net.eval()


def _randomize_bn(net, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics (a fresh BN is the identity in eval mode, which would let an
    exporter or compiler bug in folding it go unseen)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def small_cnn(folder: Path, *, size: int = 32, n_eval: int = 8, exporter: str = "default",
              seed: int = 0) -> tuple[Path, Path]:
    """:func:`small_cnn_module` exported at [1, 3, size, size] (``input`` -> ``logits``), plus ``n_eval`` random
    images."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, size, size)
    onnx_path = _export(small_cnn_module(seed=seed), (x,), folder / f"small-cnn-{exporter}.onnx", ["input"],
                        ["logits"], exporter)
    return onnx_path, _image_eval(folder / "small-cnn.npz", size, n_eval, seed + 1)


def torchvision_model(name: str, folder: Path, *, size: int = 224, n_eval: int = 2, exporter: str = "default",
                      seed: int = 0) -> tuple[Path, Path]:
    """A torchvision classifier (``resnet18``, ``mobilenet_v2``, ...) with random init (``weights=None``: nothing
    downloaded), BN statistics randomised, exported at [1, 3, size, size]."""
    import torch
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = torchvision.models.get_model(name, weights=None)
    _randomize_bn(net, seed)
    onnx_path = _export(net, (torch.randn(1, 3, size, size),), folder / f"{name}-{size}-{exporter}.onnx", ["input"],
                        ["logits"], exporter)
    return onnx_path, _image_eval(folder / f"{name}-{size}.npz", size, n_eval, seed + 1)


def bert_module(*, vocab: int = 1000, hidden: int = 64, layers: int = 2, heads: int = 2, ffn: int | None = None,
                max_positions: int = 512, seed: int = 0):
    """A BERT-style encoder as a torch module: forward(input_ids, attention_mask) (int64 [batch, seq]) ->
    last hidden state [batch, seq, hidden].

    Token + position embeddings and LayerNorm; per layer multi-head self-attention with the additive mask built
    the way Hugging Face builds it (``(1 - mask) * finfo(float32).min`` broadcast over [batch, 1, 1, seq]), softmax,
    output projection, residual + LayerNorm, GELU FFN (``ffn`` = 4 x hidden by default), residual + LayerNorm.
    """
    import torch
    from torch import nn

    ffn = ffn or 4 * hidden

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
            self.out, self.ln1 = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=1e-12)
            self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
            self.ln2 = nn.LayerNorm(hidden, eps=1e-12)

        def heads(self, x):
            b, s, _ = x.shape
            return x.view(b, s, heads, hidden // heads).transpose(1, 2)  # [b, heads, s, d]

        def forward(self, x, bias):
            q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
            scores = q @ k.transpose(-1, -2) / (hidden // heads) ** 0.5 + bias
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
            x = self.ln1(x + self.out(ctx))
            return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(max_positions, hidden)
            self.ln = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, input_ids, attention_mask):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = self.ln(self.tokens(input_ids) + self.positions(positions))
            mask = attention_mask[:, None, None, :].to(x.dtype)
            bias = (1.0 - mask) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, bias)
            return x

    torch.manual_seed(seed)
    return Encoder().eval()


def bert_encoder(folder: Path, *, seq: int = 16, hidden: int = 64, layers: int = 2, heads: int = 2,
                 vocab: int = 1000, n_eval: int = 4, exporter: str = "default", seed: int = 0) -> tuple[Path, Path]:
    """:func:`bert_module` exported at batch 1 and ``seq`` tokens: inputs ``input_ids``, ``attention_mask`` (int64
    [1, seq]), output ``last_hidden_state``; evaluation rows with ids in range and masks of 1..seq leading ones."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    net = bert_module(vocab=vocab, hidden=hidden, layers=layers, heads=heads, max_positions=max(seq, 16), seed=seed)
    ids, mask = torch.randint(0, vocab, (1, seq)), torch.ones(1, seq, dtype=torch.int64)
    name = f"bert-{layers}x{hidden}-s{seq}-{exporter}"
    onnx_path = _export(net, (ids, mask), folder / f"{name}.onnx", ["input_ids", "attention_mask"],
                        ["last_hidden_state"], exporter)
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(1, seq + 1, n_eval)
    eval_path = folder / f"{name}.npz"
    np.savez(eval_path, input_ids=rng.integers(0, vocab, (n_eval, seq)).astype(np.int64),
             attention_mask=(np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64))
    return onnx_path, eval_path


def sklearn_mlp(folder: Path, *, features: int = 8, hidden: tuple[int, ...] = (32,), zipmap: bool = False,
                seed: int = 0) -> tuple[Path, Path]:
    """An ``MLPClassifier`` (``features`` inputs, 3 classes) trained here on a seeded toy task and exported by
    skl2onnx with its ``label`` and ``probabilities`` outputs (``zipmap=True``: skl2onnx's default
    ``output_label`` and a ``ZipMap`` of ``output_probability``), and an evaluation set ``x``/``y`` of 30
    held-out rows. TVM compiles only the probabilities: keep ``outputs = ["probabilities"]``."""
    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (150, features)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=seed).fit(x[:120], y[:120])
    options = None if zipmap else {id(clf): {"zipmap": False}}
    model = to_onnx(clf, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    stem = "mlp-zipmap" if zipmap else ("mlp" if hidden == (32,) and features == 8 else
                                        f"mlp-{features}-{'-'.join(map(str, hidden))}")
    onnx_path = folder / f"{stem}.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    eval_path = folder / ("mlp.npz" if stem in ("mlp", "mlp-zipmap") else f"{stem}.npz")
    np.savez(eval_path, x=x[120:], y=y[120:])
    return onnx_path, eval_path
