"""``as-is``: an already-pruned model benchmarked with its own weights, unchanged.

Each prunable layer's sparsity is measured and its pattern detected with the kernels' own logic
(``schedules.bsr.choose_block``, ``schedules.kernels.nm_pattern`` and the N:M fill rule of ``schedules.choose``), so
what the report says about a layer is what the kernel choice saw. The kernels are then chosen for that pattern as
for any variant.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from .prune import LayerSparsity, Variant, _weight_view, node_op, prunable_layers

#: below this fraction of zeros over its prunable layers a model is not "already pruned"
MIN_ZEROS = 0.01


def detect_pattern(view: np.ndarray) -> str:
    """The weight pattern of an [N, K] view as the kernel rule sees it: ``dense`` (no zeros), ``2:4`` (N:M),
    ``16x1 blocks`` (the largest block shape that keeps the density), or ``unstructured``."""
    from schedules import bsr
    from schedules.choose import NM_MIN_FILL
    from schedules.kernels import nm_pattern

    weight = np.asarray(view, dtype=np.float32)
    density = float(np.count_nonzero(weight)) / weight.size
    if density >= 1.0:
        return "dense"
    block = bsr.choose_block(weight)
    if block == (1, 1):
        pattern = nm_pattern(weight)
        if pattern is not None and density >= NM_MIN_FILL * pattern[0] / pattern[1]:
            return f"{pattern[0]}:{pattern[1]}"
        return "unstructured"
    return f"{block[0]}x{block[1]} blocks"


def make_asis_variant(model_name: str, onnx_path: Path) -> Variant:
    """The model as it is: per layer its zeros and detected pattern; one :class:`HarnessError` line when it has
    (almost) no zeros, before anything is compiled."""
    import onnx
    from onnx import numpy_helper

    payload = Path(onnx_path).read_bytes()
    model = onnx.load_from_string(payload)
    inits = {i.name: i for i in model.graph.initializer}
    records, zeros, total = [], 0, 0
    for node, w in prunable_layers(model):
        array = numpy_helper.to_array(inits[w])
        view, _ = _weight_view(node, w, array)
        z = int(np.count_nonzero(view == 0))
        zeros, total = zeros + z, total + view.size
        records.append(LayerSparsity(
            layer=node.name or w, weight=w, shape=(int(view.shape[0]), int(view.shape[1])), sparsity_target=0.0,
            sparsity_actual=z / view.size, pruned=False, node_op=node_op(node, array), pattern=detect_pattern(view),
        ))
    actual = zeros / total if total else 0.0
    if actual < MIN_ZEROS:
        raise HarnessError(f"model {model_name}: method as-is benchmarks a model's own sparsity, but {onnx_path} has "
                           f"{actual:.2%} zeros in its prunable layers (less than {MIN_ZEROS:.0%}): it is dense; "
                           f"prune it with methods = [\"block:16x1\"] (or another method) instead of as-is")
    patterns = sorted({r.pattern for r in records if r.pattern != "dense"})
    note = (f"{model_name}: as-is: {actual:.3f} zeros over its prunable layers; patterns found: "
            + ", ".join(f"{r.weight} {r.pattern} ({r.sparsity_actual:.2f})" for r in records))
    return Variant(model=model_name, method="as-is", sparsity_target=round(actual, 3), block=None,
                   onnx_path=Path(onnx_path), sha256=hashlib.sha256(payload).hexdigest(), layers=tuple(records),
                   notes=(note,) if patterns else ())
