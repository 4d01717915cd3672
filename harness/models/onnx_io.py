"""Load and check ONNX models (cut to the outputs asked for) and their evaluation inputs, with errors that name the
file and the fix."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from ..paths import cache_dir, file_sha256
from .inputs import (InputSpec, apply_shapes, check_batch_dims, check_shared_dims, declared_inputs, index_ranges,
                     read_eval_set, static_shapes, synthetic_inputs)


@dataclass(frozen=True)
class LoadedModel:
    """A checked ONNX model on disk plus what the pipeline needs to know about it."""

    name: str
    path: Path  # the model as benchmarked: the ONNX file, or its cut to the configured outputs
    sha256: str  # of ``path``'s bytes
    inputs: tuple[InputSpec, ...]  # graph inputs in graph order; dims other than the batch (dim 0) are ints
    outputs: tuple[str, ...]  # graph outputs in order; quality figures use the first
    eval_inputs: dict[str, np.ndarray]  # evaluation rows per input name, each of its input's dtype, [n, ...]
    eval_y: np.ndarray | None  # int labels or None (then quality = fidelity to the dense variant)

    @property
    def n_eval(self) -> int:
        """Rows in the evaluation set."""
        return len(next(iter(self.eval_inputs.values())))

    def shapes_for_batch(self, batch: int) -> tuple[InputSpec, ...]:
        """Every input at ``batch`` (static shapes); refuses a batch an input's fixed dim 0 cannot take."""
        return static_shapes(self.inputs, batch, self.name)


def read_onnx(path: Path) -> "onnx.ModelProto":
    """Parse and check an ONNX file; a missing, truncated or invalid file is one clear :class:`HarnessError`."""
    import onnx

    if not path.is_file():
        raise HarnessError(f"ONNX model {path} does not exist; check the path in the config")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ... for broken files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HarnessError(
            f"ONNX model {path} is corrupt or not an ONNX file ({first}); re-export it (e.g. torch.onnx.export) "
            "and check it with onnx.checker.check_model"
        ) from None
    if len(model.graph.node) == 0:
        raise HarnessError(f"ONNX model {path} has no nodes; re-export it")
    return model


def graph_outputs(model) -> list[str]:
    """The names of the graph's outputs, in order."""
    return [o.name for o in model.graph.output]


def keep_outputs(model, outputs: Sequence[str], model_name: str):
    """``model`` cut to ``outputs`` (graph outputs or tensors inside the graph, in this order): only the nodes they
    need, and only the inputs those nodes read (``onnx.utils.Extractor``)."""
    import onnx
    from onnx.utils import Extractor

    produced = {name for node in model.graph.node for name in node.output if name}
    known = graph_outputs(model)
    unknown = [o for o in outputs if o not in produced and o not in known]
    if unknown:
        raise HarnessError(f"model {model_name}: outputs names {', '.join(map(repr, unknown))}, which the graph does "
                           f"not have; its outputs: {', '.join(known)} (or name a tensor inside the graph)")
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is only for the types of cut points; without it they stay untyped
        inferred = model
    extractor = Extractor(inferred)
    for name in outputs:  # a cut point the inference could not type still becomes an output
        extractor.value_infos.setdefault(name, onnx.helper.make_empty_tensor_value_info(name))
    inits = {init.name for init in model.graph.initializer}
    used = _needed_tensors(model, outputs)
    inputs = [i.name for i in model.graph.input if i.name not in inits and i.name in used]
    try:
        cut = extractor.extract_model(inputs, list(outputs))
        onnx.checker.check_model(cut)
    except Exception as err:  # onnx's own checks on the cut graph
        raise HarnessError(f"model {model_name}: cannot cut the graph to outputs {list(outputs)} ({err}); "
                           "name graph outputs or tensors computed inside the graph") from None
    return cut


def _needed_tensors(model, outputs: Sequence[str]) -> set[str]:
    """Every tensor the computation of ``outputs`` reads (walking the graph back from them)."""
    producer = {name: node for node in model.graph.node for name in node.output if name}
    needed, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None:
            stack += [i for i in node.input if i]
    return needed


def save_cut(model, model_name: str) -> tuple[Path, str]:
    """Write a cut model into the cache (by content) and return (path, sha256)."""
    payload = model.SerializeToString()
    sha = hashlib.sha256(payload).hexdigest()
    folder = cache_dir() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model_name.replace('/', '_')}-{sha[:16]}.onnx"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)
    return path, sha


def outputs_fed_by(model, op_types: set[str]) -> dict[str, list[str]]:
    """For each operator type in ``op_types``: the graph outputs its nodes feed (directly or through others)."""
    fed: dict[str, list[str]] = {}
    for op in sorted(op_types):
        tainted: set[str] = set()
        for node in model.graph.node:  # ONNX graphs are topologically sorted
            if node.op_type == op or tainted.intersection(node.input):
                tainted.update(node.output)
        fed[op] = [o for o in graph_outputs(model) if o in tainted]
    return fed


def compilable_outputs(model, op_types: set[str]) -> list[str]:
    """Outputs to keep so that no node of ``op_types`` remains: the graph outputs none of them feed, else the
    tensors those nodes read that are computed without them (e.g. the probabilities a ``ZipMap`` wraps)."""
    tainted: set[str] = set()
    frontier: list[str] = []
    inits = {init.name for init in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    for node in model.graph.node:
        if node.op_type in op_types:
            frontier += [i for i in node.input if i and i not in tainted and i not in inits and i not in inputs]
        if node.op_type in op_types or tainted.intersection(node.input):
            tainted.update(node.output)
    clean = [o for o in graph_outputs(model) if o not in tainted]
    if clean:
        return clean
    return list(dict.fromkeys(f for f in frontier if f not in tainted))


def load_model(name: str, path: Path, eval_path: Path | None, *, outputs: Sequence[str] = (),
               shapes: dict | None = None, vocab: dict[str, int] | None = None) -> LoadedModel:
    """Load, check and describe a model and its evaluation inputs: cut to ``outputs`` when given, every input's
    dims sized (``shapes``, else the evaluation set), the evaluation arrays checked against the inputs (or seeded
    ones made, integers below ``vocab``)."""
    from ..config import check_model_name

    check_model_name(name)  # it names files in the cache: never a path
    model = read_onnx(path)
    sha = None
    if outputs:
        model = keep_outputs(model, outputs, name)
        path, sha = save_cut(model, name)
    specs = apply_shapes(declared_inputs(model, name), dict(shapes or {}), name)
    labels = None
    if eval_path is not None:
        arrays, labels, specs = read_eval_set(eval_path, specs, name)
    check_batch_dims(specs, name)
    check_shared_dims(model, specs, name)
    if eval_path is None:
        ints = [s.name for s in specs if np.dtype(s.dtype).kind in "iu"]
        unknown = sorted(set(vocab or {}) - set(ints) - {"*"})
        if unknown:
            raise HarnessError(f"model {name}: vocab names {', '.join(map(repr, unknown))}, not an integer input "
                               f"of the model; its integer inputs: {', '.join(ints) or 'none'}")
        arrays = synthetic_inputs(specs, vocab=vocab, ranges=index_ranges(model))
    return LoadedModel(name, path, sha or file_sha256(path), specs, tuple(graph_outputs(model)), arrays, labels)
