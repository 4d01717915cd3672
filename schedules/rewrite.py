"""Relax rewrite: swap every matmul with a constant weight for our dense, BSR or N:M kernel.

Forms matched (as `relax.frontend.onnx.from_onnx` and torch.export emit them, fp32, static shapes):

* ONNX Gemm(transB=1), torch linear: ``matmul(x, permute_dims(W))`` with W a [N, K] constant;
* ONNX MatMul with an initializer: ``matmul(x, W)`` with W a [K, N] constant;
* 1x1 ``nn.conv2d`` with a constant weight, NCHW or NHWC, stride 1, no padding, one group
  (see `schedules.conv`: NHWC is a reshape, NCHW transposes each image around the kernel).

x may be [M, K] or [..., K]; leading dimensions are flattened into the batch around the kernel.
For a 2-D matmul whose output feeds only ``add(y, b)`` with a constant b of shape [N] or [1, N],
and then possibly only ``nn.relu``, the bias and ReLU move into the kernel's final store (the
record's ``epilogue`` says so). The weight is replaced by its packed (dense) or
compressed (BSR, N:M) arrays as Relax constants, so the exported library stores only those.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import tvm
from tvm import relax

from . import bsr, conv, cuda
from .choose import Chooser, rule_chooser, weight_digest
from .cpu import NO_EPILOGUE, CpuInfo, Epilogue, cpu_info, is_llvm_cpu
from .kernels import Candidate, make_kernel

Kernel = Literal["dense", "bsr", "nm", "default"]


@dataclass(frozen=True)
class LayerRecord:
    """What the rewrite did with one matmul.

    Attributes:
        layer: index of the matmul among constant-weight matmuls, in program order.
        shape: [N, K] of the weight (output features, input features).
        batch: M, rows of x after flattening leading dimensions (None when not static).
        kernel: "dense" (our packed dense kernel), "bsr" (our block-sparse kernel), "nm" (our
            N:M structured kernel) or "default" (left to TVM: non-CPU target, dynamic shape or
            not fp32).
        block: [r, c] block shape for "bsr", [n, m] pattern for "nm", else None.
        density: fraction of nonzero weight elements.
        nnz_blocks: stored nonzero r x c blocks for "bsr", stored value slots for "nm"; 0 otherwise.
        weight_bytes: bytes of the stored weight: packed array (dense), values + indices +
            indptr (bsr), values + indices (nm), or the original constant (default).
        choice: how the kernel was picked: "measured" (fastest of the timed candidates),
            "rule" (a stated rule, when the device cannot be timed) or "none" (default kernel).
        alternatives_us: for "measured", median µs of every candidate timed ("dense",
            "bsr 16x1", ...); None otherwise.
        rule: for "rule", the rule that decided.
        op: the layer's operator: "matmul" (ONNX Gemm / MatMul, torch linear), "conv1x1" (a
            1x1 conv2d; shape is then [O, I] and batch is B*H*W, the matmul it became) or "conv"
            (any other conv2d with a constant weight, left to TVM; shape [O, I*kh*kw]).
        epilogue: what was fused into the kernel's store: "bias", "relu", "bias+relu" or None.
        weight: the name the weight had in the source model (its ONNX initializer), the stable key that joins
            this record to the pruning record of the same layer; None when the caller gave no names.
        measured_on: for "measured", the device whose timings decided (as the kernel plan names it).
    """

    layer: int
    shape: list[int]
    batch: int | None
    kernel: Kernel
    block: list[int] | None
    density: float
    nnz_blocks: int
    weight_bytes: int
    choice: str = "none"
    alternatives_us: dict | None = None
    rule: str | None = None
    op: str = "matmul"
    epilogue: str | None = None
    weight: str | None = None
    measured_on: str | None = None

    def to_dict(self) -> dict:
        """Plain, JSON-ready dict with the record's fields."""
        return asdict(self)


def rewrite_module(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    *,
    sparse_min: float = 0.5,
    chooser: Chooser | None = None,
    names: dict[str, str] | None = None,
    survey_only: bool = False,
) -> tuple[tvm.IRModule, list[dict]]:
    """Replace every matmul (and 1x1 conv) with a constant weight by our kernels.

    `chooser` picks each layer's kernel (see `schedules.choose`: `PlanChooser` follows a kernel
    plan measured on the device). Without one, `rule_chooser(sparse_min)` decides: an N:M weight
    gets the N:M kernel, a weight whose fraction of zeros is >= `sparse_min` a BSR kernel with
    the block shape from `bsr.choose_block`, any other the packed dense kernel. CUDA targets get
    our CUDA dense and BSR kernels (`schedules.cuda`; 1x1 convs stay with TVM there); for any
    other target the module is returned unchanged, with "default" records. `names` maps
    `weight_digest` of a layer's [N, K] weight to the weight's name in the source model; each
    record's ``weight`` is looked up there. With `survey_only` the chooser is asked about every
    layer but no kernel is built: the returned module is a placeholder, only the chooser's calls
    count (how the kernel-selection step learns which layers to time).

    Returns:
        (new module, one `LayerRecord.to_dict()` per constant-weight matmul or conv2d, in
        program order -- the layers `harness.sparsify` prunes, in the same order).
    """
    rewriter = _MatmulRewriter(mod, target, chooser or rule_chooser(sparse_min), names or {})
    rewriter.survey_only = survey_only
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.uses = _use_counts(func)
            new_func = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
            rewriter.builder_.update_func(gvar, new_func)
    records = [record.to_dict() for record in rewriter.records]
    if not rewriter.rewrites:
        return mod, records
    # a kernel re-emitted with a fused epilogue leaves its first PrimFunc unreferenced
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get()), records


def _fp32_static_shape(ty: relax.Type) -> list[int] | None:
    """The integer shape of a fp32 tensor type, or None if not fp32 or not fully static."""
    if not isinstance(ty, relax.TensorType) or str(ty.dtype) != "float32":
        return None
    if not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = [d.value if isinstance(d, tvm.tirx.IntImm) else None for d in ty.shape.values]
    return None if None in dims else dims


def _use_counts(func: relax.Function) -> Counter:
    """How many times each variable of `func` is read (a kernel output read once can absorb its consumer)."""
    counts: Counter = Counter()

    @relax.expr_functor.visitor
    class _Uses(relax.PyExprVisitor):
        def visit_var_(self, var):
            counts[var] += 1

        def visit_dataflow_var_(self, var):
            counts[var] += 1

    _Uses().visit_expr(func)
    return counts


@dataclass(frozen=True)
class _Emitted:
    """A kernel call the rewrite emitted for a 2-D matmul: enough to re-emit it with a wider epilogue."""

    candidate: Candidate
    weight: np.ndarray
    m: int
    x: relax.Expr
    record: int
    ep: Epilogue
    bias: np.ndarray | None


@relax.expr_functor.mutator
class _MatmulRewriter(relax.PyExprMutator):
    """Rewrites matched matmuls in place; collects LayerRecords and the kernels it added."""

    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, chooser: Chooser, names: dict[str, str]):
        super().__init__(mod)
        self.names = names
        self.survey_only = False
        # what make_kernel needs about the target: CpuInfo (LLVM CPU), GpuInfo (CUDA) or None (left to TVM)
        self.cpu = cpu_info(target) if is_llvm_cpu(target) else cuda.gpu_info(target) if cuda.is_cuda(target) else None
        self.chooser = chooser
        self.records: list[LayerRecord] = []
        self.rewrites = 0
        self.shared_kernels: dict[str, relax.GlobalVar] = {}  # dense and transpose kernels, by name
        self.uses: Counter = Counter()
        # 2-D kernel calls that may absorb a following bias add / ReLU, by the weight constant they pass
        self.emitted: dict[relax.Constant, _Emitted] = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if name == "relax.matmul":
            return self._rewrite_matmul(call)
        if name == "relax.nn.conv2d":
            return self._rewrite_conv(call)
        if name == "relax.add":
            return self._fuse(call, "bias")
        if name == "relax.nn.relu":
            return self._fuse(call, "relu")
        return call

    def _kernel_output(self, arg: relax.Expr) -> _Emitted | None:
        """The emitted kernel behind `arg` if `arg` is a variable read only here, bound to one of our 2-D calls."""
        if not isinstance(arg, relax.Var) or self.uses[arg] != 1:
            return None
        bound = self.lookup_binding(arg)
        if not (isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.call_tir")):
            return None
        fields = bound.args[1].fields if isinstance(bound.args[1], relax.Tuple) else []
        weight_const = fields[1] if len(fields) > 1 else None
        return self.emitted.get(weight_const)

    def _fuse(self, call: relax.Call, what: str) -> relax.Expr:
        """Re-emit the kernel that feeds `call` (add of a constant bias, or relu) with that step in its epilogue."""
        if what == "relu":
            emitted = self._kernel_output(call.args[0])
            if emitted is None or emitted.ep.relu:
                return call
            return self._reemit(emitted, replace(emitted.ep, relu=True), emitted.bias)
        for out, other in (call.args, call.args[::-1]):
            emitted = self._kernel_output(out)
            if emitted is None or emitted.ep.bias or emitted.ep.relu:
                continue
            if not (isinstance(other, tvm.ir.GenericConst) and isinstance(other.ty, relax.TensorType)):
                continue
            bias = other.value.numpy()
            n = emitted.weight.shape[0]
            if bias.dtype != np.float32 or bias.shape not in ((n,), (1, n)):
                continue
            return self._reemit(emitted, replace(emitted.ep, bias=True), np.ascontiguousarray(bias.reshape(n)))
        return call

    def _reemit(self, emitted: _Emitted, ep: Epilogue, bias: np.ndarray | None) -> relax.Expr:
        """The kernel call of `emitted` again, with epilogue `ep` (its old call becomes dead and is removed)."""
        out = self._kernel_call(emitted.x, emitted.m, emitted.weight, None, candidate=emitted.candidate, ep=ep,
                                bias=bias, record=emitted.record)
        parts = [part for part, on in (("bias", ep.bias), ("relu", ep.relu)) if on]
        self.records[emitted.record] = replace(self.records[emitted.record], epilogue="+".join(parts))
        return out

    def _served(self, weight: np.ndarray, x_shape: list[int] | None, call: relax.Call) -> bool:
        """Whether our kernels can take this layer: CPU target, static fp32 shapes, fp32 weight."""
        return (
            self.cpu is not None
            and x_shape is not None
            and weight.dtype == np.float32
            and _fp32_static_shape(call.ty) is not None
        )

    def _rewrite_matmul(self, call: relax.Call) -> relax.Expr:
        weight = self._constant_weight(call.args[1])
        if weight is None:
            return call
        x_shape = _fp32_static_shape(call.args[0].ty)
        batch = math.prod(x_shape[:-1]) if x_shape and len(x_shape) >= 2 else None
        if batch is None or not self._served(weight, x_shape, call):
            self._record(weight, batch, "default", None, 0, weight.nbytes)
            return call
        self.rewrites += 1
        x = call.args[0]
        n, k = weight.shape
        if len(x_shape) != 2:
            x = self.builder_.emit(relax.op.reshape(x, (batch, k)))
        out = self._kernel_call(x, batch, weight, "matmul")
        if len(x_shape) != 2:
            return relax.op.reshape(self.builder_.emit(out), (*x_shape[:-1], n))
        return out

    def _rewrite_conv(self, call: relax.Call) -> relax.Expr:
        """A 1x1 conv2d with a constant weight (NCHW or NHWC, stride 1, no padding, one group) -> our matmul kernels."""
        arg = call.args[1]
        if not (isinstance(arg, tvm.ir.GenericConst) and isinstance(arg.ty, relax.TensorType)):
            return call
        value = arg.value.numpy()
        weight = conv.pointwise_weight(call.attrs, value)
        if weight is None:  # recorded all the same: records follow the model's constant-weight layers one to one
            if value.ndim == 4:
                self._record(value.reshape(value.shape[0], -1), None, "default", None, 0, value.nbytes, op="conv")
            return call
        x_shape = _fp32_static_shape(call.args[0].ty)
        on_cpu = isinstance(self.cpu, CpuInfo)  # the NCHW transposes are CPU kernels
        if x_shape is None or len(x_shape) != 4 or not on_cpu or not self._served(weight, x_shape, call):
            self._record(weight, None, "default", None, 0, value.nbytes, op="conv1x1")
            return call
        self.rewrites += 1
        o, c = weight.shape
        x = call.args[0]
        if str(call.attrs.data_layout) == "NHWC":
            b, h, w, _ = x_shape
            x2 = self.builder_.emit(relax.op.reshape(x, (b * h * w, c)))
            out = self.builder_.emit(self._kernel_call(x2, b * h * w, weight, "conv1x1"))
            return relax.op.reshape(out, (b, h, w, o))
        b, _, h, w = x_shape
        pixels = h * w
        if pixels == 1:  # [B, C, 1, 1] is already [B, C]
            x2 = self.builder_.emit(relax.op.reshape(x, (b, c)))
            out = self.builder_.emit(self._kernel_call(x2, b, weight, "conv1x1"))
            return relax.op.reshape(out, (b, o, 1, 1))
        x3 = self.builder_.emit(relax.op.reshape(x, (b, c, pixels)))
        xt = self.builder_.emit(self._transpose(x3, b, c, pixels))
        x2 = self.builder_.emit(relax.op.reshape(xt, (b * pixels, c)))
        y2 = self.builder_.emit(self._kernel_call(x2, b * pixels, weight, "conv1x1"))
        y3 = self.builder_.emit(relax.op.reshape(y2, (b, pixels, o)))
        yt = self.builder_.emit(self._transpose(y3, b, pixels, o))
        return relax.op.reshape(yt, (b, o, h, w))

    def _transpose(self, x: relax.Expr, batch: int, rows: int, cols: int) -> relax.Expr:
        """call_tir of our tiled transpose [batch, rows, cols] -> [batch, cols, rows] (one PrimFunc per shape)."""
        name = f"transpose_{batch}x{rows}x{cols}"
        gvar = self.shared_kernels.get(name)
        if gvar is None:
            gvar = self.shared_kernels[name] = self.builder_.add_func(conv.transpose_func(batch, rows, cols), name)
        return relax.call_tir(gvar, [x], out_ty=relax.TensorType((batch, cols, rows), "float32"))

    def _constant_weight(self, arg: relax.Expr) -> np.ndarray | None:
        """W as a [N, K] array if `arg` is W^T: a 2-D [K, N] constant or permute_dims(W)."""
        transposed = False
        if isinstance(arg, relax.Var):
            bound = self.lookup_binding(arg)
            if not (isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.permute_dims")):
                return None
            axes = bound.attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                return None
            arg, transposed = bound.args[0], True
        if not (isinstance(arg, tvm.ir.GenericConst) and isinstance(arg.ty, relax.TensorType)):
            return None
        value = arg.value.numpy()
        if value.ndim != 2:
            return None
        return np.ascontiguousarray(value if transposed else value.T)

    def _kernel_call(self, x: relax.Expr, m: int, weight: np.ndarray, op: str | None, *,
                     candidate: Candidate | None = None, ep: Epilogue = NO_EPILOGUE, bias: np.ndarray | None = None,
                     record: int | None = None) -> relax.Expr:
        """call_tir of the chosen kernel on x [M, K] -> [M, N]; records the layer.

        Re-emitting a layer with a wider epilogue passes its `candidate` and `record` index: the
        choice is not made (or timed) again and no second record is written.
        """
        n, k = weight.shape
        info = {}
        if candidate is None:
            candidate, info = self.chooser(weight, m, self.cpu)
        if self.survey_only:  # the chooser has seen the layer; nothing is built (a placeholder of the right type)
            return relax.op.zeros((m, n), "float32")
        impl = make_kernel(candidate, weight, m, self.cpu, ep)
        # one PrimFunc per distinct dense kernel (the weight is an argument); sparse kernels are
        # specialised to their number of stored blocks, so each layer gets its own
        gvar = self.shared_kernels.get(impl.name) if impl.kind == "dense" else None
        if gvar is None:
            gvar = self.builder_.add_func(impl.func, impl.name)
            if impl.kind == "dense":
                self.shared_kernels[impl.name] = gvar
        args = [x] + [relax.const(a) for a in impl.consts] + ([relax.const(bias)] if ep.bias else [])
        if record is None:
            record = len(self.records)
            self._record(weight, m, impl.kind, list(impl.block) if impl.block else None, impl.nnz_blocks,
                         impl.weight_bytes, op=op, **info)
        if op != "conv1x1":  # conv outputs are reshaped or transposed: nothing reads them directly
            self.emitted[args[1]] = _Emitted(candidate, weight, m, x, record, ep, bias)
        return relax.call_tir(gvar, args, out_ty=relax.TensorType((m, n), "float32"))

    def _record(self, weight, batch, kernel, block, nnz_blocks, weight_bytes, *, op="matmul", choice="none",
                alternatives_us=None, rule=None, cached=None, measured_on=None) -> None:
        self.records.append(
            LayerRecord(
                layer=len(self.records),
                shape=list(weight.shape),
                batch=batch,
                kernel=kernel,
                block=block,
                density=bsr.density(weight),
                nnz_blocks=nnz_blocks,
                weight_bytes=int(weight_bytes),
                choice=choice,
                alternatives_us=alternatives_us,
                rule=rule,
                op=op,
                weight=self.names.get(weight_digest(weight)) if self.names else None,
                measured_on=measured_on,
            )
        )
