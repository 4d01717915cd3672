"""Convolutions as matmuls: a conv2d's geometry, its [O, C*kh*kw] weight, and the layout kernels around the GEMM.

A conv2d with one group is a matmul with its weight viewed as W[O, C*kh*kw] (the view
`harness/sparsify/prune.py` prunes and `tvm_adapter.weight_names` names). In NHWC it is the im2col matrix of
its input, cols[B*Ho*Wo, C*kh*kw] (`im2col_func`: one row per output pixel, the input window it sees, zeros
where the window hangs over the padding), times W^T by our dense, BSR or N:M kernels: y[B*Ho*Wo, O] is the
NHWC output. NCHW convs keep the weight on the left instead, y[b] = W · colsT[b] (`schedules.conv_nchw`),
so nothing is transposed. A 1x1 convolution with stride 1 and no padding needs no im2col in either layout.
Depthwise convolutions (one group per channel) are `schedules.conv_depthwise`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from .cpu import KERNEL_ATTRS


@dataclass(frozen=True)
class ConvShape:
    """A 2-D convolution's static geometry (all sizes in elements).

    Attributes:
        layout: data layout of x and y, "NCHW" or "NHWC".
        batch, channels, height, width: B, C, H, W of the input.
        out_channels: O.
        kernel: (kh, kw) window.
        stride, dilation: (along H, along W).
        padding: (top, left, bottom, right) zeros around the input.
        groups: 1 (a plain conv), C (depthwise when O == C) or anything in between.
    """

    layout: str
    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]
    groups: int

    @property
    def out_height(self) -> int:
        """Ho: output rows."""
        span = self.dilation[0] * (self.kernel[0] - 1) + 1
        return (self.height + self.padding[0] + self.padding[2] - span) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        """Wo: output columns."""
        span = self.dilation[1] * (self.kernel[1] - 1) + 1
        return (self.width + self.padding[1] + self.padding[3] - span) // self.stride[1] + 1

    @property
    def pixels(self) -> int:
        """B * Ho * Wo: rows of the matmul the conv becomes (its batch M)."""
        return self.batch * self.out_height * self.out_width

    @property
    def depthwise(self) -> bool:
        """One input channel per group and one output channel per input channel."""
        return self.groups == self.channels == self.out_channels and self.groups > 1

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, no padding, one group: a matmul over the channels with no im2col."""
        return (self.kernel == (1, 1) and self.stride == (1, 1) and not any(self.padding)
                and self.groups == 1)

    @property
    def op(self) -> str:
        """The layer's name in records: "conv3x3", "conv7x7/s2", "conv1x1/s2", "depthwise3x3/s2",
        "conv3x3 (grouped)", with "/d2" for a dilation of 2."""
        kh, kw = self.kernel
        name = f"depthwise{kh}x{kw}" if self.depthwise else f"conv{kh}x{kw}"
        for tag, (a, b) in (("s", self.stride), ("d", self.dilation)):
            if (a, b) != (1, 1):
                name += f"/{tag}{a}" if a == b else f"/{tag}{a}x{b}"
        if self.groups > 1 and not self.depthwise:
            name += " (grouped)"
        return name


def conv_shape(attrs, x_shape: list[int], weight: np.ndarray) -> ConvShape | None:
    """The geometry of a conv2d call (its Conv2DAttrs, static input shape and constant kernel), or None when our
    kernels cannot take it: a layout other than NCHW / NHWC in and out, an output dtype other than fp32, or a
    kernel layout that is not a permutation of OIHW."""
    layout = str(attrs.data_layout)
    kernel_layout = str(attrs.kernel_layout)
    if layout not in ("NCHW", "NHWC") or str(attrs.out_layout) not in ("", layout):
        return None
    if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32", "void"):
        return None
    if sorted(kernel_layout) != sorted("OIHW") or weight.ndim != 4 or len(x_shape) != 4:
        return None
    dims = dict(zip(kernel_layout, weight.shape))
    b, c, h, w = x_shape if layout == "NCHW" else (x_shape[0], x_shape[3], x_shape[1], x_shape[2])
    groups = int(attrs.groups)
    if dims["I"] * groups != c:
        return None
    return ConvShape(layout, b, c, h, w, dims["O"], (dims["H"], dims["W"]),
                     tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.dilation),
                     tuple(int(v) for v in attrs.padding), groups)


def oihw(attrs, weight: np.ndarray) -> np.ndarray:
    """The constant kernel in OIHW order (float32, contiguous), whatever ``attrs.kernel_layout`` it came in."""
    layout = str(attrs.kernel_layout)
    return np.ascontiguousarray(np.transpose(weight, [layout.index(a) for a in "OIHW"]))


def weight_matrix(attrs, weight: np.ndarray) -> np.ndarray:
    """The kernel as W[O, I*kh*kw], columns in (input channel, kernel row, kernel column) order: the row order of
    im2col's columns, and the view the pruning and the weight names use."""
    kernel = oihw(attrs, weight)
    return kernel.reshape(kernel.shape[0], -1)


def im2col_func(s: ConvShape) -> tvm.tirx.PrimFunc:
    """TensorIR kernel x (NCHW or NHWC) -> cols[B*Ho*Wo, C*kh*kw], parallel over output rows (b, ho).

    cols[(b*Ho + ho)*Wo + wo, (c*kh + i)*kw + j] = x[b, c, ho*sh + i*dh - top, wo*sw + j*dw - left], or 0 where
    that pixel lies in the padding. The innermost loop runs along wo, so for stride 1 it reads a row of x
    contiguously; each output row of the image (Wo rows of cols, Wo*C*kh*kw floats) is written while it is in L2.
    """
    b, c, h, w = s.batch, s.channels, s.height, s.width
    (kh, kw), (sh, sw), (dh, dw) = s.kernel, s.stride, s.dilation
    top, left = s.padding[0], s.padding[1]
    ho, wo = s.out_height, s.out_width
    nchw = s.layout == "NCHW"
    x_shape = (b, c, h, w) if nchw else (b, h, w, c)

    def pixel(x, vb, vc, hi, wi):
        return x[vb, vc, hi, wi] if nchw else x[vb, hi, wi, vc]

    # Block-style (s_tir) on purpose, as in transpose_func: Relax's RewriteDataflowReshape looks into every
    # call_tir whose input and output have as many elements (a 3x3 stride-3 im2col can) and needs a root block.
    @T.prim_func(private=True, s_tir=True)
    def im2col(x: T.Buffer(x_shape, "float32"), cols: T.Buffer((b * ho * wo, c * kh * kw), "float32")):
        T.func_attr({"tirx.noalias": True})
        for f in T.parallel(b * ho):
            for ci, i, j, q in T.grid(c, kh, kw, wo):
                with T.sblock("im2col"):
                    vb = T.axis.opaque(b, f // ho)
                    vh = T.axis.opaque(ho, f % ho)
                    vc = T.axis.opaque(c, ci)
                    vi = T.axis.opaque(kh, i)
                    vj = T.axis.opaque(kw, j)
                    vq = T.axis.opaque(wo, q)
                    T.reads(x[0:x_shape[0], 0:x_shape[1], 0:x_shape[2], 0:x_shape[3]])
                    T.writes(cols[(vb * ho + vh) * wo + vq, (vc * kh + vi) * kw + vj])
                    cols[(vb * ho + vh) * wo + vq, (vc * kh + vi) * kw + vj] = T.if_then_else(
                        0 <= vh * sh + vi * dh - top and vh * sh + vi * dh - top < h
                        and 0 <= vq * sw + vj * dw - left and vq * sw + vj * dw - left < w,
                        pixel(x, vb, vc, vh * sh + vi * dh - top, vq * sw + vj * dw - left),
                        T.float32(0),
                    )

    return im2col.with_attr(KERNEL_ATTRS)
