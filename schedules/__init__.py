"""Our TensorIR kernels and the Relax rewrite that swaps them in.

One module per format: `dense` (packed weight), `bsr` (block-sparse, any r x c), `sell`
(unstructured at batch 1, sliced ELLPACK), `nm` (N:M structured), `conv` (a conv's geometry, its
[O, C*kh*kw] weight view and the NHWC im2col), `conv_nchw` (NCHW convolutions of any window and stride as
y[b] = W . X[b], dense or BSR, pixels as the vector lane), `conv_depthwise` (direct depthwise kernel), `cuda`
(dense and BSR for NVIDIA GPUs); `generic` (a CPU schedule for every other PrimFunc of the graph: elementwise,
reductions, pooling, attention's batched matmuls) and `probe` (the read-bandwidth probe of the kernel
benchmark); `cpu` (target facts and conventions) and
`tiles` (TensorIR macros the CPU register-tile kernels share); `kernels.make_kernel` builds any of
them for a layer, `choose` picks per layer (by measurement or rule), `rewrite` swaps them into a Relax
module, `build` builds, calls and times one kernel on its own (for tests and for the kernel
benchmark `harness.kernelbench`, which is a client of this library and does not call TVM itself).

The compile adapter calls `rewrite_module` on a Relax module imported from ONNX, then builds the
result with TVM's CPU pipeline plus `generic`'s pass (which leaves our pre-scheduled kernels alone).
TVM is imported only when the rewrite runs, so `import schedules` stays cheap.
"""

from __future__ import annotations


def __getattr__(name: str):
    """`schedules.rewrite_module` (see `schedules.rewrite`), imported on first use so that `import schedules`
    does not import TVM."""
    if name == "rewrite_module":
        from .rewrite import rewrite_module

        return rewrite_module
    raise AttributeError(f"module 'schedules' has no attribute {name!r}")


__all__ = ["rewrite_module"]
