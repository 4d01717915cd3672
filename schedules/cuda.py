"""CUDA kernels for the same products: dense (packed weight) and BSR, with threads bound over rows and blocks.

The CPU kernels' register tiling does not carry over to a GPU; what does is the storage: the
packed dense weight W[N/32, K, 32] and the BSR layout data[nnzb, c, r] both put consecutive
output rows next to each other, so the threads of a warp that own consecutive rows read one
contiguous stretch of the weight (coalesced), while the value of x they need is the same
address for all of them (a broadcast).

* dense: a CUDA block per 32 output rows (one warp across them, ``threadIdx.x``) and per tile
  of batch rows (``threadIdx.y``); each thread walks K.
* BSR: a CUDA block per group of block-rows, one thread per output row of them
  (``threadIdx.x`` = block-row and row within the block) and ``blockIdx.y`` per batch row;
  each thread walks its block-row's stored blocks.

These are simple, correct schedules that compile for any CUDA architecture (built here for a
Jetson's sm_87 without a GPU); they have not been tuned on a Jetson.

* TVM's default schedule (`tvm_default_func`): the layer exactly as TVM's own CUDA pipeline would
  run it, legalized, fused and scheduled by dlight's GPU rules. It is a candidate beside ours
  because it was measured faster than both of ours on an H200 (``cuda_measurements.json``):
  the chooser must be able to pick it, and time it, rather than take ours blindly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from .bsr import BSRMatrix, bsr_kernel
from .cpu import NO_EPILOGUE, Epilogue, epilogue, finish
from .dense import dense_kernel, pack_weight

#: Output rows per warp in the packed dense weight.
WARP = 32
#: Threads per CUDA block the BSR kernel aims for.
BSR_THREADS = 128
#: Batch rows per CUDA block in the dense kernel (threadIdx.y).
DENSE_BATCH_TILE = 4


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA target, for `kernels.make_kernel` (which takes it where CPU kernels take a `CpuInfo`).

    Attributes:
        arch: the target's ``arch`` ("sm_87" for Jetson Orin, ...), "" if unset.
        target: the CUDA target without its host, as JSON ("" = plain ``cuda`` of ``arch``): dlight's rules
            read its limits (threads per block, warp size), so TVM's default schedule is made under it.
    """

    arch: str = ""
    target: str = ""

    def device_target(self) -> tvm.target.Target:
        """The CUDA target TVM's default schedule is made for (`tvm_default_func`)."""
        if self.target:
            return tvm.target.Target(json.loads(self.target))
        return tvm.target.Target({"kind": "cuda", **({"arch": self.arch} if self.arch else {})})


def is_cuda(target: tvm.target.Target) -> bool:
    """Whether `target` is a CUDA GPU (our CUDA kernels serve it)."""
    return target.kind.name == "cuda"


def gpu_info(target: tvm.target.Target) -> GpuInfo:
    """GpuInfo of a CUDA target."""
    attrs = {k: v for k, v in target.export().items() if k not in ("host", "tag", "keys")}
    return GpuInfo(str(target.attrs.get("arch", "")), json.dumps(attrs, sort_keys=True, default=str))


def dense_func(m: int, n: int, k: int, ep: Epilogue = NO_EPILOGUE) -> tvm.tirx.PrimFunc:
    """CUDA kernel (x[M, K], W_packed[N/32, K, 32], [bias]) -> y[M, N] (pack with ``dense.pack_weight(w, WARP)``)."""
    blocks = -(-n // WARP)
    mt = min(m, DENSE_BATCH_TILE)
    batch_tiles = -(-m // mt)

    @T.macro
    def body(x, w, bias, y):
        for nb in T.thread_binding(blocks, thread="blockIdx.x"):
            for mo in T.thread_binding(batch_tiles, thread="blockIdx.y"):
                for mi in T.thread_binding(mt, thread="threadIdx.y"):
                    for lane in T.thread_binding(WARP, thread="threadIdx.x"):
                        acc = T.alloc_buffer((1,), "float32", scope="local")
                        acc[0] = T.float32(0)
                        if mo * mt + mi < m:
                            for kk in range(k):
                                acc[0] = acc[0] + x[mo * mt + mi, kk] * w[nb, kk, lane]
                            if nb * WARP + lane < n:
                                y[mo * mt + mi, nb * WARP + lane] = epilogue(ep, acc[0], bias, nb * WARP + lane)

    return finish(dense_kernel(m, n, k, WARP, body), ep)


def bsr_func(m: int, matrix: BSRMatrix, ep: Epilogue = NO_EPILOGUE) -> tvm.tirx.PrimFunc:
    """CUDA kernel (x[M, K], data, indices, indptr, [bias]) -> y[M, N] for `matrix`'s sizes."""
    n = matrix.shape[0]
    r, c = matrix.block
    rows = len(matrix.indptr) - 1
    group = max(1, BSR_THREADS // r)  # block-rows per CUDA block
    groups = -(-rows // group)

    @T.macro
    def body(x, data, indices, indptr, bias, y):
        for g in T.thread_binding(groups, thread="blockIdx.x"):
            for b in T.thread_binding(m, thread="blockIdx.y"):
                for t in T.thread_binding(group * r, thread="threadIdx.x"):
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    acc[0] = T.float32(0)
                    if g * group + t // r < rows:
                        for j in range(indptr[g * group + t // r], indptr[g * group + t // r + 1]):
                            for ci in T.unroll(c):
                                acc[0] = acc[0] + data[j, ci, t % r] * x[b, indices[j] * c + ci]
                        if (g * group + t // r) * r + t % r < n:
                            y[b, (g * group + t // r) * r + t % r] = epilogue(
                                ep, acc[0], bias, (g * group + t // r) * r + t % r
                            )

    return finish(bsr_kernel(m, matrix, body), ep)


def tvm_default_func(m: int, weight: np.ndarray, target: tvm.target.Target,
                     ep: Epilogue = NO_EPILOGUE) -> tuple[tvm.tirx.PrimFunc, tuple[np.ndarray, ...]]:
    """TVM's own CUDA kernel for x[M, K] · weightᵀ then `ep`, and the constant arrays it takes after x.

    The layer is written as the ONNX importer writes it (``matmul(x, permute_dims(W))``, then the
    bias add, ReLU and clip) and put through TVM's default CUDA legalization: LegalizeOps, FuseOps
    (the epilogue fused into the matmul, as TVM does it), FoldConstant (which stores W transposed,
    [K, N]) and dlight's ``ApplyDefaultSchedule(Matmul, GEMV, Reduction, GeneralReduction,
    Fallback)`` under `target`. So the kernel timed is the one TVM runs when a layer is left to
    it. Returns the one fused PrimFunc, ``(x, W [K, N], [bias], y)`` like our kernels, and
    ``(W [K, N],)`` -- the bias is the caller's to pass, as for ours.
    """
    from tvm import relax
    from tvm.relax.backend.cuda.pipeline import legalize_passes, library_dispatch_passes

    n, k = weight.shape
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(weight))))
            if ep.bias:  # a placeholder: the caller passes the real bias, as to our kernels
                y = builder.emit(relax.op.add(y, relax.const(np.zeros(n, np.float32))))
            if ep.relu:
                y = builder.emit(relax.op.nn.relu(y))
            if ep.ceiling is not None:  # a clip with a scalar bound (no constant tensor: no extra argument)
                y = builder.emit(relax.op.clip(y, float(np.finfo(np.float32).min), ep.ceiling))
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    with target:
        mod = tvm.transform.Sequential(library_dispatch_passes(target) + legalize_passes(target))(builder.get())
    funcs = [func for _, func in mod.functions_items() if isinstance(func, tvm.tirx.PrimFunc)]
    call = mod["main"].body.blocks[0].bindings[0].value
    if len(funcs) != 1 or len(call.args[1].fields) != 2 + ep.bias:
        raise ValueError(f"TVM's CUDA pipeline did not fuse the {m}x{n}x{k}{ep.suffix} layer into one kernel")
    transposed = call.args[1].fields[1].value.numpy()
    return funcs[0], (transposed,)


def pack_dense(weight: np.ndarray) -> np.ndarray:
    """W[N, K] packed for `dense_func`: [ceil(N/32), K, 32], zero-padded."""
    return pack_weight(weight, WARP)
