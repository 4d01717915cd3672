"""NCHW convolution as y[b] = W · X[b]: the weight on the left, so neither input nor output is transposed.

In NCHW an image's channels are rows: x[b] is X[C, H*W], and a conv's output y[b] is Y[O, Ho*Wo]. So a
1x1 conv is Y = W[O, C] · X with X = x[b] as it lies in memory, and any other conv is Y = W[O, C*kh*kw] ·
colsT[b], where colsT (`im2col_t_func`) holds one row per (input channel, kernel row, kernel column) and one
column per output pixel: for stride 1 both its reads and its writes run along a row of pixels. The kernels
here keep an accumulator tile of `mt` output channels x `vn` pixels: the weight value is broadcast, the
pixels are the vector lane, the tile is stored straight into y's rows, and the bias is per row (channel).

* `dense_func`: W packed as [O/mt, K, mt] (the tile's mt weights of one k contiguous).
* `bsr_func`: W in BSR with r x c blocks over [O, K] (`bsr.to_bsr`); the tile is one block row of r
  channels, fed by that row's stored blocks -- for every stored weight, a vector of pixels of the row of
  X it multiplies (the layout XNNPACK's sparse NCHW inference uses).

The parallel loop runs over (image, channel block, pixel block of `vn`): small images (7x7) still split over
the channel blocks, and a thread's consecutive iterations reuse one block of the weight from cache.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .bsr import BSRMatrix
from .conv import ConvShape
from .cpu import ACC_SCOPE, KERNEL_ATTRS, NO_EPILOGUE, CpuInfo, Epilogue, epilogue, finish, largest_divisor_at_most


def pixel_vector(pixels: int, vectors: int, cpu: CpuInfo) -> int:
    """vn: pixels per tile, `vectors` vector registers wide where that leaves no partial tile, else one vector.

    A partial tile is narrower than one vector then: a wider ragged one (17 of 32 lanes at 7x7) made LLVM's
    code for the whole kernel several times slower.
    """
    return cpu.lanes * (vectors if pixels % (vectors * cpu.lanes) == 0 else 1)


def dense_rows(o: int, vn: int, cpu: CpuInfo) -> int:
    """mt: output channels per dense tile, the largest divisor of O whose mt x vn tile fits the registers."""
    return largest_divisor_at_most(o, cpu.accumulator_registers // (vn // cpu.lanes))


def pack_weight(weight: np.ndarray, mt: int) -> np.ndarray:
    """W[O, K] -> W_packed[O/mt, K, mt] (float32): the mt weights a tile broadcasts for one k, contiguous."""
    o, k = weight.shape
    return np.ascontiguousarray(weight.reshape(o // mt, mt, k).transpose(0, 2, 1), dtype=np.float32)


def _pixel_tiles(pixels: int, vn: int) -> tuple[int, int, int]:
    """(full tiles, width of the last partial tile or 0, tiles in all)."""
    full, tail = divmod(pixels, vn)
    return full, tail, full + (1 if tail else 0)


def _split(f, blocks: int, tiles: int):
    """An image's parallel iteration f -> (channel block, pixel tile), pixel tiles innermost: a thread's consecutive
    iterations sweep the pixels with one block of W, which stays in cache. (Measured against the other order,
    one block of X reused across channel blocks: as fast at 56x56, 3x faster at 7x7 x 512 channels, where the
    weight outweighs the image.) Called while TVMScript parses a kernel; returns TIR index expressions."""
    return f // tiles % blocks, f % tiles


def dense_func(batch: int, o: int, k: int, pixels: int, cpu: CpuInfo,
               ep: Epilogue = NO_EPILOGUE) -> tuple[tvm.tirx.PrimFunc, int]:
    """TensorIR kernel (X[B, K, P], W_packed[O/mt, K, mt], [bias[O]]) -> y[B, O, P]; returns (func, mt)."""
    vn = pixel_vector(pixels, 2, cpu)
    mt = dense_rows(o, vn, cpu)
    full, tail, tiles = _pixel_tiles(pixels, vn)

    blocks = o // mt

    @T.macro
    def tile(x, w, bias, y, acc, bi, ob, p0, width):
        for mi in T.unroll(mt):
            for v in T.vectorized(width):
                acc[mi, v] = T.float32(0)
        for kk in range(k):
            for mi in T.unroll(mt):
                for v in T.vectorized(width):
                    acc[mi, v] = acc[mi, v] + w[ob, kk, mi] * x[bi, kk, p0 + v]
        for mi in T.unroll(mt):
            for v in T.vectorized(width):
                y[bi, ob * mt + mi, p0 + v] = epilogue(ep, acc[mi, v], bias, ob * mt + mi)

    @T.prim_func(private=True)
    def dense_nchw(
        x: T.Buffer((batch, k, pixels), "float32"),
        w: T.Buffer((o // mt, k, mt), "float32"),
        bias: T.Buffer((o,), "float32"),
        y: T.Buffer((batch, o, pixels), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for f in T.parallel(batch * tiles * blocks):
            acc = T.alloc_buffer((mt, vn), "float32", scope=ACC_SCOPE)
            if _split(f, blocks, tiles)[1] < full:
                tile(x, w, bias, y, acc, f // (blocks * tiles), _split(f, blocks, tiles)[0],
                     _split(f, blocks, tiles)[1] * vn, vn)
            else:
                tile(x, w, bias, y, acc, f // (blocks * tiles), _split(f, blocks, tiles)[0], full * vn, tail)

    return finish(dense_nchw, ep), mt


def bsr_func(batch: int, pixels: int, matrix: BSRMatrix, cpu: CpuInfo,
             ep: Epilogue = NO_EPILOGUE) -> tvm.tirx.PrimFunc:
    """TensorIR kernel (X[B, K, P], data, indices, indptr, [bias[O]]) -> y[B, O, P] for `matrix` = W[O, K] in BSR.

    A tile is r channels (one block row) x vn pixels, vn as many vectors as the registers left by r allow.
    """
    o, k = matrix.shape
    r, c = matrix.block
    stored = matrix.data.shape[0]
    rows = len(matrix.indptr) - 1
    vn = pixel_vector(pixels, max(1, min(2, cpu.accumulator_registers // r)), cpu)
    full, tail, tiles = _pixel_tiles(pixels, vn)

    @T.macro
    def tile(x, data, indices, indptr, bias, y, acc, bi, i, p0, width):
        for a in T.unroll(r):
            for v in T.vectorized(width):
                acc[a, v] = T.float32(0)
        for j in range(indptr[i], indptr[i + 1]):
            for ci in T.unroll(c):
                for a in T.unroll(r):
                    for v in T.vectorized(width):
                        acc[a, v] = acc[a, v] + data[j, ci, a] * x[bi, indices[j] * c + ci, p0 + v]
        for a in T.unroll(r):
            if i * r + a < o:
                for v in T.vectorized(width):
                    y[bi, i * r + a, p0 + v] = epilogue(ep, acc[a, v], bias, i * r + a)

    @T.prim_func(private=True)
    def bsr_nchw(
        x: T.Buffer((batch, k, pixels), "float32"),
        data: T.Buffer((stored, c, r), "float32"),
        indices: T.Buffer((stored,), "int32"),
        indptr: T.Buffer((rows + 1,), "int32"),
        bias: T.Buffer((o,), "float32"),
        y: T.Buffer((batch, o, pixels), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for f in T.parallel(batch * tiles * rows):
            acc = T.alloc_buffer((r, vn), "float32", scope=ACC_SCOPE)
            if _split(f, rows, tiles)[1] < full:
                tile(x, data, indices, indptr, bias, y, acc, f // (rows * tiles), _split(f, rows, tiles)[0],
                     _split(f, rows, tiles)[1] * vn, vn)
            else:
                tile(x, data, indices, indptr, bias, y, acc, f // (rows * tiles), _split(f, rows, tiles)[0],
                     full * vn, tail)

    return finish(bsr_nchw, ep)


def im2col_t_func(s: ConvShape) -> tvm.tirx.PrimFunc:
    """TensorIR kernel x[B, C, H, W] -> colsT[B, C*kh*kw, Ho*Wo], parallel over (b, c).

    colsT[b, (c*kh + i)*kw + j, ho*Wo + wo] = x[b, c, ho*sh + i*dh - top, wo*sw + j*dw - left], 0 in the padding.
    """
    b, c, h, w = s.batch, s.channels, s.height, s.width
    (kh, kw), (sh, sw), (dh, dw) = s.kernel, s.stride, s.dilation
    top, left = s.padding[0], s.padding[1]
    ho, wo = s.out_height, s.out_width

    # Block-style (s_tir) for Relax's RewriteDataflowReshape, as `conv.im2col_func`.
    @T.prim_func(private=True, s_tir=True)
    def im2col_t(x: T.Buffer((b, c, h, w), "float32"), cols: T.Buffer((b, c * kh * kw, ho * wo), "float32")):
        T.func_attr({"tirx.noalias": True})
        for f in T.parallel(b * c):
            for i, j, r, q in T.grid(kh, kw, ho, wo):
                with T.sblock("im2col_t"):
                    vb = T.axis.opaque(b, f // c)
                    vc = T.axis.opaque(c, f % c)
                    vi = T.axis.opaque(kh, i)
                    vj = T.axis.opaque(kw, j)
                    vr = T.axis.opaque(ho, r)
                    vq = T.axis.opaque(wo, q)
                    T.reads(x[vb, vc, 0:h, 0:w])
                    T.writes(cols[vb, (vc * kh + vi) * kw + vj, vr * wo + vq])
                    cols[vb, (vc * kh + vi) * kw + vj, vr * wo + vq] = T.if_then_else(
                        0 <= vr * sh + vi * dh - top and vr * sh + vi * dh - top < h
                        and 0 <= vq * sw + vj * dw - left and vq * sw + vj * dw - left < w,
                        x[vb, vc, vr * sh + vi * dh - top, vq * sw + vj * dw - left],
                        T.float32(0),
                    )

    return im2col_t.with_attr(KERNEL_ATTRS)


def make_kernel(candidate, weight: np.ndarray, batch: int, pixels: int, cpu: CpuInfo,
                ep: Epilogue = NO_EPILOGUE):
    """The `kernels.KernelImpl` computing y[B, O, P] = W · X[b] (then `ep`) for a conv's [O, K] weight and the
    chooser's `candidate` (chosen, like any layer's, for the [O, K] weight at batch B*P): "dense" -> `dense_func`,
    ("bsr", block) -> `bsr_func`; an N:M candidate runs as BSR with the block that fits the weight
    (`bsr.choose_block`) -- no NCHW N:M kernel -- and its KernelImpl says so."""
    from . import bsr
    from .kernels import KernelImpl

    kind, block = candidate
    o, k = weight.shape
    if kind == "dense":
        func, mt = dense_func(batch, o, k, pixels, cpu, ep)
        packed = pack_weight(weight, mt)
        return KernelImpl("dense", None, func, (packed,), 0, int(packed.nbytes),
                          f"conv_dense_{batch}x{o}x{k}x{pixels}{ep.suffix}")
    block = tuple(block) if kind == "bsr" else bsr.choose_block(weight)
    matrix = bsr.to_bsr(weight, block)
    return KernelImpl("bsr", block, bsr_func(batch, pixels, matrix, cpu, ep), (matrix.data, matrix.indices,
                      matrix.indptr), matrix.nnz_blocks, int(matrix.nbytes),
                      f"conv_bsr_{o}x{k}_b{block[0]}x{block[1]}{ep.suffix}")
