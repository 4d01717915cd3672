"""Recovery by fine-tuning for PyTorch models (``[[models]] torch = ..., data = ...``), in torch.

A sparse variant of a torch model is made from a copy of the dense module: its ``Linear`` / ``Conv`` weights pruned
with the variant's method to its level -- the same [N, K] view as :mod:`harness.sparsify.prune` (a Linear's
[out, in]; a conv's [O, I, kh, kw] as [O, I·kh·kw]) and the same mask functions -- along the
``[sparsify.finetune]`` schedule (``gradual``: Zhu & Gupta's cubic steps, each mask recomputed from the current
weights, the pruned ones ranking lowest; ``oneshot``: pruned first), the masks held by
``torch.nn.utils.prune.custom_from_mask`` while Adam (``lr``, cosine decay over ``epochs``) trains on the train
loader (its own batches: ``batch`` is not used). The first and last layers follow ``prune_first`` / ``prune_last``,
in the exported graph's order.

The accuracy before recovery is the one-shot pruned module's, after it the fine-tuned one's, both over the eval
loader (the evaluation set the rows use). The fine-tuned module is exported with ``torch.onnx.export`` and made a
variant by :func:`~harness.sparsify.prune.make_variant` with the same method and level: its weights already carry the
pattern, so make_variant keeps them as they are (checked) and adds the per-layer records. Results are cached by
content (the dense export, the eval set, method, level, settings, the entry points' files and this code), so a
resumed run does not train again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from ..config import FinetuneConfig, Method, ModelSpec
from ..errors import HarnessError
from ..paths import file_sha256
from .finetune import Recovery, _mask, schedule_steps
from .prune import _weight_view, make_variant, prunable_layers

_HERE = Path(__file__).resolve()


def _prunable_modules(torch, module, onnx_model, example, where: str) -> list[tuple[str, object]]:
    """(qualified name, module) of every Linear/Conv of ``module`` in the order of the exported graph's prunable
    layers (:func:`prunable_layers`): by the initializer names the exporter kept (``fc1.weight``), else by the order
    the forward pass runs them; one line when the two do not match one to one."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    mods = {name: m for name, m in module.named_modules() if isinstance(m, kinds)}
    layers = prunable_layers(onnx_model)
    by_name = [init[:-len(".weight")] for _, init in layers if init.endswith(".weight")]
    if len(by_name) == len(layers) == len(mods) and all(n in mods for n in by_name):
        return [(n, mods[n]) for n in by_name]
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, _o, n=n: order.append(n) if n not in order else None)
             for n, m in mods.items()]
    try:
        with torch.no_grad():
            module.eval()
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx_model.graph.initializer}
    shapes = [tuple(_weight_view(node, init, numpy_helper.to_array(inits[init]))[0].shape) for node, init in layers]
    mine = [(mods[n].weight.shape[0], mods[n].weight[0].numel()) for n in order]
    if len(order) != len(layers) or [tuple(s) for s in mine] != shapes:
        raise HarnessError(f"{where}: cannot fine-tune: the module runs {len(order)} Linear/Conv layers "
                           f"{[list(s) for s in mine]} but its export has {len(layers)} prunable layers "
                           f"{[list(s) for s in shapes]}; set finetune = false for it (its variants stay one-shot)")
    return [(n, mods[n]) for n in order]


def _keep(torch, weight, method: Method, sparsity: float):
    """The keep-mask (float, the weight's shape) of ``weight`` pruned with ``method`` to ``sparsity`` on its [N, K]
    view; zero weights rank lowest."""
    w = weight.detach().cpu().float()
    view = w.reshape(w.shape[0], -1).numpy()
    keep = _mask(view, method, sparsity)
    return torch.from_numpy(np.ascontiguousarray(keep.reshape(tuple(w.shape)), dtype=np.float32))


def _prune_to(torch, pruned, method: Method, sparsity: float) -> None:
    """Masks of every pruned module recomputed at ``sparsity`` from its current (masked) weights and held by
    ``torch.nn.utils.prune.custom_from_mask`` (the previous mask made permanent first)."""
    from torch.nn.utils import prune

    for _, m in pruned:
        mask = _keep(torch, m.weight, method, sparsity)
        if prune.is_pruned(m):
            prune.remove(m, "weight")
        prune.custom_from_mask(m, "weight", mask)


def _settle(pruned) -> None:
    """The masks made permanent: plain weights with their zeros (what is exported)."""
    from torch.nn.utils import prune

    for _, m in pruned:
        if prune.is_pruned(m):
            prune.remove(m, "weight")


def _cache_key(tm, dense_sha: str, method: Method, level: float, cfg: FinetuneConfig, prune_first: bool,
               prune_last: bool, torch_version: str) -> str:
    digest = hashlib.sha256()
    eval_sha = file_sha256(tm.eval_path) if tm.eval_path else ""
    digest.update(json.dumps(["torch", torch_version, dense_sha, eval_sha, tm.spec.build, tm.spec.data,
                              method.label, level, cfg.to_json(), prune_first, prune_last]).encode())
    for src in (_HERE, _HERE.with_name("prune.py"), _HERE.with_name("finetune.py"), *tm.sources):
        digest.update(src.read_bytes())
    return digest.hexdigest()


class _threads:
    """torch on one thread while training (a loaded small machine; one order of sums), restored after."""

    def __init__(self, torch):
        self.torch = torch

    def __enter__(self):
        self.saved = self.torch.get_num_threads()
        self.torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        self.torch.set_num_threads(self.saved)


def _steps_per_epoch(loader) -> int:
    try:
        return len(loader)
    except TypeError:  # an iterable without a length: counted once
        return sum(1 for _ in loader)


def recover_torch(spec: ModelSpec, onnx_path: Path, method: Method, level: float, out_dir: Path,
                  cfg: FinetuneConfig, *, prune_first: bool = True, prune_last: bool = False, log=None) -> Recovery:
    """Prune the torch model of ``spec`` with ``method`` to ``level`` while fine-tuning it (``cfg``), export it and
    return it as a variant of the dense export ``onnx_path`` with the accuracies before and after recovery."""
    import onnx
    import torch
    import torch.nn.functional as F

    from ..models.torch_model import accuracy, export_onnx, load_torch

    where = f"model {spec.name}"
    tm = load_torch(spec)
    if tm.train is None:
        raise HarnessError(f"{where}: cannot fine-tune without data = \"package.module:loaders\"; add it or set "
                           f"finetune = false")
    dense_sha = file_sha256(onnx_path)
    key = _cache_key(tm, dense_sha, method, level, cfg, prune_first, prune_last, torch.__version__)
    folder = out_dir / "recovered"
    record_path = folder / f"{spec.name}-{key[:20]}.json"
    weights = folder / f"{spec.name}-{key[:20]}.onnx"
    prune = {"prune_first": prune_first, "prune_last": prune_last}
    if record_path.is_file() and weights.is_file():
        saved = json.loads(record_path.read_text())
        variant = make_variant(spec.name, weights, method, level, out_dir, **prune)
        if variant.sha256 == saved["sha256"]:
            return Recovery(variant, saved["accuracy_oneshot"], saved["accuracy"], saved["train_s"], saved["record"])

    dense = onnx.load(str(onnx_path))
    layers = _prunable_modules(torch, tm.module, dense, tm.example, where)
    chosen = [name for index, (name, _) in enumerate(layers)
              if not ((index == 0 and not prune_first) or (index == len(layers) - 1 and not prune_last))]
    oneshot_variant = make_variant(spec.name, onnx_path, method, level, out_dir, **prune)

    def pruned_of(module):
        mods = dict(module.named_modules())
        return [(name, mods[name]) for name in chosen]

    # one-shot: the dense module pruned once, not trained
    oneshot = copy.deepcopy(tm.module)
    _prune_to(torch, pruned_of(oneshot), method, level)
    accuracy_oneshot = accuracy(oneshot, tm.eval)
    del oneshot

    net = copy.deepcopy(tm.module)
    pruned = pruned_of(net)
    per_epoch = _steps_per_epoch(tm.train)
    total = cfg.epochs * per_epoch
    steps = schedule_steps(cfg, level, total)
    pending = list(steps)
    samples = 0
    start = time.perf_counter()
    with _threads(torch):
        torch.manual_seed(cfg.seed)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        step = 0
        for epoch in range(cfg.epochs):
            for group in optimizer.param_groups:  # cosine decay, as the zoo trains
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
            net.train()
            for x, y in tm.train:
                while pending and pending[0][0] <= step:
                    _prune_to(torch, pruned, method, pending.pop(0)[1])
                x, y = torch.as_tensor(x), torch.as_tensor(y).long()
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                optimizer.step()
                step += 1
                samples += len(y) if epoch == 0 else 0
        while pending:  # a schedule ending at 100 % of the training, or epochs = 0
            _prune_to(torch, pruned, method, pending.pop(0)[1])
        train_s = time.perf_counter() - start
    final = accuracy(net, tm.eval)
    _settle(pruned)

    export_onnx(net, tm.example, weights, where)
    variant = make_variant(spec.name, weights, method, level, out_dir, **prune)
    kept = _same_weights(weights, variant.onnx_path)
    if not kept and log:
        log(f"{variant.key}: make_variant changed the fine-tuned weights beyond their mask (the layers did not "
            f"match); its accuracy is not the recovered one")
    record = {"framework": "torch", "schedule": cfg.schedule, "settings": cfg.to_json(),
              "pruning_steps": [{"step": s, "sparsity": round(float(x), 6)} for s, x in steps],
              "optimizer_steps": total, "train_samples": samples, "eval_samples": tm.eval_samples,
              "batch": "the train loader's", "masks": "torch.nn.utils.prune.custom_from_mask",
              "layers_pruned": chosen, "pattern_kept": kept,
              "accuracy_oneshot": accuracy_oneshot, "accuracy": final, "train_s": train_s,
              "oneshot_sha256": oneshot_variant.sha256}
    saved = {"weights": weights.name, "sha256": variant.sha256, "accuracy_oneshot": accuracy_oneshot,
             "accuracy": final, "train_s": train_s, "record": record}
    tmp = record_path.with_name(record_path.name + ".tmp")
    tmp.write_text(json.dumps(saved, indent=1))
    tmp.replace(record_path)
    if log:
        log(f"{variant.key}: fine-tuned in {train_s:.1f} s (torch), accuracy {accuracy_oneshot:.1%} one-shot -> "
            f"{final:.1%}")
    return Recovery(variant, accuracy_oneshot, final, train_s, record)


def _same_weights(a: Path, b: Path) -> bool:
    """Whether the two ONNX files have the same initializers (make_variant kept the fine-tuned weights)."""
    import onnx
    from onnx import numpy_helper

    def arrays(path):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    left, right = arrays(a), arrays(b)
    return left.keys() == right.keys() and all(np.array_equal(left[k], right[k]) for k in left)
