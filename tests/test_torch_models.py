"""PyTorch models in a config ([[models]] torch = "pkg.mod:build", data = "pkg.mod:loaders"): a small torch MLP on
the digits data through prune -> fine-tune (torch) -> torch.onnx.export -> compile -> run with `sparsebench run`;
the recovery itself (masks kept, the exact pattern in the export, cached); bad entry points and loaders, one line
each, exit 2, before any compile. torch is a test extra: without it this file is skipped."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402
from harness.config import FinetuneConfig, Method, parse_config  # noqa: E402
from harness.errors import EXIT_USAGE  # noqa: E402

#: a tiny package as a user writes one: build() trains a 64-128-128-10 MLP on the digits (seeded, ~1 s) and returns
#: it; loaders() gives the train split shuffled in batches of 32 and the held-out 20 % (359 rows)
NET = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from harness.models.zoo.train_digits import load_split


def _digits():
    x_tr, y_tr, x_ev, y_ev = (torch.from_numpy(a) for a in load_split())
    shuffle = torch.Generator().manual_seed(0)
    return (DataLoader(TensorDataset(x_tr, y_tr), batch_size=32, shuffle=True, generator=shuffle),
            DataLoader(TensorDataset(x_ev, y_ev), batch_size=128))


def loaders():
    return _digits()


def build():
    torch.set_num_threads(1)  # a small net on a loaded 2-core machine: a second thread only waits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    train, _ = _digits()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(6):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval()
'''

#: what the bad packages put instead of build()/loaders() (an untrained build where the loaders are the fault)
UNTRAINED = "def build():\n    return nn.Sequential(nn.Linear(64, 10))\n\n\n"
BAD = {
    "not_a_module": "def build():\n    return 42\n",
    "wrong_shapes": (UNTRAINED + "def loaders():\n"
                     "    x, y = torch.zeros(40, 32), torch.zeros(40, dtype=torch.long)\n"
                     "    batches = DataLoader(TensorDataset(x, y), batch_size=8)\n"
                     "    return batches, batches\n"),
    "three_loaders": UNTRAINED + "def loaders():\n    return [], [], []\n",
}


def _package(folder: Path, name: str, extra: str = "") -> str:
    """``folder/name/net.py`` (NET, then ``extra`` overriding its functions); returns the module path."""
    pkg = folder / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "net.py").write_text(NET + "\n" + extra)
    return f"{name}.net"


def _config(folder: Path, model: str, *, finetune: str = "[sparsify.finetune]\nepochs = 10\n", name="tiny-torch",
            db: Path | None = None) -> Path:
    path = folder / "c.toml"
    path.write_text(textwrap.dedent(f"""
        [run]
        name = "torch"
        target = "local"
        db = "{db or folder / 'r.db'}"
        [sparsify]
        levels = [0, 0.9]
        methods = ["block:16x1"]
        [compare]
        peers = []
        [measure]
        warmup_runs = 2
        warmup_s = 0.01
        min_runs = 20
        min_s = 0.05
        max_ci = 10.0
        max_spread = 10.0
        extend_s = 0.0
        """) + finetune + f'\n[[models]]\nname = "{name}"\n{model}\nbatch = [1]\n')
    return path


def _cli(*args: str, pre: str = "") -> subprocess.CompletedProcess:
    """``sparsebench`` in a fresh process from the checkout (``pre``: Python run before it, e.g. hiding torch)."""
    code = f"import sys\n{pre}\nfrom harness.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))


def _one_line(proc) -> str:
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsebench: error:") and "Traceback" not in proc.stderr, \
        proc.stderr
    return lines[0]


def _nothing_run(db: Path) -> None:
    """Refused before any compile: no run in the store (it may exist, empty: the models load after it opens)."""
    if db.exists():
        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_torch_model_prune_finetune_export_compile_run(tmp_path):
    """The issue's demonstration: the torch MLP at 90 % block 16x1 with [sparsify.finetune] through `sparsebench run`
    on this machine: dense and recovered rows measured (not ERROR), the recovered accuracy above the one-shot one,
    the training time recorded, the pattern in the export as make_variant makes it."""
    module = _package(tmp_path, "tinymlp")
    db, out = tmp_path / "r.db", tmp_path / "report"
    cfg = _config(tmp_path, f'torch = "{module}:build"\ndata = "{module}:loaders"', db=db)
    proc = _cli("run", str(cfg), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tiny-torch/block-16x1/0.9: fine-tuned in" in proc.stderr, proc.stderr[-3000:]
    with open(out / "results.csv") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"dense", "block"}
    assert all(r["verdict"] in ("VALID", "INVALID") for r in rows.values()), rows
    dense, sparse = rows["dense"], rows["block"]
    print("\n" + "\n".join(line for line in proc.stderr.splitlines() if "fine-tuned" in line or "run " in line))
    print(f"dense {dense['accuracy']}, 90 % block 16x1: one-shot {sparse['accuracy_oneshot']} -> recovered "
          f"{sparse['accuracy']} in {sparse['finetune_s']} s")
    assert float(dense["accuracy"]) > 0.9  # build() trained it: the eval set's labels are the digits'
    assert float(sparse["accuracy_oneshot"]) < float(sparse["accuracy"])
    assert float(sparse["accuracy"]) > 0.75
    assert float(sparse["finetune_s"]) > 0 and dense["finetune_s"] == ""
    assert float(sparse["sparsity_actual"]) > 0.8  # two of three layers at 90 % (prune_last = false)
    (recovery,) = sqlite3.connect(db).execute("SELECT recovery_json FROM results WHERE method='block'").fetchone()
    recovery = json.loads(recovery)
    assert recovery["framework"] == "torch" and recovery["pattern_kept"], recovery
    assert recovery["layers_pruned"] == ["0", "2"] and recovery["pruning_steps"][-1]["sparsity"] == 0.9
    # the compiled variant on the device scores what the fine-tuned module scored in torch (same eval set)
    assert float(sparse["accuracy"]) == pytest.approx(recovery["accuracy"], abs=1.5 / 359)
    assert float(sparse["accuracy_oneshot"]) == pytest.approx(recovery["accuracy_oneshot"])


def test_recover_torch_masks_pattern_and_cache(tmp_path, monkeypatch):
    """In process: the dense export (batch dynamic) and the eval set from the loader; a one-shot-schedule recovery
    at 80 % unstructured keeps its mask through training, the export keeps the pattern, and a second call is the
    cached result (no training)."""
    import onnx
    from onnx import numpy_helper

    from harness.models.torch_model import load_torch
    from harness.sparsify.finetune_torch import recover_torch

    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    module = _package(tmp_path, "tinymlp_inproc")
    cfg = parse_config({"models": [{"name": "tiny", "torch": f"{module}:build", "data": f"{module}:loaders",
                                    "finetune": {"epochs": 2, "schedule": "oneshot"}}]}, base=tmp_path)
    (spec,) = cfg.models
    tm = load_torch(spec)
    graph = onnx.load(str(tm.onnx_path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch is dynamic
    ev = np.load(tm.eval_path)
    assert ev["input"].shape == (359, 64) and ev["y"].shape == (359,)
    settings = FinetuneConfig(epochs=2, schedule="oneshot")
    rec = recover_torch(spec, tm.onnx_path, Method("unstructured"), 0.8, tmp_path / "variants", settings)
    assert rec.record["pattern_kept"] and rec.record["layers_pruned"] == ["0", "2"]
    assert rec.accuracy_oneshot < rec.accuracy and rec.train_s > 0
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(rec.variant.onnx_path)).graph.initializer}
    assert [layer.pruned for layer in rec.variant.layers] == [True, True, False]
    for layer in rec.variant.layers[:2]:
        assert (weights[layer.weight] == 0).mean() == pytest.approx(0.8, abs=0.01)
    again = recover_torch(spec, tm.onnx_path, Method("unstructured"), 0.8, tmp_path / "variants", settings)
    assert again.variant.sha256 == rec.variant.sha256 and again.train_s == rec.train_s


#: a CNN with batch norm (folded into the convs by the exporter, which renames their weights): the layers are matched
#: to the graph's by the order the forward pass runs them
CNN = '''

def _images():
    train, evaluation = _digits()
    return [[(x.reshape(-1, 1, 8, 8), y) for x, y in loader] for loader in (train, evaluation)]


def loaders():
    return _images()


def build():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(2):
        for x, y in _images()[0]:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval()
'''


def test_recover_torch_cnn_with_batch_norm(tmp_path, monkeypatch):
    """Conv2d weights pruned on their [O, I·kh·kw] view (16x1 blocks: 16 output channels), batch norm folded into
    the exported convs: the pattern survives the folding and make_variant keeps it; prune_first = false leaves the
    first conv dense (loaders may be plain lists of (x, y) batches)."""
    import onnx
    from onnx import numpy_helper

    from harness.models.torch_model import load_torch
    from harness.sparsify.finetune_torch import recover_torch

    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    module = _package(tmp_path, "tinycnn", CNN)
    (spec,) = parse_config({"models": [{"name": "cnn", "torch": f"{module}:build", "data": f"{module}:loaders"}]},
                           base=tmp_path).models
    tm = load_torch(spec)
    rec = recover_torch(spec, tm.onnx_path, Method("block", (16, 1)), 0.8, tmp_path / "variants",
                        FinetuneConfig(epochs=2), prune_first=False)
    assert rec.record["pattern_kept"] and rec.record["layers_pruned"] == ["3"], rec.record
    assert rec.accuracy_oneshot < rec.accuracy
    assert [layer.pruned for layer in rec.variant.layers] == [False, True, False]
    conv = rec.variant.layers[1]
    assert conv.shape == (32, 144) and conv.node_op == "Conv 3×3"
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(rec.variant.onnx_path)).graph.initializer}
    view = weights[conv.weight].reshape(32, 144)
    blocks = (view.reshape(2, 16, 144) != 0).any(axis=1)  # 16x1 blocks: all zero or kept
    assert (view != 0).sum() == blocks.sum() * 16 and 1 - blocks.mean() == pytest.approx(0.8, abs=0.01)


# case -> (how the package is built: extra code and the [[models]] lines, what the one line says)
FAULTS = {
    "does-not-import": ("", 'torch = "nosuchpkg.net:build"\ndata = "nosuchpkg.net:loaders"',
                        "model tiny-torch: torch = 'nosuchpkg.net:build': cannot import nosuchpkg.net"),
    "not-a-module": (BAD["not_a_module"], 'torch = "{m}:build"\ndata = "{m}:loaders"',
                     "returned a value of type int, not a torch.nn.Module"),
    "wrong-shapes": (BAD["wrong_shapes"], 'torch = "{m}:build"\ndata = "{m}:loaders"',
                     "the module fails on the eval loader's first batch (x [8, 32]"),
    "not-two-loaders": (BAD["three_loaders"], 'torch = "{m}:build"\ndata = "{m}:loaders"',
                        "returned a tuple of 3; return (train_loader, eval_loader)"),
    "no-data-finetune": ("", 'torch = "{m}:build"\nexample_input = [1, 64]',
                         "finetune is on but tiny-torch cannot be fine-tuned: it is a PyTorch model without data"),
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_bad_torch_models_are_one_line(tmp_path, case):
    extra, lines, says = FAULTS[case]
    module = _package(tmp_path, "bad_" + case.replace("-", "_"), extra)
    finetune = "" if case == "no-data-finetune" else "[sparsify.finetune]\nepochs = 1\n"
    lines = lines.format(m=module) + ("\nfinetune = true" if case == "no-data-finetune" else "")
    cfg = _config(tmp_path, lines, finetune=finetune)
    line = _one_line(_cli("run", str(cfg), "--no-progress"))
    assert says in line, line
    _nothing_run(tmp_path / "r.db")


def test_without_torch_the_config_says_how_to_install(tmp_path):
    module = _package(tmp_path, "tinymlp_notorch")
    cfg = _config(tmp_path, f'torch = "{module}:build"\ndata = "{module}:loaders"')
    line = _one_line(_cli("run", str(cfg), "--no-progress", pre="sys.modules['torch'] = None"))
    assert "needs PyTorch, which is not installed here; pip install 'sparsebench[torch]'" in line, line
    assert not (tmp_path / "r.db").exists()


def test_torch_model_without_data_exports_at_example_input(tmp_path, monkeypatch):
    """No data: exported at example_input (batch dynamic), no evaluation set (made-up inputs, as for an ONNX model
    without eval); its variants stay one-shot. An example_input that does not fit the loaders is one line."""
    from harness.errors import HarnessError
    from harness.models.onnx_io import load_model
    from harness.models.torch_model import load_torch

    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    module = _package(tmp_path, "tinymlp_nodata", UNTRAINED)
    (spec,) = parse_config({"models": [{"name": "nodata", "torch": f"{module}:build", "example_input": [1, 64]}]},
                           base=tmp_path).models
    tm = load_torch(spec)
    assert tm.eval_path is None and tm.train is None and list(tm.example.shape) == [1, 64]
    model = load_model("nodata", tm.onnx_path, None)
    assert model.eval_y is None and model.shapes_for_batch(4)[0].shape == (4, 64)
    (spec,) = parse_config({"models": [{"name": "mismatch", "torch": f"{module}:build", "data": f"{module}:loaders",
                                        "example_input": [1, 32]}]}, base=tmp_path).models
    with pytest.raises(HarnessError, match=r"example_input = \[1, 32\] but the eval loader's x is \[128, 64\]"):
        load_torch(spec)
