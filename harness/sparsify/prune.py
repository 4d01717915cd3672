"""Per-layer magnitude pruning of ONNX weights: unstructured and r×c blocks.

A layer's weight is viewed as the [N, K] matrix of y = x·Wᵀ (N outputs, K inputs) whatever its ONNX form (Gemm
with or without transB, MatMul [K, N], Conv [O, I, kh, kw] -> [O, I·kh·kw]), so block shapes mean the same thing
for every layer and match the kernels' block-sparse layout.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import Method, check_sparsity


@dataclass(frozen=True)
class LayerSparsity:
    """One weight tensor: its [N, K] view, the sparsity asked for and the fraction of zeros reached."""

    layer: str  # ONNX node name (or the initializer name when the node has none)
    weight: str  # name of the weight initializer: the key the compiler's per-layer records are joined on
    shape: tuple[int, int]  # [N, K]
    sparsity_target: float
    sparsity_actual: float
    pruned: bool  # False for first/last layers excluded by the config
    node_op: str | None = None  # the ONNX operator as the model has it: "Gemm", "MatMul", "Conv 3×3 /2", ...
    # what a layer-level method did or found, for the layer's record (``extra``): ``pattern`` is the weight pattern
    # an as-is model has (``16x1 blocks``, ``2:4``, ...), ``detail`` what channel pruning did to the layer
    pattern: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Variant:
    """model + method + level + block shape, with the pruned ONNX on disk and what pruning reached."""

    model: str
    method: str  # "dense", "unstructured", "block", "nm", "channel" or "as-is"
    sparsity_target: float
    block: tuple[int, int] | None
    onnx_path: Path
    sha256: str  # of the variant's ONNX bytes
    layers: tuple[LayerSparsity, ...] = field(default=())
    notes: tuple[str, ...] = ()  # lines for the run's notes (what channel pruning reached, as-is's reference, ...)
    params: tuple[int, int] | None = None  # channel: (weights after, before) over the layers it touched

    @property
    def block_str(self) -> str:
        """``16x1`` (block), ``2:4`` (N:M) or ``""``: the ``block`` CSV column. An as-is model: the patterns found in
        its layers (``16x1``, ``2:4``, ``unstructured``; several joined by ``+``)."""
        if self.method == "as-is":
            found = dict.fromkeys(l.pattern.replace(" blocks", "") for l in self.layers
                                  if l.pattern and l.pattern != "dense")
            return "+".join(found)
        if not self.block:
            return ""
        return f"{self.block[0]}:{self.block[1]}" if self.method == "nm" else f"{self.block[0]}x{self.block[1]}"

    @property
    def key(self) -> str:
        """Stable name of the variant inside a run, e.g. ``digits-mlp/block-16x1/0.9`` or ``ffn-768/nm-2:4/0.5``."""
        if self.method == "dense":
            return f"{self.model}/dense/0"
        label = self.method if not self.block else f"{self.method}-{self.block_str}"
        return f"{self.model}/{label}/{self.sparsity_target:g}"

    @property
    def sparsity_actual(self) -> float:
        """Zeros over all prunable weights (pruned or not), the model-level figure."""
        total = sum(l.shape[0] * l.shape[1] for l in self.layers)
        if not total:
            return 0.0
        return sum(l.sparsity_actual * l.shape[0] * l.shape[1] for l in self.layers) / total


def _weight_view(node, init_name: str, array: np.ndarray) -> tuple[np.ndarray, callable] | None:
    """The [N, K] view of ``array`` as used by ``node`` and a function mapping a view back to ONNX layout."""
    if node.op_type == "Gemm" and array.ndim == 2 and node.input[1] == init_name:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return (array, lambda v: v) if trans_b else (array.T, lambda v: v.T)
    if node.op_type == "MatMul" and array.ndim == 2 and node.input[1] == init_name:
        return array.T, lambda v: v.T
    if node.op_type == "Conv" and array.ndim >= 3 and node.input[1] == init_name:
        shape = array.shape
        return array.reshape(shape[0], -1), lambda v: v.reshape(shape)
    return None


def node_op(node, array: np.ndarray) -> str:
    """The layer's ONNX operator in the model's own terms: ``Gemm``, ``MatMul``, or ``Conv kh×kw`` with its stride
    (``/2``), ``depthwise`` (one group per channel) or ``groups=g`` -- what a reader recognises from the exporter."""
    if node.op_type != "Conv":
        return node.op_type
    attrs = {a.name: list(a.ints) if a.ints else a.i for a in node.attribute}
    window = "×".join(str(d) for d in array.shape[2:])
    text = f"Conv {window}"
    strides = attrs.get("strides") or [1]
    if any(s != 1 for s in strides):
        text += " /" + "×".join(str(s) for s in dict.fromkeys(strides))
    groups = attrs.get("group", 1) or 1
    if groups > 1:
        text += " depthwise" if groups == array.shape[0] and array.shape[1] == 1 else f" groups={groups}"
    return text


def prunable_layers(model) -> list[tuple[object, str]]:
    """(node, weight initializer name) for every Gemm/MatMul/Conv whose weight is a constant, in graph order."""
    inits = {init.name for init in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul", "Conv") and len(node.input) > 1 and node.input[1] in inits:
            layers.append((node, node.input[1]))
    return layers


def prune_matrix(w: np.ndarray, sparsity: float, block: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Zero the ``sparsity`` fraction of ``w`` [N, K] with the smallest magnitude, in whole r×c blocks.

    Blocks are ranked by mean squared magnitude, so edge blocks (N or K not a multiple of the block) compete
    fairly with full ones, and zeroed in that order until the zeroed *elements* are closest to
    ``sparsity · N · K``. The reached sparsity differs from the target only by block granularity; the caller
    records what was reached.
    """
    r, c = block
    n, k = w.shape
    nb_r, nb_c = -(-n // r), -(-k // c)
    padded = np.zeros((nb_r * r, nb_c * c), dtype=np.float64)
    padded[:n, :k] = w
    sq = (padded.reshape(nb_r, r, nb_c, c) ** 2).sum(axis=(1, 3)).ravel()
    rows_real = np.minimum(r, n - np.arange(nb_r) * r)
    cols_real = np.minimum(c, k - np.arange(nb_c) * c)
    size = np.outer(rows_real, cols_real).ravel()
    # stable sort: ties (e.g. already-zero blocks) resolve the same way on every run
    order = np.argsort(sq / size, kind="stable")
    zeroed = np.concatenate([[0], np.cumsum(size[order])])
    n_blocks = int(np.argmin(np.abs(zeroed - sparsity * n * k)))
    mask = np.ones(sq.size, dtype=bool)
    mask[order[:n_blocks]] = False
    full = np.repeat(np.repeat(mask.reshape(nb_r, nb_c), r, axis=0), c, axis=1)[:n, :k]
    return np.where(full, w, 0).astype(w.dtype)


def prune_nm(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the ``n`` largest-magnitude weights in every group of ``m`` consecutive inputs (along K) of ``w``
    [N, K]; a last group shorter than ``m`` keeps at most ``n`` too."""
    rows, k = w.shape
    groups = -(-k // m)
    padded = np.zeros((rows, groups * m), dtype=w.dtype)
    padded[:, :k] = w
    grouped = np.abs(padded.reshape(rows, groups, m))
    # rank inside each group; stable so ties keep the earlier input
    order = np.argsort(-grouped, axis=2, kind="stable")
    keep = np.zeros_like(grouped, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    return np.where(keep.reshape(rows, groups * m)[:, :k], w, 0).astype(w.dtype)


def write_model(model, model_name: str, out_dir: Path) -> tuple[Path, str]:
    """Write ``model`` (an ONNX ModelProto) into ``out_dir`` named by its content, atomically (once per content);
    returns (its path, the SHA-256 of its bytes)."""
    payload = model.SerializeToString()
    sha = hashlib.sha256(payload).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model_name}-{sha[:16]}.onnx"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # this writer's own: a concurrent writer of the same content
        tmp.write_bytes(payload)
        tmp.replace(path)
    return path, sha


def make_variant(model_name: str, onnx_path: Path, method: Method | None, level: float, out_dir: Path, *,
                 prune_first: bool = True, prune_last: bool = False) -> Variant:
    """Write the pruned ONNX model for (method, level) into ``out_dir`` (cached by content) and describe it.

    ``method=None`` or ``level == 0`` is the dense baseline: the original model, unchanged.
    """
    import onnx
    from onnx import numpy_helper

    level = check_sparsity(level)
    model = onnx.load(str(onnx_path))
    layers = prunable_layers(model)
    dense = method is None or level == 0.0
    inits = {init.name: init for init in model.graph.initializer}
    records = []
    for index, (node, init_name) in enumerate(layers):
        array = numpy_helper.to_array(inits[init_name])
        view, back = _weight_view(node, init_name, array)
        skip = (index == 0 and not prune_first) or (index == len(layers) - 1 and not prune_last)
        do_prune = not dense and not skip
        if do_prune:
            if method.name == "nm":
                view = prune_nm(view, *method.block)
            else:
                view = prune_matrix(view, level, method.block if method.name == "block" else (1, 1))
            inits[init_name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(back(view)), init_name))
        records.append(LayerSparsity(
            layer=node.name or init_name,
            weight=init_name,
            shape=(int(view.shape[0]), int(view.shape[1])),
            sparsity_target=level if do_prune else 0.0,
            sparsity_actual=float(np.count_nonzero(view == 0) / view.size),
            pruned=do_prune,
            node_op=node_op(node, array),
        ))
    path, sha = write_model(model, model_name, out_dir)
    return Variant(
        model=model_name,
        method="dense" if dense else method.name,
        sparsity_target=0.0 if dense else level,
        block=None if dense or method.name == "unstructured" else tuple(method.block),
        onnx_path=path,
        sha256=sha,
        layers=tuple(records),
    )
