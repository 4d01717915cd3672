"""``sparsebench recovery``: one-shot vs recovered accuracy of the zoo models that have labels, with the training
time, and the accuracy targets of recovery, into a JSON document.

Nothing is compiled or measured on a device: it is the pruning and training side only (numpy, on this machine).
Every variant is trained afresh (a temporary variant cache), so the training seconds are this machine's now.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import FinetuneConfig, parse_method


@dataclass(frozen=True)
class Suite:
    models: tuple[str, ...]
    methods: tuple[str, ...]
    levels: tuple[float, ...]


FULL = Suite(("digits-mlp", "digits-cnn"), ("unstructured", "block:16x1"), (0.5, 0.8, 0.9))
QUICK = Suite(("digits-mlp",), ("unstructured", "block:16x1"), (0.9,))

#: (model, method, level, the least recovered accuracy): the issue's targets on the built-in digits MLP
TARGETS = (("digits-mlp", "block:16x1", 0.9, 0.95), ("digits-mlp", "unstructured", 0.9, 0.97))

#: how each model is pruned, as the demo prunes it (classifier heads dense; the CNN's first conv too)
PRUNE = {"digits-mlp": {"prune_first": True, "prune_last": False},
         "digits-cnn": {"prune_first": False, "prune_last": False}}
#: each model's settings over the default [sparsify.finetune] ones, as in the demo configs: the CNN is cheap to
#: train and needs longer (as train_cnn.py trains it: batch 32, lr 3e-3)
SETTINGS = {"digits-mlp": {}, "digits-cnn": {"epochs": 30, "lr": 0.003, "batch": 32}}


def _dense_accuracy(name: str, onnx_path: Path) -> float:
    import onnx

    from .finetune import TRAINABLE, _data, _net

    kind = TRAINABLE[name]
    _, _, x_ev, y_ev = _data(kind)
    return _net(kind, onnx.load(str(onnx_path))).accuracy(x_ev, y_ev)


def recovery_suite(suite: Suite, cfg: FinetuneConfig | None = None, log=None) -> dict:
    """Every (model, method, level) of ``suite`` pruned one-shot and recovered with ``cfg`` (default settings; a
    model's :data:`SETTINGS` over them):
    the document written by ``sparsebench recovery --json``."""
    from ..models import zoo
    from .finetune import recover

    cfg = cfg or FinetuneConfig()
    records = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsebench-recovery-") as tmp:
        for name in suite.models:
            onnx_path, _ = zoo.materialize(name)
            dense = _dense_accuracy(name, onnx_path)
            for label in suite.methods:
                for level in suite.levels:
                    method = parse_method(label)
                    model_cfg = replace(cfg, **SETTINGS.get(name, {}))
                    rec = recover(name, onnx_path, method, level, Path(tmp), model_cfg, **PRUNE[name])
                    record = {"model": name, "method": label, "sparsity_target": level,
                              "sparsity_actual": round(rec.variant.sparsity_actual, 6), "accuracy_dense": dense,
                              "accuracy_oneshot": rec.accuracy_oneshot, "accuracy_recovered": rec.accuracy,
                              "train_s": round(rec.train_s, 3), "settings": model_cfg.to_json(), **PRUNE[name]}
                    records.append(record)
                    if log:
                        log(f"{name} {label} {level:g}: one-shot {rec.accuracy_oneshot:.1%} -> recovered "
                            f"{rec.accuracy:.1%} in {rec.train_s:.1f} s")
    targets = []
    for name, label, level, least in TARGETS:
        found = next((r for r in records if (r["model"], r["method"], r["sparsity_target"]) == (name, label, level)),
                     None)
        if found is not None:
            targets.append({"model": name, "method": label, "sparsity": level, "min_accuracy": least,
                            "accuracy": found["accuracy_recovered"], "pass": found["accuracy_recovered"] >= least})
    return {
        "benchmark": "recovery",
        "settings": cfg.to_json(),
        "host": {"hostname": platform.node(), "machine": platform.machine(), "python": platform.python_version()},
        "records": records,
        "targets": targets,
        "all_pass": all(t["pass"] for t in targets),
        "total_s": round(time.perf_counter() - started, 1),
    }


def format_table(doc: dict) -> str:
    """The records as a text table, then the targets with PASS/FAIL."""
    lines = [f"{'model':11s} {'method':13s} {'level':>5s} {'dense':>7s} {'one-shot':>8s} {'recovered':>9s} "
             f"{'train s':>7s}"]
    for r in doc["records"]:
        lines.append(f"{r['model']:11s} {r['method']:13s} {r['sparsity_target']:5.0%} {r['accuracy_dense']:7.1%} "
                     f"{r['accuracy_oneshot']:8.1%} {r['accuracy_recovered']:9.1%} {r['train_s']:7.1f}")
    for t in doc["targets"]:
        lines.append(f"target {t['model']} {t['method']} at {t['sparsity']:.0%}: >= {t['min_accuracy']:.0%}, got "
                     f"{t['accuracy']:.1%}: {'PASS' if t['pass'] else 'FAIL'}")
    return "\n".join(lines)
