"""Recovery of a pruned variant's accuracy by fine-tuning, for the models the zoo can train (numpy, no torch).

Two kinds of network have a training path here:

- MLPs: a chain of ``Gemm`` / ``MatMul`` (+ ``Add`` bias) layers with ``Relu`` between them, read from the ONNX graph
  itself (any such graph; only ``digits-mlp`` has labels to train on);
- the digits CNN (``train_cnn.py``'s forward and backward passes).

The training data is ``train_digits.load_split()``'s training part only (the 20 % held out is the evaluation set:
never trained on). Training is seeded and deterministic; its result is cached by content (the dense model, the
method, the level, the settings and this code), so a resumed run gets the same variant without training again.

Schedules (``[sparsify.finetune]``):

- ``gradual`` (Zhu & Gupta 2017): ``steps`` pruning steps evenly spread from the fraction ``start`` to ``end`` of
  the training; step k of n prunes to ``s·(1 − (1 − k/n)³)``, the mask recomputed with the variant's method (the
  masked weights are zero, so they stay pruned) and held fixed until the next step;
- ``oneshot``: pruned to the variant's sparsity first, then fine-tuned with that mask.

N:M fixes its own sparsity, so every step of ``gradual`` is the N:M mask itself. After every optimizer step the
weights are masked again. The result is written through :func:`~harness.sparsify.prune.make_variant`, so the
recovered variant has exactly the method's sparsity pattern and its per-layer records.

PyTorch models of a config (``torch = ...`` with ``data = ...``) are fine-tuned in torch instead, with the same
schedule and mask functions: ``finetune_torch.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import FinetuneConfig, Method
from ..errors import HarnessError
from .prune import Variant, _weight_view, make_variant, prunable_layers, prune_matrix, prune_nm

#: zoo models with labels to train on: name -> kind of network
TRAINABLE = {"digits-mlp": "mlp", "digits-cnn": "cnn"}

_HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class Recovery:
    """A recovered variant: its ONNX (through :class:`Variant`), the held-out accuracy of the one-shot variant and
    of the recovered one (numpy, on the model's evaluation set) and the training time."""

    variant: Variant
    accuracy_oneshot: float
    accuracy: float
    train_s: float  # seconds the training took when it ran (a recovery taken from the cache keeps them)
    record: dict  # the schedule and its settings, per-step sparsities, epochs, samples: the row's recovery record


def training_path(name: str, path: Path | None, torch=None) -> str | None:
    """Why model ``name`` cannot be fine-tuned here, or ``None`` when it can: a zoo model with labels, or a PyTorch
    model (``torch``: its :class:`~harness.config.TorchSpec`) with ``data`` (trained in torch, ``finetune_torch.py``)."""
    if torch is not None:
        if torch.data:
            return None
        return ("it is a PyTorch model without data = \"package.module:loaders\" (no labelled batches to train on); "
                "add data = ... (a function returning (train_loader, eval_loader))")
    if path is not None:
        return "it is a user's ONNX file, and sparsebench trains only the built-in models that have labels"
    if name not in TRAINABLE:
        return "it has no labels to train on (only " + ", ".join(TRAINABLE) + " have)"
    return None


# --- the networks --------------------------------------------------------------------------------------------------

class _Net:
    """A trainable network: parameters in ONNX layout, by initializer name; ``prunable`` lists the weights the
    variant prunes, each with the [N, K] view function."""

    params: dict[str, np.ndarray]

    def logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def grads(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.logits(x).argmax(axis=1) == y).mean())


def _softmax_grad(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    prob[np.arange(len(y)), y] -= 1.0
    return (prob / len(y)).astype(np.float32)


class _Mlp(_Net):
    """Gemm/MatMul(+Add)(+Relu) chain read from the graph: each layer is (weight, transposed, bias or None, relu)."""

    def __init__(self, model):
        from onnx import numpy_helper

        inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer}
        nodes = list(model.graph.node)
        consumers: dict[str, list] = {}
        for node in nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        cur = model.graph.input[0].name
        self.layers: list[tuple[str, bool, str | None, bool]] = []
        self.params = {}
        seen = 0
        while True:
            users = consumers.get(cur, [])
            if not users:
                break
            if len(users) != 1:
                raise HarnessError(f"{cur} feeds {len(users)} nodes: not a chain of layers")
            node = users[0]
            seen += 1
            if node.op_type == "Gemm" and node.input[0] == cur and node.input[1] in inits:
                attrs = {a.name: (a.i if a.type == 2 else a.f) for a in node.attribute}
                if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                    raise HarnessError(f"Gemm {node.name} has transA/alpha/beta")
                bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
                self.layers.append((node.input[1], not attrs.get("transB", 0), bias, False))
            elif node.op_type == "MatMul" and node.input[0] == cur and node.input[1] in inits:
                self.layers.append((node.input[1], True, None, False))
            elif node.op_type == "Add" and self.layers and self.layers[-1][2] is None:
                other = node.input[1] if node.input[0] == cur else node.input[0]
                if other not in inits:
                    raise HarnessError(f"Add {node.name} adds a tensor that is not a constant")
                w, t, _, r = self.layers[-1]
                self.layers[-1] = (w, t, other, r)
            elif node.op_type == "Relu" and self.layers and not self.layers[-1][3]:
                w, t, b, _ = self.layers[-1]
                self.layers[-1] = (w, t, b, True)
            else:
                raise HarnessError(f"{node.op_type} node {node.name or '?'} is not a Gemm/MatMul/Add/Relu layer")
            cur = node.output[0]
        if seen != len(nodes) or not self.layers or cur != model.graph.output[0].name:
            raise HarnessError("the graph is not one chain of Gemm/MatMul(+Add)(+Relu) layers from input to output")
        for w, _, b, _ in self.layers:
            self.params[w] = inits[w]
            if b is not None:
                self.params[b] = inits[b].reshape(-1)

    def _weight(self, layer) -> np.ndarray:
        """[K, N]: y = x @ W."""
        w, transposed, _, _ = layer
        return self.params[w] if transposed else self.params[w].T

    def _forward(self, x):
        acts = [x]
        for layer in self.layers:
            z = acts[-1] @ self._weight(layer)
            if layer[2] is not None:
                z = z + self.params[layer[2]]
            acts.append(np.maximum(z, 0.0) if layer[3] else z)
        return acts

    def logits(self, x):
        return self._forward(x)[-1]

    def grads(self, x, y):
        acts = self._forward(x)
        grad = _softmax_grad(acts[-1], y)
        out = {}
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            w, transposed, b, relu = layer
            if relu:
                grad = grad * (acts[i + 1] > 0)
            gw = acts[i].T @ grad  # [K, N]
            out[w] = gw if transposed else gw.T
            if b is not None:
                out[b] = grad.sum(axis=0)
            if i:
                grad = grad @ self._weight(layer).T
        return out


class _Cnn(_Net):
    """The digits CNN of ``train_cnn.py``, its parameters read from the ONNX initializers of the same names."""

    def __init__(self, model):
        from onnx import numpy_helper

        from ..models.zoo import train_cnn

        self._cnn = train_cnn
        inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer}
        expected = train_cnn.init_params(np.random.default_rng(0))
        missing = [k for k, v in expected.items() if k not in inits or inits[k].shape != v.shape]
        if missing:
            raise HarnessError(f"not the digits CNN (initializer {missing[0]} missing or of another shape)")
        self.params = {k: inits[k] for k in expected}

    def logits(self, x):
        return self._cnn.forward(self.params, x)[0]

    def grads(self, x, y):
        logits, cache = self._cnn.forward(self.params, x)
        return self._cnn.backward(self.params, cache, _softmax_grad(logits, y))


def _data(kind: str, seed: int = 0):
    """(x_train, y_train, x_eval, y_eval) shaped for the network: rows for an MLP, images for the CNN."""
    from ..models.zoo.train_cnn import images
    from ..models.zoo.train_digits import load_split

    x_tr, y_tr, x_ev, y_ev = load_split()
    if kind == "cnn":
        x_tr, x_ev = images(x_tr), images(x_ev)
    return x_tr, y_tr, x_ev, y_ev


def _net(kind: str, model) -> _Net:
    return _Cnn(model) if kind == "cnn" else _Mlp(model)


# --- masks and schedule --------------------------------------------------------------------------------------------

def _mask(view: np.ndarray, method: Method, level: float) -> np.ndarray:
    """Keep-mask of the [N, K] ``view`` pruned with ``method`` to ``level``. Zero weights (pruned before) rank
    lowest; a kept weight that happens to be zero stays kept."""
    filled = np.where(view == 0, np.float32(1e-30), view).astype(np.float32)
    if method.name == "nm":
        return prune_nm(filled, *method.block) != 0
    return prune_matrix(filled, level, method.block if method.name == "block" else (1, 1)) != 0


def schedule_steps(cfg: FinetuneConfig, level: float, total_steps: int) -> list[tuple[int, float]]:
    """(optimizer step at which to prune, sparsity) of every pruning step. ``oneshot``: one step, at 0, to
    ``level``; ``gradual``: ``cfg.steps`` steps spread evenly from ``start`` to ``end`` of the ``total_steps``,
    step k of n to ``level·(1 − (1 − k/n)³)`` (Zhu & Gupta's cubic schedule from 0), the last at ``level``."""
    if cfg.schedule == "oneshot":
        return [(0, level)]
    n = cfg.steps
    t0, t1 = cfg.start * total_steps, cfg.end * total_steps
    out = []
    for k in range(1, n + 1):
        at = t0 if n == 1 else t0 + (k - 1) * (t1 - t0) / (n - 1)
        out.append((int(round(at)), level * (1 - (1 - k / n) ** 3)))
    return out


def _adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step: int, lr: float,
          mask: np.ndarray | None) -> None:
    """One Adam step (β 0.9/0.999, as the zoo trains), in place; the weight masked again after it."""
    m *= 0.9
    m += 0.1 * g
    v *= 0.999
    g2 = g * g
    g2 *= 0.001
    v += g2
    denom = np.sqrt(v)
    denom *= 1.0 / np.sqrt(1 - 0.999**step)
    denom += 1e-8
    update = np.divide(m, denom, out=g2)
    update *= lr / (1 - 0.9**step)
    p -= update
    if mask is not None:
        p *= mask


# --- recovery ------------------------------------------------------------------------------------------------------

def _cache_key(kind: str, dense_sha: str, method: Method, level: float, cfg: FinetuneConfig, prune_first: bool,
               prune_last: bool) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([kind, dense_sha, method.label, level, cfg.to_json(), prune_first, prune_last]).encode())
    from ..models.zoo import train_cnn, train_digits

    for src in (_HERE, _HERE.with_name("prune.py"), Path(train_cnn.__file__), Path(train_digits.__file__),
                Path(train_digits.DATA)):
        digest.update(src.read_bytes())
    return digest.hexdigest()


def _train(kind: str, model, method: Method, level: float, cfg: FinetuneConfig, x_tr, y_tr, prune_first: bool,
           prune_last: bool):
    """(the trained network, its pruning steps, optimizer steps, seconds): pruned with ``method`` to ``level``
    along ``cfg``'s schedule while fine-tuned with Adam on (x_tr, y_tr)."""
    start = time.perf_counter()
    net = _net(kind, model)
    layers = prunable_layers(model)
    pruned: list[tuple[str, object]] = []  # (weight name, its node) of the layers the variant prunes
    for index, (node, name) in enumerate(layers):
        skip = (index == 0 and not prune_first) or (index == len(layers) - 1 and not prune_last)
        if not skip:
            pruned.append((name, node))
    masks: dict[str, np.ndarray] = {}

    def prune_to(sparsity: float) -> None:
        for name, node in pruned:
            view, back = _weight_view(node, name, net.params[name])
            masks[name] = np.ascontiguousarray(back(_mask(view, method, sparsity)), dtype=np.float32)
            net.params[name] *= masks[name]

    rng = np.random.default_rng(cfg.seed)
    batches = -(-len(x_tr) // cfg.batch)
    total = cfg.epochs * batches
    steps = schedule_steps(cfg, level, total)
    pending = list(steps)
    net.params = {k: np.ascontiguousarray(p, dtype=np.float32) for k, p in net.params.items()}
    m = {k: np.zeros_like(p) for k, p in net.params.items()}
    v = {k: np.zeros_like(p) for k, p in net.params.items()}
    step = 0
    for epoch in range(cfg.epochs):
        lr = cfg.lr * 0.5 * (1 + np.cos(np.pi * epoch / cfg.epochs))  # cosine decay, as the zoo trains
        order = rng.permutation(len(x_tr))
        for first in range(0, len(order), cfg.batch):
            while pending and pending[0][0] <= step:
                prune_to(pending.pop(0)[1])
            idx = order[first:first + cfg.batch]
            grads = net.grads(x_tr[idx], y_tr[idx])
            step += 1
            for name, g in grads.items():
                _adam(net.params[name], g.astype(np.float32, copy=False), m[name], v[name], step, lr,
                      masks.get(name))
    while pending:  # a schedule ending at 100 % of the training, or epochs = 0
        prune_to(pending.pop(0)[1])
    return net, steps, total, time.perf_counter() - start


class _one_blas_thread:
    """BLAS on one thread while training: on a loaded 2-core machine a second BLAS thread costs more than it gives,
    and one thread keeps the sums in one order."""

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn, not required
            self._limit = None
            return self
        self._limit = threadpool_limits(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        if self._limit is not None:
            self._limit.restore_original_limits()


def recover(model_name: str, onnx_path: Path, method: Method, level: float, out_dir: Path, cfg: FinetuneConfig, *,
            prune_first: bool = True, prune_last: bool = False, log=None) -> Recovery:
    """Prune the dense model ``onnx_path`` with ``method`` to ``level`` while fine-tuning it (``cfg``), write the
    recovered variant into ``out_dir`` and return it with the accuracies before and after recovery.

    The one-shot accuracy is the plain pruned model's (:func:`make_variant` on the dense weights), on the same
    held-out set. A cached result (same dense model, method, level, settings and code) is returned as it was."""
    import onnx
    from onnx import numpy_helper

    kind = TRAINABLE.get(model_name)
    if kind is None:
        raise HarnessError(f"model {model_name!r}: cannot fine-tune: {training_path(model_name, None)}; set "
                           f"finetune = false for it")
    dense_bytes = Path(onnx_path).read_bytes()
    key = _cache_key(kind, hashlib.sha256(dense_bytes).hexdigest(), method, level, cfg, prune_first, prune_last)
    record_path = out_dir / "recovered" / f"{model_name}-{key[:20]}.json"
    oneshot = make_variant(model_name, onnx_path, method, level, out_dir, prune_first=prune_first,
                           prune_last=prune_last)
    if record_path.is_file():
        saved = json.loads(record_path.read_text())
        weights = out_dir / "recovered" / saved["weights"]
        if weights.is_file():
            variant = make_variant(model_name, weights, method, level, out_dir, prune_first=prune_first,
                                   prune_last=prune_last)
            if variant.sha256 == saved["sha256"]:
                return Recovery(variant, saved["accuracy_oneshot"], saved["accuracy"], saved["train_s"],
                                saved["record"])

    model = onnx.load(str(onnx_path))
    x_tr, y_tr, x_ev, y_ev = _data(kind)
    accuracy_oneshot = _net(kind, onnx.load(str(oneshot.onnx_path))).accuracy(x_ev, y_ev)

    with _one_blas_thread():
        net, steps, total, train_s = _train(kind, model, method, level, cfg, x_tr, y_tr, prune_first, prune_last)

    # the trained weights into the dense graph, then pruned by make_variant: the method's exact pattern (the masked
    # weights are already zero, so this keeps the trained mask) and the variant's per-layer records
    for init in model.graph.initializer:
        if init.name in net.params:
            init.CopyFrom(numpy_helper.from_array(net.params[init.name].reshape(
                numpy_helper.to_array(init).shape).astype(np.float32), init.name))
    folder = out_dir / "recovered"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{model_name}-{key[:20]}.onnx"
    tmp = weights.with_suffix(".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(weights)
    variant = make_variant(model_name, weights, method, level, out_dir, prune_first=prune_first,
                           prune_last=prune_last)
    final = _net(kind, onnx.load(str(variant.onnx_path))).accuracy(x_ev, y_ev)
    record = {"schedule": cfg.schedule, "settings": cfg.to_json(),
              "pruning_steps": [{"step": s, "sparsity": round(float(x), 6)} for s, x in steps],
              "optimizer_steps": total, "train_samples": int(len(x_tr)), "eval_samples": int(len(x_ev)),
              "accuracy_oneshot": accuracy_oneshot, "accuracy": final, "train_s": train_s,
              "oneshot_sha256": oneshot.sha256}
    saved = {"weights": weights.name, "sha256": variant.sha256, "accuracy_oneshot": accuracy_oneshot,
             "accuracy": final, "train_s": train_s, "record": record}
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=1))
    tmp.replace(record_path)
    if log:
        log(f"{variant.key}: fine-tuned in {train_s:.1f} s, accuracy {accuracy_oneshot:.1%} one-shot -> {final:.1%}")
    return Recovery(variant, accuracy_oneshot, final, train_s, record)


def recover_channel(cut: Variant, cfg: FinetuneConfig, out_dir: Path, *, log=None) -> Recovery | None:
    """Fine-tune a channel-pruned model (``cut``: a smaller dense MLP) with the same settings as the sparse variants
    it is compared with, so the channel-vs-sparse comparison holds recovered models on both sides; or ``None`` where
    its network has no training path here (the CNN's trainer is written for the zoo's own channel counts).

    Nothing is pruned during the training (the units are gone already): the weights of every layer train densely.
    The result keeps ``cut``'s layer records, notes and parameter count, and is cached like :func:`recover`."""
    import onnx
    from onnx import numpy_helper

    if TRAINABLE.get(cut.model) != "mlp":
        return None
    cut_bytes = Path(cut.onnx_path).read_bytes()
    key = _cache_key("mlp-channel", hashlib.sha256(cut_bytes).hexdigest(), Method("unstructured"), 0.0, cfg,
                     False, False)
    folder = out_dir / "recovered"
    record_path = folder / f"{cut.model}-channel-{key[:20]}.json"
    if record_path.is_file():
        try:
            saved = json.loads(record_path.read_text())
            path = folder / saved["weights"]
            if hashlib.sha256(path.read_bytes()).hexdigest() == saved["sha256"]:
                return Recovery(replace(cut, onnx_path=path, sha256=saved["sha256"]), saved["accuracy_oneshot"],
                                saved["accuracy"], saved["train_s"], saved["record"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged record: train again
    model = onnx.load(str(cut.onnx_path))
    x_tr, y_tr, x_ev, y_ev = _data("mlp")
    accuracy_oneshot = _net("mlp", model).accuracy(x_ev, y_ev)
    with _one_blas_thread():  # level 0, first and last layer left alone: every mask keeps every weight
        net, _, total, train_s = _train("mlp", model, Method("unstructured"), 0.0, cfg, x_tr, y_tr, False, False)
    for init in model.graph.initializer:
        if init.name in net.params:
            init.CopyFrom(numpy_helper.from_array(net.params[init.name].reshape(
                numpy_helper.to_array(init).shape).astype(np.float32), init.name))
    from .prune import write_model

    path, sha = write_model(model, f"{cut.model}-channel", folder)
    final = _net("mlp", model).accuracy(x_ev, y_ev)
    record = {"schedule": "dense fine-tuning of the channel-pruned model", "settings": cfg.to_json(),
              "optimizer_steps": total, "train_samples": int(len(x_tr)), "eval_samples": int(len(x_ev)),
              "accuracy_oneshot": accuracy_oneshot, "accuracy": final, "train_s": train_s,
              "oneshot_sha256": cut.sha256}
    saved = {"weights": path.name, "sha256": sha, "accuracy_oneshot": accuracy_oneshot, "accuracy": final,
             "train_s": train_s, "record": record}
    tmp = record_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(saved, indent=1))
    tmp.replace(record_path)
    if log:
        log(f"{cut.key}: fine-tuned in {train_s:.1f} s, accuracy {accuracy_oneshot:.1%} cut -> {final:.1%}")
    return Recovery(replace(cut, onnx_path=path, sha256=sha), accuracy_oneshot, final, train_s, record)
