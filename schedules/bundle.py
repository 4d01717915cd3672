"""A timing bundle: every candidate kernel of the layers to choose for, as one module plus its arguments.

The selection step (``harness/compile/select.py``) compiles this module for the device's target, ships it with the
arrays in one ``.npz``, and the board-side timer (``harness/board/timer.py``) times each function with TVM's
``time_evaluator``. Float arguments (weights, packed or compressed) are a constant: a kernel's time does not depend
on the values, only on shapes and, for sparse formats, on the index arrays, which are the layer's real ones. So the
``.npz`` compresses to little more than the indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm

from .cpu import CpuInfo
from .kernels import Candidate, make_kernel

#: the value every float weight argument takes in a timing bundle
TIMING_VALUE = 0.5


def timing_bundle(kernels: Sequence[tuple], cpu: CpuInfo,
                  seed: int = 0) -> tuple[tvm.IRModule, dict[str, np.ndarray], list[dict]]:
    """``kernels``: (id, candidate, weight [N, K], batch M[, conv]) -- with ``conv = (B, P)`` (an NCHW conv, M = B*P)
    the kernel the rewrite emits for it, `conv_nchw`'s, on x [B, K, P]. Returns the module (one public function per
    id, named ``t_<id>``), the arrays by name, and one spec per kernel for the timer job:
    ``{"id", "func", "args": [array names], "out": [[M, N] or [B, N, P], "float32"]}``."""
    from . import conv_nchw

    rng = np.random.default_rng(seed)
    funcs: dict[str, tvm.tirx.PrimFunc] = {}
    arrays: dict[str, np.ndarray] = {}
    specs = []
    for kid, candidate, weight, m, *rest in kernels:
        conv = rest[0] if rest else None
        n, k = weight.shape
        if conv is None:
            impl = make_kernel(candidate, weight, m, cpu)
            x_shape, out_shape = (m, k), [m, n]
        else:
            impl = conv_nchw.make_kernel(candidate, weight, conv[0], conv[1], cpu)
            x_shape, out_shape = (conv[0], k, conv[1]), [conv[0], n, conv[1]]
        name = f"t_{kid}"
        funcs[name] = impl.func.with_attr("global_symbol", name)
        x = "x_" + "x".join(map(str, x_shape))
        if x not in arrays:
            arrays[x] = rng.standard_normal(x_shape).astype(np.float32)
        args = [x]
        for j, const in enumerate(impl.consts):
            arrays[f"{kid}_{j}"] = np.full_like(const, TIMING_VALUE) if const.dtype.kind == "f" else const
            args.append(f"{kid}_{j}")
        specs.append({"id": kid, "func": name, "args": args, "out": [out_shape, "float32"]})
    return tvm.IRModule(funcs), arrays, specs
