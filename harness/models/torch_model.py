"""PyTorch models in a config: ``[[models]] torch = "package.module:build"`` (a function returning the
``torch.nn.Module``), ``data = "package.module:loaders"`` (a function returning ``(train_loader, eval_loader)``, each
an iterable of ``(x, y)`` batches: x the input [batch, ...], y integer class labels [batch]) and ``example_input``
(the input's shape, batch first; else the first eval batch's).

When the models are loaded -- before anything is compiled -- the entry points are imported (the config's folder on
``sys.path`` meanwhile) and called, the module and the loaders checked (one line each, naming the entry point and
the fix), the dense module exported with ``torch.onnx.export`` (the TorchScript exporter, opset 17, the batch
dimension dynamic; input ``input``, output ``output``) into the cache, keyed by content, and the eval loader written
as the evaluation set (``input`` and the labels ``y``). From there the model is an ONNX model like any other;
its sparse variants may be fine-tuned in torch (``harness/sparsify/finetune_torch.py``).

torch is an optional extra (``pip install 'sparsebench[torch]'``): imported here only.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import sys
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TORCH_INSTALL, ModelSpec, TorchSpec
from ..errors import HarnessError
from ..paths import cache_dir

INPUT, OUTPUT = "input", "output"
OPSET = 17
_HERE = Path(__file__).resolve()


@dataclass
class TorchModel:
    """A loaded PyTorch model: the dense module as ``build()`` returned it (never trained here: fine-tuning works on
    copies), its loaders, and its ONNX export and evaluation set on disk."""

    name: str
    spec: TorchSpec
    module: Any  # torch.nn.Module, in eval mode
    train: Any | None  # the train loader (None without data)
    eval: Any | None  # the eval loader
    example: Any  # torch.Tensor: the input exported at (batch 1)
    onnx_path: Path
    eval_path: Path | None
    eval_samples: int = 0
    sources: tuple[Path, ...] = ()  # the files of the entry points' modules (in the fine-tuning cache key)


_LOADED: dict[tuple[str, TorchSpec], TorchModel] = {}


def _torch():
    try:
        import torch
    except ImportError:
        raise HarnessError(f"PyTorch models (torch = ... in [[models]]) need PyTorch, which is not installed here; "
                           f"{TORCH_INSTALL}") from None
    return torch


def _one_line(err: BaseException) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def _on_path(folder: Path):
    """The config's folder first on ``sys.path`` while the user's code is imported and called."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:  # pragma: no cover - the user's code took it off
            pass


def _entry(text: str, key: str, where: str, folder: Path):
    """The function ``package.module:function`` names; one line when it does not import or is not a function."""
    module_name, _, attr = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module: anything it raises while importing
        file = module_name.replace(".", "/") + ".py"
        raise HarnessError(f"{where}: {key} = {text!r}: cannot import {module_name} ({_one_line(err)}); put {file} "
                           f"beside the config ({folder}) or make {module_name} importable (PYTHONPATH, pip "
                           f"install)") from None
    value = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise HarnessError(f"{where}: {key} = {text!r}: {module_name} has no {attr}; name a function of "
                               f"{module_name}")
        value = getattr(value, part)
    if not callable(value):
        raise HarnessError(f"{where}: {key} = {text!r} is a {type(value).__name__}, not a function; name a "
                           f"function (called with no arguments)")
    return value


def _call(fn, text: str, key: str, where: str):
    try:
        return fn()
    except Exception as err:  # the user's function
        raise HarnessError(f"{where}: {key} = {text!r}: calling it raised {_one_line(err)}; fix the function "
                           f"(it is called with no arguments)") from None


def _source(fn) -> Path | None:
    import inspect

    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        return None
    return Path(path) if path and Path(path).is_file() else None


def _batch(torch, batch, which: str, where: str, data: str):
    """(x, y) tensors of one batch, y integer labels [len(x)]; one line when the batch is not that."""
    fix = ("each batch must be (x, y): x the input [batch, ...], y the integer class labels [batch] (a "
           "DataLoader over TensorDataset(x, y) yields these)")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise HarnessError(f"{where}: data = {data!r}: the {which} loader yields {what}; {fix}")
    x, y = (torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in batch)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise HarnessError(f"{where}: data = {data!r}: the {which} loader yields ({type(x).__name__}, "
                           f"{type(y).__name__}); {fix}")
    if x.dim() < 2 or y.dim() != 1 or len(y) != len(x) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise HarnessError(f"{where}: data = {data!r}: the {which} loader yields x {list(x.shape)} {x.dtype}, y "
                           f"{list(y.shape)} {y.dtype}; {fix}")
    return x, y.long()


def _first(torch, loader, which: str, where: str, data: str):
    try:
        iterator = iter(loader)
    except TypeError:
        raise HarnessError(f"{where}: data = {data!r}: the {which} loader is a {type(loader).__name__}, not "
                           f"iterable; return (train_loader, eval_loader), e.g. two torch DataLoaders") from None
    try:
        batch = next(iterator)
    except StopIteration:
        raise HarnessError(f"{where}: data = {data!r}: the {which} loader yields no batch; give it data") from None
    except Exception as err:
        raise HarnessError(f"{where}: data = {data!r}: the {which} loader raised {_one_line(err)}") from None
    return _batch(torch, batch, which, where, data)


def _check_forward(torch, module, x, y, what: str, where: str, build: str) -> None:
    """The module takes ``x`` and gives [batch, classes] logits (classes above the largest label ``y``)."""
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as err:  # the user's module
        raise HarnessError(f"{where}: torch = {build!r}: the module fails on {what} (x {list(x.shape)} {x.dtype}): "
                           f"{_one_line(err)}; make the loaders yield the input the module takes") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(x) or \
            (y is not None and len(y) and out.shape[1] <= int(y.max())):
        got = f"{list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        labels = f" for labels up to {int(y.max())}" if y is not None and len(y) else ""
        raise HarnessError(f"{where}: torch = {build!r}: on {what} (x {list(x.shape)}) the module returns {got}, not "
                           f"[batch, classes] logits{labels}; return the logits as one tensor")


def _content_key(torch, module, example, *parts) -> str:
    """sha256 of the module (its class, structure and every tensor of its state), the example's shape and dtype,
    torch's version and this file: the export's identity."""
    digest = hashlib.sha256()
    digest.update(repr((type(module).__module__, type(module).__qualname__, str(module), list(example.shape),
                        str(example.dtype), torch.__version__, OPSET, parts)).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{list(t.shape)}{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest.update(_HERE.read_bytes())
    return digest.hexdigest()


def export_onnx(module, example, path: Path, where: str) -> Path:
    """``torch.onnx.export`` of ``module`` (eval mode) at ``example``, batch dynamic, written atomically."""
    torch = _torch()
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()), \
                redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}}, opset_version=OPSET, dynamo=False)
    except Exception as err:  # the exporter on the user's module
        tmp.unlink(missing_ok=True)
        raise HarnessError(f"{where}: torch.onnx.export of the module failed: {_one_line(err)}; the module must be "
                           f"exportable by torch.onnx.export (TorchScript exporter, opset {OPSET})") from None
    tmp.replace(path)
    return path


def load_torch(spec: ModelSpec) -> TorchModel:
    """Import and call ``spec``'s entry points, check them, export the dense module and write the eval set (both
    cached by content). Loaded once per process (fine-tuning uses the same objects)."""
    key = (spec.name, spec.torch)
    if key in _LOADED:
        return _LOADED[key]
    ts = spec.torch
    where = f"model {spec.name}"
    torch = _torch()
    with _on_path(ts.folder):
        build = _entry(ts.build, "torch", where, ts.folder)
        loaders_fn = _entry(ts.data, "data", where, ts.folder) if ts.data else None
        module = _call(build, ts.build, "torch", where)
        if not isinstance(module, torch.nn.Module):
            raise HarnessError(f"{where}: torch = {ts.build!r} returned a value of type {type(module).__name__}, "
                               f"not a torch.nn.Module; return the network (e.g. nn.Sequential(...))")
        module.eval()
        train = evaluation = None
        x_eval = y_eval = None
        if loaders_fn is not None:
            loaders = _call(loaders_fn, ts.data, "data", where)
            if not isinstance(loaders, (tuple, list)) or len(loaders) != 2:
                what = f"a {type(loaders).__name__}" + (f" of {len(loaders)}" if isinstance(loaders, (tuple, list))
                                                         else "")
                raise HarnessError(f"{where}: data = {ts.data!r} returned {what}; return (train_loader, eval_loader), "
                                   f"each yielding (x, y) batches")
            train, evaluation = loaders
            x_tr, y_tr = _first(torch, train, "train", where, ts.data)
            x_ev, y_ev = _first(torch, evaluation, "eval", where, ts.data)
            if x_tr.shape[1:] != x_ev.shape[1:] or x_tr.dtype != x_ev.dtype:
                raise HarnessError(f"{where}: data = {ts.data!r}: the train loader's x is {list(x_tr.shape)} "
                                   f"{x_tr.dtype}, the eval loader's {list(x_ev.shape)} {x_ev.dtype}; both must "
                                   f"yield the module's input (only the batch may differ)")
            if ts.example_input is not None and tuple(x_ev.shape[1:]) != ts.example_input[1:]:
                raise HarnessError(f"{where}: example_input = {list(ts.example_input)} but the eval loader's x is "
                                   f"{list(x_ev.shape)}; make them agree past the batch (or drop example_input)")
            _check_forward(torch, module, x_ev, y_ev, "the eval loader's first batch", where, ts.build)
            _check_forward(torch, module, x_tr, y_tr, "the train loader's first batch", where, ts.build)
            x_eval, y_eval = _eval_arrays(torch, evaluation, x_ev, where, ts.data)
            example = x_ev[:1].clone()
        else:
            example = torch.zeros(ts.example_input, dtype=torch.float32)[:1]
            _check_forward(torch, module, example, None, f"example_input {list(ts.example_input)}", where, ts.build)
    folder = cache_dir() / "torch"
    content = _content_key(torch, module, example)
    onnx_path = folder / f"{spec.name}-{content[:16]}.onnx"
    if not onnx_path.is_file():
        export_onnx(module, example, onnx_path, where)
    eval_path = None
    if x_eval is not None:
        arrays = {INPUT: x_eval, "y": y_eval}
        digest = hashlib.sha256()
        for k, v in arrays.items():
            digest.update(f"{k}{v.shape}{v.dtype}".encode())
            digest.update(np.ascontiguousarray(v).tobytes())
        eval_path = folder / f"{spec.name}-eval-{digest.hexdigest()[:16]}.npz"
        if not eval_path.is_file():
            tmp = eval_path.with_name(eval_path.name + ".tmp")
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            tmp.replace(eval_path)
    sources = tuple(p for p in (_source(build), _source(loaders_fn) if loaders_fn else None) if p)
    loaded = TorchModel(spec.name, ts, module, train, evaluation, example, onnx_path, eval_path,
                        0 if x_eval is None else len(x_eval), sources)
    _LOADED[key] = loaded
    return loaded


def _eval_arrays(torch, loader, first, where: str, data: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole eval loader as arrays (x, y); every batch like the first past the batch dimension."""
    xs, ys = [], []
    for batch in loader:
        x, y = _batch(torch, batch, "eval", where, data)
        if x.shape[1:] != first.shape[1:] or x.dtype != first.dtype:
            raise HarnessError(f"{where}: data = {data!r}: the eval loader yields x {list(first.shape)} then "
                               f"{list(x.shape)}; every batch must have the same shape past the batch")
        xs.append(x.detach().cpu().numpy())
        ys.append(y.detach().cpu().numpy())
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def materialize_torch(spec: ModelSpec) -> tuple[Path, Path | None]:
    """(the dense module's ONNX, its evaluation set or None): what :func:`harness.bench.load_models` benchmarks."""
    loaded = load_torch(spec)
    return loaded.onnx_path, loaded.eval_path


def accuracy(module, loader) -> float:
    """Top-1 accuracy of ``module`` (eval mode, no grad) over the whole ``loader``."""
    torch = _torch()
    module.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = torch.as_tensor(x), torch.as_tensor(y)
            right += int((module(x).argmax(dim=1) == y).sum())
            total += len(y)
    return right / max(total, 1)
