"""Our kernels built and called on their own, outside a Relax model: what tests and the kernel benchmark use.

The kernel benchmark (`harness.kernelbench`) is a client of this library and never imports TVM: the few TVM
calls it needs -- a target, a standalone build of one kernel, TVM's default build of the same dense matmul,
TVM's own timer -- are here, beside the rest of our TVM API use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tvm


def default_target() -> tvm.target.Target:
    """A portable x86-64 AVX2 target (x86-64-v3 + FMA), ``num-cores`` = this machine's CPUs."""
    return tvm.target.Target(
        {
            "kind": "llvm",
            "mtriple": "x86_64-linux-gnu",
            "mcpu": "x86-64-v3",
            "mattr": ["+avx2", "+fma"],
            "num-cores": os.cpu_count() or 1,
        }
    )


def as_target(target: tvm.target.Target | dict | None) -> tvm.target.Target:
    """`target` as a Target: a target dict converted, None = `default_target()`."""
    if target is None:
        return default_target()
    return tvm.target.Target(target) if isinstance(target, dict) else target


def build_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target, name: str = "kernel"):
    """Compile one of our PrimFuncs on its own; returns the callable packed function.

    Kernels are built private (Relax names them when they are added to a module), so a
    standalone build must give them an exported symbol first.
    """
    return _compile(func, target, name)[name]


def _compile(func: tvm.tirx.PrimFunc, target: tvm.target.Target, name: str):
    return tvm.compile(func.with_attr("global_symbol", name), target=target)


class BoundCall:
    """A compiled CPU function with its arguments in place: call it, read its output, time it with TVM's timer.

    `out` is the argument the function writes its result to (our kernels' y), None where it returns it.
    """

    def __init__(self, module, name: str, args: Sequence, out=None):
        self._module = module
        self._name = name
        self._args = list(args)
        self._out = out

    def __call__(self) -> None:
        """One call."""
        self._module[self._name](*self._args)

    def output(self) -> np.ndarray:
        """The `out` tensor as numpy."""
        return self._out.numpy()

    def time_s(self, repeat: int) -> list[float]:
        """Seconds of each of `repeat` calls, each timed on its own in C++ (``time_evaluator``, number=1)."""
        timer = self._module.time_evaluator(self._name, tvm.cpu(0), number=1, repeat=repeat)
        return [float(s) for s in timer(*self._args).results]


def kernel_call(impl, x: np.ndarray, n: int, target: tvm.target.Target) -> BoundCall:
    """`impl` (a `kernels.KernelImpl` without bias) built for `target` and bound to (x, *impl.consts, y), y a zero
    [M, n] output."""
    dev = tvm.cpu(0)
    y = tvm.runtime.tensor(np.zeros((x.shape[0], n), np.float32), dev)
    args = [tvm.runtime.tensor(a, dev) for a in (x, *impl.consts)] + [y]
    return BoundCall(_compile(impl.func, target, impl.name).jit(), impl.name, args, y)


def default_matmul_call(weight: np.ndarray, x: np.ndarray, target: tvm.target.Target) -> BoundCall:
    """TVM's default Relax build (no schedule of ours) of y = x @ weight^T, weight a constant as ONNX Gemm(transB)
    imports it, bound to `x`: the dense baseline a TVM user gets without our kernels."""
    from tvm import relax

    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(tvm.compile(_relax_matmul(weight, x.shape[0]), target=target), dev)
    return BoundCall(vm, "main", [tvm.runtime.tensor(x, dev)])


def _relax_matmul(weight: np.ndarray, m: int):
    """A Relax module y = x @ W^T with W a constant, as ONNX Gemm(transB) imports."""
    from tvm import relax

    n, k = weight.shape
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(weight))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def runtime_info() -> dict:
    """``{"tvm_version", "tvm_threads"}``: TVM's version and the size of its CPU thread pool (fixed on first use)."""
    return {"tvm_version": tvm.__version__, "tvm_threads": int(tvm.runtime.num_threads())}
