"""Relax rewrite: swap every matmul and convolution with a constant weight for our dense, BSR or N:M kernel.

Forms matched (as `relax.frontend.onnx.from_onnx` and torch.export emit them, fp32, static shapes):

* ONNX Gemm(transB=1), torch linear: ``matmul(x, permute_dims(W))`` with W a [N, K] constant;
* ONNX MatMul with an initializer: ``matmul(x, W)`` with W a [K, N] constant;
* ``nn.conv2d`` with a constant weight, NCHW or NHWC, one group, any kernel size, stride, padding and
  dilation, as a matmul with the weight viewed as [O, C*kh*kw]: NCHW as y[b] = W · colsT[b] by the
  `schedules.conv_nchw` kernels (dense or BSR, whichever the chooser picks for that [O, K] weight and
  batch B*Ho*Wo), NHWC as im2col then our matmul kernels (see `schedules.conv`; a 1x1 stride-1 conv
  needs no im2col in either layout);
* depthwise ``nn.conv2d`` (groups == C == O), NCHW: our direct kernel (`schedules.conv_depthwise`).
  Other grouped convs stay with TVM.

x may be [M, K] or [..., K]; leading dimensions are flattened into the batch around the kernel.
When a layer's output feeds only ``add(y, b)`` with a constant b that varies along the output
channel only ([N] or [1, N] for a matmul, [1, O, 1, 1] for an NCHW conv, possibly a reshape of a
constant), and then possibly only ``nn.relu`` and / or a clip (ONNX Clip, e.g. ReLU6), these move
into the kernel's final store (the record's ``epilogue`` says so), for 2-D, 3-D and conv layers alike. The weight is replaced by its packed (dense) or
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

from . import bsr, conv, conv_depthwise, conv_nchw, cuda
from .choose import Chooser, rule_chooser, weight_digest
from .cpu import NO_EPILOGUE, CpuInfo, Epilogue, cpu_info, is_llvm_cpu
from .kernels import make_kernel

Kernel = Literal["dense", "bsr", "nm", "tvm", "default"]


@dataclass(frozen=True)
class LayerRecord:
    """What the rewrite did with one matmul or convolution.

    Attributes:
        layer: index of the layer among constant-weight matmuls and convolutions, in program order.
        shape: [N, K] of the weight (output features, input features).
        batch: M, rows of x after flattening leading dimensions (None when not static).
        kernel: "dense" (our packed dense kernel), "bsr" (our block-sparse kernel), "nm" (our
            N:M structured kernel), "tvm" (chosen for a CUDA layer: TVM's default schedule, the layer
            left to TVM's pipeline) or "default" (left to TVM without a choice: other targets,
            dynamic shape or not fp32).
        block: [r, c] block shape for "bsr", [n, m] pattern for "nm", else None.
        density: fraction of nonzero weight elements.
        nnz_blocks: stored nonzero r x c blocks for "bsr", stored value slots for "nm"; 0 otherwise.
        weight_bytes: bytes of the stored weight: packed array (dense), values + indices +
            indptr (bsr), values + indices (nm), or the original constant (tvm, default).
        choice: how the kernel was picked: "measured" (fastest of the timed candidates),
            "rule" (a stated rule, when the device cannot be timed) or "none" (default kernel).
        alternatives_us: for "measured", median µs of every candidate timed ("dense",
            "bsr 16x1", ...); None otherwise.
        rule: for "rule", the rule that decided.
        op: the layer's operator: "matmul" (ONNX Gemm / MatMul, torch linear), or a conv2d named by
            `conv.ConvShape.op`: "conv3x3", "conv7x7/s2", "conv1x1", "conv1x1/s2", "depthwise3x3/s2",
            "conv3x3 (grouped)" (left to TVM), ...; for a conv, shape is [O, I*kh*kw] and batch is
            B*Ho*Wo, the matmul it became. "conv" is a conv2d whose layout our kernels do not take.
            A depthwise conv's kernel is "dense" (our direct kernel, choice "rule").
        epilogue: what was fused into the kernel's store: "bias", "relu", "bias+relu", "bias+relu6", ... or None.
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
    """Replace every matmul and conv2d with a constant weight by our kernels.

    `chooser` picks each layer's kernel (see `schedules.choose`: `PlanChooser` follows a kernel
    plan measured on the device). Without one, `rule_chooser(sparse_min)` decides: an N:M weight
    gets the N:M kernel, a weight whose fraction of zeros is >= `sparse_min` a BSR kernel with
    the block shape from `bsr.choose_block`, any other the packed dense kernel. On CUDA targets
    a matmul gets our CUDA dense or BSR kernel (`schedules.cuda`) or, where the chooser picks
    ``tvm`` (the rule always does), stays with TVM's own pipeline (convs stay with TVM there); for any
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
            rewriter.fusions = _fusions(func, rewriter.uses)
            new_func = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
            rewriter.builder_.update_func(gvar, new_func)
    records = [record.to_dict() for record in rewriter.records]
    if not rewriter.rewrites:
        return mod, records
    return rewriter.builder_.get(), records


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
class _Fusion:
    """What follows a layer's output and can move into its kernel's final store.

    Attributes:
        ep: the epilogue (bias, ReLU, clip ceiling) the kernel applies.
        bias: the bias as [N] float32 when ``ep.bias``, else None.
        absorbed: the calls (bias add, ReLU, clip) whose work the epilogue does, each with the position of the
            argument that carries the layer's output (among a call_tir's tensor arguments): the rewrite replaces
            each by that argument.
    """

    ep: Epilogue
    bias: np.ndarray | None
    absorbed: tuple[tuple[relax.Call, int], ...]

    @property
    def label(self) -> str | None:
        """The record's ``epilogue``: "bias", "relu", "bias+relu", "bias+relu6", ... or None."""
        return "+".join(part for part in (("bias" if self.ep.bias else None), self.ep.activation) if part) or None


NO_FUSION = _Fusion(NO_EPILOGUE, None, ())


def _fusions(func: relax.Function, uses: Counter) -> dict[relax.Call, _Fusion]:
    """For each matmul / conv2d call of `func`: the bias add, ReLU and clip (ReLU6) right after it that its kernel
    can apply.

    Looked up before the rewrite so each layer's kernel is emitted once, epilogue and all (a 3-D matmul's or a
    conv's output is reshaped after the kernel, so the add could not be folded in afterwards).
    A step moves only if the value before it is read by that step alone. The bias must be a constant (or the
    reshape of one, as the ONNX importer writes a conv's bias) that varies along the channel axis only: the
    last axis, or axis 1 of an NCHW conv output.
    """
    bindings = [b for block in func.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)]
    value_of = {b.var: b.value for b in bindings}
    reader: dict[relax.Var, relax.Call] = {}
    for binding in bindings:
        if isinstance(binding.value, relax.Call):
            for arg in binding.value.args:  # a call_tir's arguments are a tuple
                for value in arg.fields if isinstance(arg, relax.Tuple) else [arg]:
                    if isinstance(value, relax.Var) and uses[value] == 1:
                        reader[value] = binding
    out: dict[relax.Call, _Fusion] = {}
    for binding in bindings:
        call = binding.value
        if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)):
            continue
        if call.op.name == "relax.matmul":
            channel_axis = -1
        elif call.op.name == "relax.nn.conv2d":
            channel_axis = 1 if str(call.attrs.out_layout or call.attrs.data_layout) == "NCHW" else -1
        else:
            continue
        shape = _fp32_static_shape(call.ty)
        if shape is None:
            continue
        ep, bias, absorbed, var = NO_EPILOGUE, None, [], binding.var
        step = reader.get(var)
        if step is not None and _is_op(step.value, "relax.add"):
            for pos, other in enumerate(step.value.args):
                if not other.same_as(var):
                    bias = _channel_bias(value_of.get(other, other), shape, channel_axis)
                    break
            if bias is not None:
                ep, var = replace(ep, bias=True), step.var
                absorbed.append((step.value, 1 - pos))
                step = reader.get(var)
        relu = step is not None and (_is_op(step.value, "relax.nn.relu")
                                     or _clip_bound(step.value, "maximum", value_of) == 0.0)
        if relu:
            ep, var = replace(ep, relu=True), step.var
            absorbed.append((step.value, 0))
            step = reader.get(var)
        ceiling = _clip_bound(step.value, "minimum", value_of) if step is not None else None
        if ceiling is not None:
            ep = replace(ep, ceiling=ceiling)
            absorbed.append((step.value, 0))
        if absorbed:
            out[call] = _Fusion(ep, bias, tuple(absorbed))
    return out


def _clip_bound(expr: relax.Expr, kind: str, value_of: dict) -> float | None:
    """c if `expr` is ``call_tir(<kind>..., (y, bound))`` with bound = ``where(isnan(c), ±inf, c)`` -- how the ONNX
    importer writes Clip(min, max), each side elementwise ``maximum`` / ``minimum`` against a scalar -- else None.
    The PrimFunc is recognised by the name the importer gives it; `value_of` maps variables to their values."""
    if not (_is_op(expr, "relax.call_tir") and expr.args[0].name_hint.startswith(kind)):
        return None
    fields = expr.args[1].fields if isinstance(expr.args[1], relax.Tuple) else []
    bound = value_of.get(fields[1]) if len(fields) == 2 else None
    if not (_is_op(bound, "relax.where") and isinstance(bound.args[2], tvm.ir.GenericConst)):
        return None
    value = bound.args[2].value.numpy()
    if value.shape != () or not np.isfinite(value):
        return None
    return float(value)


def _is_op(expr: relax.Expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def _channel_bias(expr: relax.Expr, out_shape: list[int], channel_axis: int) -> np.ndarray | None:
    """`expr` as a [N] fp32 bias if it is a constant (or a reshaped constant) that broadcasts against an output of
    `out_shape` along `channel_axis` only, else None."""
    ty = _fp32_static_shape(expr.ty)  # the shape the add sees (a reshaped constant: after the reshape)
    if _is_op(expr, "relax.reshape"):
        expr = expr.args[0]
    if not (isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.ty, relax.TensorType)):
        return None
    if ty is None or len(ty) > len(out_shape) or str(expr.ty.dtype) != "float32":
        return None
    n = out_shape[channel_axis]
    want = [1] * len(out_shape)
    want[channel_axis] = n
    if [1] * (len(out_shape) - len(ty)) + ty != want:  # the shape broadcasting gives it
        return None
    return np.ascontiguousarray(expr.value.numpy().reshape(n), dtype=np.float32)


@relax.expr_functor.mutator
class _MatmulRewriter(relax.PyExprMutator):
    """Rewrites matched matmuls and convolutions in place; collects LayerRecords and the kernels it added."""

    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, chooser: Chooser, names: dict[str, str]):
        super().__init__(mod)
        self.names = names
        self.survey_only = False
        # what make_kernel needs about the target: CpuInfo (LLVM CPU), GpuInfo (CUDA) or None (left to TVM)
        self.cpu = cpu_info(target) if is_llvm_cpu(target) else cuda.gpu_info(target) if cuda.is_cuda(target) else None
        self.chooser = chooser
        self.records: list[LayerRecord] = []
        self.rewrites = 0
        self.shared_kernels: dict[str, relax.GlobalVar] = {}  # dense and layout kernels, by name
        self.uses: Counter = Counter()
        self.fusions: dict[relax.Call, _Fusion] = {}  # per layer call of the function being rewritten
        # bias adds, ReLUs and clips a kernel's epilogue now does -> the argument position of the layer's output
        self.absorbed: dict[relax.Call, int] = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        position = self.absorbed.get(call)
        fusion = self.fusions.get(call, NO_FUSION)
        call = self.visit_expr_post_order(call)
        if position is not None:  # the kernel before it already added the bias / applied the ReLU or clip
            return call.args[1].fields[position] if _is_op(call, "relax.call_tir") else call.args[position]
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if name == "relax.matmul":
            return self._rewrite_matmul(call, fusion)
        if name == "relax.nn.conv2d":
            return self._rewrite_conv(call, fusion)
        return call

    def _absorb(self, fusion: _Fusion) -> None:
        """The kernel just emitted applies `fusion`: its bias add, ReLU and clip become the value they were given."""
        self.absorbed.update(dict(fusion.absorbed))

    def _served(self, weight: np.ndarray, x_shape: list[int] | None, call: relax.Call) -> bool:
        """Whether our kernels can take this layer: CPU target, static fp32 shapes, fp32 weight."""
        return (
            self.cpu is not None
            and x_shape is not None
            and weight.dtype == np.float32
            and _fp32_static_shape(call.ty) is not None
        )

    def _rewrite_matmul(self, call: relax.Call, fusion: _Fusion) -> relax.Expr:
        weight = self._constant_weight(call.args[1])
        if weight is None:
            return call
        x_shape = _fp32_static_shape(call.args[0].ty)
        batch = math.prod(x_shape[:-1]) if x_shape and len(x_shape) >= 2 else None
        if batch is None or not self._served(weight, x_shape, call):
            self._record(weight, batch, "default", None, 0, weight.nbytes)
            return call
        choice = self.chooser(weight, batch, self.cpu)
        if choice[0][0] == "tvm":  # TVM's default schedule: the matmul stays, and its bias add and ReLU with it
            self._record(weight, batch, "tvm", None, 0, weight.nbytes, **choice[1])
            return call
        self.rewrites += 1
        x = call.args[0]
        n, k = weight.shape
        if len(x_shape) != 2:  # [..., K] -> [M, K] and back: the bias and ReLU still go into the kernel
            x = self.builder_.emit(relax.op.reshape(x, (batch, k)))
        out = self._kernel_call(x, batch, weight, "matmul", fusion, choice)
        if len(x_shape) != 2:
            return relax.op.reshape(self.builder_.emit(out), (*x_shape[:-1], n))
        return out

    def _rewrite_conv(self, call: relax.Call, fusion: _Fusion) -> relax.Expr:
        """A conv2d with a constant weight -> our NCHW conv kernels (on colsT, or on x itself for 1x1), im2col + our
        matmul kernels (NHWC), or our depthwise kernel. Other grouped convs, other layouts and non-CPU targets stay
        with TVM (recorded)."""
        arg = call.args[1]
        if not (isinstance(arg, tvm.ir.GenericConst) and isinstance(arg.ty, relax.TensorType)):
            return call
        value = arg.value.numpy()
        x_shape = _fp32_static_shape(call.args[0].ty)
        shape = conv.conv_shape(call.attrs, x_shape, value) if x_shape is not None else None
        if shape is None:  # recorded all the same: records follow the model's constant-weight layers one to one
            if value.ndim == 4:
                self._record(value.reshape(value.shape[0], -1), None, "default", None, 0, value.nbytes, op="conv")
            return call
        weight = conv.weight_matrix(call.attrs, value)
        on_cpu = isinstance(self.cpu, CpuInfo)  # the conv kernels and im2col are CPU kernels
        ours = shape.groups == 1 or (shape.depthwise and shape.layout == "NCHW")
        if not on_cpu or not ours or not self._served(weight, x_shape, call):
            self._record(weight, shape.pixels, "default", None, 0, value.nbytes, op=shape.op)
            return call
        self.rewrites += 1
        if shape.depthwise:
            return self._depthwise(call.args[0], shape, weight, fusion)
        b, o, ho, wo = shape.batch, shape.out_channels, shape.out_height, shape.out_width
        x = call.args[0]
        if shape.layout == "NCHW":  # y[b] = W · X[b]: x as it lies (1x1) or colsT, no transposes
            if shape.pointwise:
                cols = relax.op.reshape(x, (b, shape.channels, ho * wo))
            else:
                cols = self._layout_call(f"im2col_t_{'x'.join(map(str, _conv_key(shape)))}",
                                         lambda: conv_nchw.im2col_t_func(shape), [x], (b, weight.shape[1], ho * wo))
            y = self._kernel_call(self.builder_.emit(cols), shape.pixels, weight, shape.op, fusion,
                                  nchw=(b, ho * wo))
            return relax.op.reshape(self.builder_.emit(y), (b, o, ho, wo))
        if shape.pointwise:  # NHWC x [B, H, W, C] is x [B*H*W, C]
            rows = relax.op.reshape(x, (shape.pixels, shape.channels))
        else:
            rows = self._layout_call(f"im2col_{shape.layout}_{'x'.join(map(str, _conv_key(shape)))}",
                                     lambda: conv.im2col_func(shape), [x], (shape.pixels, weight.shape[1]))
        y2 = self.builder_.emit(self._kernel_call(self.builder_.emit(rows), shape.pixels, weight, shape.op, fusion))
        return relax.op.reshape(y2, (b, ho, wo, o))

    def _depthwise(self, x: relax.Expr, shape: conv.ConvShape, weight: np.ndarray, fusion: _Fusion) -> relax.Expr:
        """call_tir of our direct depthwise kernel (NCHW; NHWC stays with TVM, see `conv_depthwise`), recorded
        as a dense layer whose kernel the rule chose (there is one kernel, nothing to time)."""
        o = shape.out_channels
        out_shape = (shape.batch, o, shape.out_height, shape.out_width)
        if self.survey_only:  # nothing to choose: the kernel survey has no business here
            return relax.op.zeros(out_shape, "float32")
        self._record(weight, shape.pixels, "dense", None, 0, weight.nbytes, op=shape.op, choice="rule",
                     rule="depthwise: direct kernel", epilogue=fusion.label)
        self._absorb(fusion)
        func = conv_depthwise.depthwise_func(shape, self.cpu, fusion.ep)
        gvar = self.builder_.add_func(func, f"depthwise_{'x'.join(map(str, _conv_key(shape)))}{fusion.ep.suffix}")
        args = [x, relax.const(weight.reshape(o, *shape.kernel))] + ([relax.const(fusion.bias)] if fusion.ep.bias
                                                                       else [])
        return relax.call_tir(gvar, args, out_ty=relax.TensorType(out_shape, "float32"))

    def _layout_call(self, name: str, make, args: list, out_shape: tuple[int, ...]) -> relax.Expr:
        """call_tir of a layout kernel (no weight: one PrimFunc per shape, made by `make()` on first use)."""
        gvar = self.shared_kernels.get(name)
        if gvar is None:
            gvar = self.shared_kernels[name] = self.builder_.add_func(make(), name)
        return relax.call_tir(gvar, args, out_ty=relax.TensorType(out_shape, "float32"))

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

    def _kernel_call(self, x: relax.Expr, m: int, weight: np.ndarray, op: str, fusion: _Fusion,
                     choice: tuple | None = None, *, nchw: tuple[int, int] | None = None) -> relax.Expr:
        """call_tir of the chosen kernel on x [M, K] -> [M, N], with `fusion`'s bias and ReLU; records the layer.

        `choice`: the chooser's (candidate, info) when the caller asked it already, else it is asked here.

        With ``nchw = (B, P)`` (an NCHW conv, M = B*P): the `conv_nchw` kernel for the same choice instead,
        X[B, K, P] -> y[B, N, P].
        """
        n, k = weight.shape
        out_shape = (m, n) if nchw is None else (nchw[0], n, nchw[1])
        # an NCHW conv runs `conv_nchw`'s kernel: the chooser keys (and the selection step times) that one
        candidate, info = choice or self.chooser(weight, m, self.cpu, *(() if nchw is None else (tuple(nchw),)))
        if self.survey_only:  # the chooser has seen the layer; nothing is built (a placeholder of the right type)
            return relax.op.zeros(out_shape, "float32")
        ep = fusion.ep
        if nchw is None:
            impl = make_kernel(candidate, weight, m, self.cpu, ep)
        else:
            impl = conv_nchw.make_kernel(candidate, weight, *nchw, self.cpu, ep)
        # one PrimFunc per distinct dense kernel (the weight is an argument); sparse kernels are
        # specialised to their number of stored blocks, so each layer gets its own
        gvar = self.shared_kernels.get(impl.name) if impl.kind == "dense" else None
        if gvar is None:
            gvar = self.builder_.add_func(impl.func, impl.name)
            if impl.kind == "dense":
                self.shared_kernels[impl.name] = gvar
        args = [x] + [relax.const(a) for a in impl.consts] + ([relax.const(fusion.bias)] if ep.bias else [])
        self._record(weight, m, impl.kind, list(impl.block) if impl.block else None, impl.nnz_blocks,
                     impl.weight_bytes, op=op, epilogue=fusion.label, **info)
        self._absorb(fusion)
        return relax.call_tir(gvar, args, out_ty=relax.TensorType(out_shape, "float32"))

    def _record(self, weight, batch, kernel, block, nnz_blocks, weight_bytes, *, op="matmul", choice="none",
                alternatives_us=None, rule=None, cached=None, measured_on=None, epilogue=None) -> None:
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
                epilogue=epilogue,
            )
        )


def _conv_key(s: conv.ConvShape) -> tuple[int, ...]:
    """The numbers that make a layout kernel for `s` distinct (its function name is built from them)."""
    return (s.batch, s.channels, s.height, s.width, *s.kernel, *s.stride, *s.dilation, *s.padding)
