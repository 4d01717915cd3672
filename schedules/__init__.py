"""Our TensorIR kernels and the Relax rewrite that swaps them in.

One module per format: `dense` (packed weight), `bsr` (block-sparse, any r x c), `sell`
(unstructured at batch 1, sliced ELLPACK), `nm` (N:M structured), `conv` (1x1 convolutions as
matmuls), `cuda` (dense and BSR for NVIDIA GPUs); `kernels.make_kernel` builds any of them for a
layer, `choose` picks per layer (by measurement or rule), `rewrite` swaps them into a Relax
module, `bench` is the suite behind `sparsebench kernels`.

The compile adapter calls `rewrite_module` on a Relax module imported from ONNX, then builds the
result with the normal `tvm.compile` pipeline (which leaves our pre-scheduled kernels alone).
TVM is imported only when the rewrite runs, so `import schedules` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm

    from .choose import Chooser


def rewrite_module(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    *,
    sparse_min: float = 0.5,
    chooser: Chooser | None = None,
) -> tuple[tvm.IRModule, list[dict]]:
    """Replace every matmul with a constant weight by our kernels. Returns (new module, per-layer records).

    See `schedules.rewrite.rewrite_module` for the matched forms, `schedules.choose` for how a
    layer's kernel is picked and `LayerRecord` for the record fields.
    """
    from .rewrite import rewrite_module as _rewrite

    return _rewrite(mod, target, sparse_min=sparse_min, chooser=chooser)


__all__ = ["rewrite_module"]
