"""Depthwise conv2d (one group per channel, O == C), NCHW: a direct kernel, no im2col.

A depthwise conv does kh*kw multiply-adds per output, too few to pay for an im2col matrix as large as
the input times the window. The kernel works one (image, channel) plane at a time, in parallel: it copies
the plane into a zero-padded scratch plane (so the window loop needs no bounds tests), then computes each
output row in vectors of output columns, `tu` vectors at once so that independent accumulator chains hide
the FMA latency. Bias and ReLU are applied in the store (see `cpu.Epilogue`).
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .conv import ConvShape
from .cpu import ACC_SCOPE, NO_EPILOGUE, CpuInfo, Epilogue, epilogue, finish

#: Output vectors computed together per step (independent FMA chains); fewer when the row is shorter.
MAX_TILES = 4


def _lanes(out_width: int, cpu: CpuInfo) -> int:
    """Vector length along an output row: the CPU's, or the power of two (>= 4) that covers a shorter row."""
    return min(cpu.lanes, max(4, 1 << (out_width - 1).bit_length()))


def _tiles_per_step(vectors: int) -> int:
    """How many of a row's `vectors` output vectors one step computes: the count <= MAX_TILES that wastes
    the fewest lanes on the row's overhang (the larger on a tie)."""
    return min(range(MAX_TILES, 0, -1), key=lambda t: -(-vectors // t) * t)


def depthwise_func(s: ConvShape, cpu: CpuInfo, ep: Epilogue = NO_EPILOGUE) -> tvm.tirx.PrimFunc:
    """TensorIR kernel (x[B, C, H, W], w[C, kh, kw], [bias[C]]) -> y[B, C, Ho, Wo], parallel over (b, c)."""
    b, c, h, w = s.batch, s.channels, s.height, s.width
    (kh, kw), (sh, sw), (dh, dw) = s.kernel, s.stride, s.dilation
    top, left = s.padding[0], s.padding[1]
    ho, wo = s.out_height, s.out_width
    lanes = _lanes(wo, cpu)
    vectors = -(-wo // lanes)
    tu = _tiles_per_step(vectors)
    steps = -(-vectors // tu)
    # the scratch plane is wide enough for every lane of every step, overhang included
    hp = (ho - 1) * sh + (kh - 1) * dh + 1
    wp = (steps * tu * lanes - 1) * sw + (kw - 1) * dw + 1

    @T.prim_func(private=True)
    def depthwise(
        x: T.Buffer((b, c, h, w), "float32"),
        wt: T.Buffer((c, kh, kw), "float32"),
        bias: T.Buffer((c,), "float32"),
        y: T.Buffer((b, c, ho, wo), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for f in T.parallel(b * c):
            plane = T.alloc_buffer((hp, wp), "float32")
            acc = T.alloc_buffer((tu, lanes), "float32", scope=ACC_SCOPE)
            for i, j in T.grid(hp, wp):
                plane[i, j] = T.if_then_else(
                    top <= i and i < top + h and left <= j and j < left + w,
                    x[f // c, f % c, i - top, j - left],
                    T.float32(0),
                )
            for r in range(ho):
                for g in range(steps):
                    for u in T.unroll(tu):
                        for v in T.vectorized(lanes):
                            acc[u, v] = T.float32(0)
                    for i in T.unroll(kh):
                        for j in T.unroll(kw):
                            for u in T.unroll(tu):
                                for v in T.vectorized(lanes):
                                    acc[u, v] = acc[u, v] + wt[f % c, i, j] * plane[
                                        r * sh + i * dh, ((g * tu + u) * lanes + v) * sw + j * dw]
                    for u in T.unroll(tu):
                        if (g * tu + u) * lanes + lanes <= wo:
                            for v in T.vectorized(lanes):
                                y[f // c, f % c, r, (g * tu + u) * lanes + v] = epilogue(ep, acc[u, v], bias, f % c)
                        else:
                            for v in range(lanes):
                                if (g * tu + u) * lanes + v < wo:
                                    y[f // c, f % c, r, (g * tu + u) * lanes + v] = epilogue(ep, acc[u, v], bias,
                                                                                            f % c)

    return finish(depthwise, ep)
