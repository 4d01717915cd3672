"""1x1 convolutions as matmuls: which conv2d calls qualify, their [O, I] weight, and the layout kernel.

A 1x1 convolution with stride 1, no padding, no dilation and one group is a matmul over the
channels. NHWC needs nothing more: x [B, H, W, C] is x [B*H*W, C] in memory, and the output
[B*H*W, O] is y [B, H, W, O]. NCHW keeps each image's channels as rows, x[b] = [C, H*W]; our
kernels take the channel axis last, so the rewrite transposes each image to [H*W, C] around
the kernel with `transpose_func` (TVM's default pipeline would leave a permute_dims as an
unscheduled serial loop nest).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .cpu import KERNEL_ATTRS

#: Where O and I sit in a 4-D conv kernel layout whose H and W are both 1.
_KERNEL_AXES = {"OIHW": (0, 1), "OHWI": (0, 3), "HWIO": (3, 2), "IHWO": (3, 0), "HWOI": (2, 3)}


def pointwise_weight(attrs, weight: np.ndarray) -> np.ndarray | None:
    """The [O, I] matrix of a conv2d whose attributes make it a plain 1x1 matmul, else None.

    Args:
        attrs: the call's Conv2DAttrs (strides, padding, dilation, groups, layouts, out_dtype).
        weight: the constant kernel in ``attrs.kernel_layout``.
    """
    axes = _KERNEL_AXES.get(str(attrs.kernel_layout))
    if axes is None or weight.ndim != 4 or str(attrs.data_layout) not in ("NCHW", "NHWC"):
        return None
    if str(attrs.out_layout) not in ("", str(attrs.data_layout)):
        return None
    if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32", "void"):
        return None
    spatial = [a for a in range(4) if a not in axes]
    if any(weight.shape[a] != 1 for a in spatial) or int(attrs.groups) != 1:
        return None
    if any(int(v) != 1 for v in (*attrs.strides, *attrs.dilation)) or any(int(v) for v in attrs.padding):
        return None
    o_axis, i_axis = axes
    return np.ascontiguousarray(np.moveaxis(weight, (o_axis, i_axis), (0, 1)).reshape(weight.shape[o_axis],
                                                                                      weight.shape[i_axis]))


#: Edge of the square tiles the transpose moves at a time (a 64-byte line of fp32 per tile row).
TILE = 16


def transpose_func(batch: int, rows: int, cols: int) -> tvm.tirx.PrimFunc:
    """TensorIR kernel x[batch, rows, cols] -> y[batch, cols, rows], in TILE x TILE tiles, parallel over row tiles.

    Tiles keep both the reads and the writes within a few cache lines each; a plain loop would
    walk one of the two arrays `rows` or `cols` floats apart on every element.
    """
    row_tiles, col_tiles = -(-rows // TILE), -(-cols // TILE)

    # Block-style (s_tir) on purpose: Relax's RewriteDataflowReshape inspects every call_tir whose input and
    # output have the same number of elements for a reshape pattern, and asserts a root block to look into.
    @T.prim_func(private=True, s_tir=True)
    def transpose(x: T.Buffer((batch, rows, cols), "float32"), y: T.Buffer((batch, cols, rows), "float32")):
        T.func_attr({"tirx.noalias": True})
        for f in T.parallel(batch * row_tiles):
            for ct, ci, ri in T.grid(col_tiles, TILE, TILE):
                with T.sblock("transpose"):
                    vb = T.axis.opaque(batch, f // row_tiles)
                    vr = T.axis.opaque(row_tiles * TILE, f % row_tiles * TILE + ri)
                    vc = T.axis.opaque(col_tiles * TILE, ct * TILE + ci)
                    T.where(f % row_tiles * TILE + ri < rows and ct * TILE + ci < cols)
                    T.reads(x[vb, vr, vc])
                    T.writes(y[vb, vc, vr])
                    y[vb, vc, vr] = x[vb, vr, vc]

    return transpose.with_attr(KERNEL_ATTRS)
