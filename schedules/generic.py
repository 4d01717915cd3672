"""CPU schedules for every PrimFunc our rewrite did not write: the rest of the graph.

TVM's default Relax pipeline legalises each remaining operator (relu, add, softmax, layer norm, pooling,
attention's activation x activation matmuls, ...) into a naive serial loop nest and never schedules it on CPU.
`cpu_pipeline` is that pipeline with fusion (FuseOps + FuseTIR, which the default CPU build skips) and one
pass more, `ScheduleGeneric`, which gives each fused PrimFunc that does not carry ``tirx.is_scheduled`` (ours
do: `cpu.KERNEL_ATTRS`) the first of these rules that accepts it:

* `matmul` - one matmul block ``C[.., i, j] += A[.., i, k] * B[.., k, j]`` (batched, both operands activations),
  optionally followed by an elementwise epilogue: register tile of ``mi`` rows x 1-2 vectors of columns, k
  streamed through it, parallel over batch x row tiles (the micro-kernel shape of `dense`);
* `row_reduction` - reductions along the last axes feeding an elementwise last block (softmax, layer norm,
  mean-and-normalise): parallel over the shared leading spatial axes, every block computed there, the last
  block's inner axis vectorised;
* `per_block` - anything else (elementwise, broadcast, transpose/reshape copies, gather, pooling, global
  pooling): each block on its own, leading spatial loops fused and run in parallel, the contiguous inner
  spatial axis vectorised.

Spatial producers are inlined into their consumers first; float32 exp / erf / tanh / sigmoid become polynomials
(`graph_fastmath`). dlight's CPU rules (`s_tir.dlight.cpu.Reduction`, `GEMV`) were tried on BERT-tiny's functions
(2 threads, AVX-512 VM, us per call, naive / ours / dlight): layer norm [1, 128, 128] 15.7 / 10.1 / 28.8,
softmax [1, 2, 128, 128] 341 / 40 / 183, P.V matmul [2, 128, 128] x [2, 128, 64] 4179 / 25 / 4558 (dlight takes
no matmul, elementwise op or pooling), so they are not used. A rule that fails leaves the function to the next
one; when none applies the function stays unscheduled (correct, slow): a schedule never fails a compile.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import tvm
import tvm_ffi
from tvm import ir, s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func

from .cpu import CpuInfo, cpu_info, largest_divisor_at_most
from .graph_fastmath import use_fast_math

# A loop nest with fewer iterations than this (output elements x reduction length) runs on one thread: waking
# the thread pool costs microseconds, more than such a loop takes on its own.
PARALLEL_MIN_WORK = 1 << 14
# The shortest inner loop worth vectorising by hand (elements); shorter ones are left to LLVM.
MIN_VECTOR = 4


@dataclass
class ScheduleReport:
    """What `ScheduleGeneric` did: ``rules[name]`` = the rule that scheduled PrimFunc ``name`` (None: left
    unscheduled), ``seconds`` = time spent scheduling (s)."""

    rules: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0

    def counts(self) -> Counter:
        """How many functions each rule scheduled (``None`` counts the ones left as they were)."""
        return Counter(self.rules.values())


def cpu_pipeline(target: tvm.target.Target, report: ScheduleReport | None = None) -> tvm.transform.Pass:
    """TVM's Relax CPU pipeline (``relax.backend.cpu_generic``) with `ScheduleGeneric` after fusion and dataflow
    lowering (after RewriteDataflowReshape, so pure reshapes are still recognised and become views)."""
    # TVM 0.27's cpu_generic package does not export dataflow_lower_passes (relax.pipeline's dispatcher to it
    # fails): import the stages from the module itself
    from tvm.relax.backend.cpu_generic import pipeline as stages

    @tvm.transform.module_pass(opt_level=0, name="SparsebenchCpuPipeline")
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                stages.library_dispatch_passes(target)
                + stages.legalize_passes(target)
                + stages.dataflow_lower_passes(target)
                + [ScheduleGeneric(target, report)]
                + stages.finalize_passes(target)
            )
            return seq(mod)

    return pipeline


@tvm.transform.module_pass(opt_level=0, name="ScheduleGeneric")
class ScheduleGeneric:
    """Schedule every unscheduled PrimFunc of a module for an LLVM CPU target (see the module docstring)."""

    def __init__(self, target: tvm.target.Target, report: ScheduleReport | None = None):
        self.cpu = cpu_info(target)
        self.report = report if report is not None else ScheduleReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        import time

        start = time.perf_counter()
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            scheduled, rule = schedule_func(func, self.cpu)
            self.report.rules[gvar.name_hint] = rule
            if scheduled is not None:
                updates[gvar] = scheduled
        for gvar, func in updates.items():
            mod[gvar] = func
        self.report.seconds += time.perf_counter() - start
        return mod


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


def schedule_func(func: tirx.PrimFunc, cpu: CpuInfo) -> tuple[tirx.PrimFunc | None, str | None]:
    """``(scheduled PrimFunc, rule name)`` for the first rule that accepts `func`, or ``(None, None)``."""
    try:
        sch, infos = _prepare(func)
    except _SCHEDULE_ERRORS:
        return None, None
    if not infos:
        return None, None
    for name, rule in RULES:
        attempt = sch.copy()  # a rule that gives up half-way leaves its copy behind
        try:
            accepted = rule(attempt, infos, cpu)
        # a rule that trips over an unusual loop nest must not fail the compile: the next rule (or none) takes it
        except _SCHEDULE_ERRORS:
            continue
        if accepted:
            # after scheduling: inlining copies an expression, and each copy must get its own Let variable
            return use_fast_math(attempt.mod["main"]).with_attr("tirx.is_scheduled", True), name
    return None, None


# ScheduleError is a RuntimeError; TVM's FFI raises ValueError / TypeError / IndexError for refused arguments
_SCHEDULE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, AssertionError)


def _prepare(func: tirx.PrimFunc):
    """A schedule of `func` with spatial producers inlined, and the remaining blocks' infos (None: not in the
    normal form dlight's analysis understands, e.g. opaque blocks).

    Padding (a block computing ``if_then_else``) stays a block of its own: inlined into a convolution or pooling
    window it would put a bounds test on every load of the vectorised loop (on resnet18's convolutions and max
    pool the two measured alike within this machine's noise; the padded copy keeps the loads plain). So does a block of transcendentals read by two
    blocks (softmax's exp, read by the sum and the normalisation): inlined, it would be computed twice."""
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return sch, None
    remaining = []
    for info in infos:
        if info.is_injective() and not _has_call(sch.get(info.block_rv), "tirx.if_then_else") and not (
                len(sch.get_consumers(info.block_rv)) > 1 and _has_call(sch.get(info.block_rv), *_EXPENSIVE)):
            try:
                sch.compute_inline(info.block_rv)
                continue
            except s_tir.ScheduleError:  # an output, or read by a reduction's init: try into its producer
                pass
            try:
                sch.reverse_compute_inline(info.block_rv)
                continue
            except s_tir.ScheduleError:
                pass
        remaining.append(info)
    return sch, remaining


def _has_call(block: tirx.SBlock, *ops: str) -> bool:
    """Whether `block`'s body calls any of the TIR intrinsics `ops` (``"tirx.exp"``, ...)."""
    found = []
    tvm_ffi.structural_walk(block.body, (ir.Call, lambda call: found.append(call)
                                         if getattr(call.op, "name", "") in ops else None))
    return bool(found)


# intrinsics that cost tens of instructions per element even in their fast form
_EXPENSIVE = ("tirx.exp", "tirx.erf", "tirx.tanh", "tirx.sigmoid", "tirx.log", "tirx.pow")


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _vector_width(extent: int | None, cpu: CpuInfo) -> int:
    """Lanes to vectorise a loop of `extent` with, without a tail (0: do not)."""
    if extent is None:
        return 0
    width = largest_divisor_at_most(extent, cpu.lanes)
    return width if width >= MIN_VECTOR else 0


def _vectorize_inner(sch: s_tir.Schedule, loop, cpu: CpuInfo) -> None:
    width = _vector_width(_extent(sch, loop), cpu)
    if width:
        inner = loop if width == _extent(sch, loop) else sch.split(loop, factors=[None, width])[1]
        sch.vectorize(inner)


def _work(sch: s_tir.Schedule, block) -> int:
    """Iterations of `block`'s loop nest (1 for a loop of unknown extent: it is never parallelised)."""
    total = 1
    for loop in sch.get_loops(block):
        total *= _extent(sch, loop) or 1
    return total


def _leading_spatial(kind: str) -> int:
    return len(kind) - len(kind.lstrip("S"))


# --- rule: batched matmul of two activations --------------------------------------------------------------


def _matmul_operands(block: tirx.SBlock):
    """``(i, j, k)`` iter vars of ``C[.., i, j] += A[.., i, k] * B[.., k, j]``, or None for any other block."""
    iters = list(block.iter_vars)
    if len(iters) < 3 or iters[-1].iter_type != tirx.IterVar.CommReduce:
        return None
    if any(it.iter_type != tirx.IterVar.DataPar for it in iters[:-1]):
        return None
    i, j, k = (it.var for it in iters[-3:])
    reads = [r for r in block.reads if not r.source.same_as(block.writes[0].source)]
    if len(reads) != 2 or len(block.writes) != 1:
        return None

    def last_two(region):
        mins = [r.min for r in region.region]
        return (mins[-2], mins[-1]) if len(mins) >= 2 else (None, None)

    a, b = (last_two(r) for r in reads)
    same = lambda pair, x, y: pair[0] is not None and pair[0].same_as(x) and pair[1].same_as(y)  # noqa: E731
    if not ((same(a, i, k) and same(b, k, j)) or (same(b, i, k) and same(a, k, j))):
        return None
    out = last_two(block.writes[0])
    return (i, j, k) if same(out, i, j) else None


def matmul(sch: s_tir.Schedule, infos: list, cpu: CpuInfo) -> bool:
    """Register-tiled schedule of a (batched) matmul whose right operand is [.., K, N] row-major, with at most
    one elementwise epilogue block after it."""
    if len(infos) > 2 or infos[0].dom_kind()[-1] != "R" or "R" in infos[0].dom_kind()[:-1]:
        return False
    if len(infos) == 2 and not infos[1].is_injective():
        return False
    block = infos[0].block_rv
    if _matmul_operands(sch.get(block)) is None:
        return False
    *batch, i, j, k = sch.get_loops(block)
    rows, cols = _extent(sch, i), _extent(sch, j)
    if rows is None or cols is None or cols % cpu.lanes:
        return False
    vectors = 2 if cols % (2 * cpu.lanes) == 0 else 1
    nj = vectors * cpu.lanes
    mi = largest_divisor_at_most(rows, min(8, cpu.accumulator_registers // vectors))
    io, ii = sch.split(i, factors=[None, mi])
    jo, ji = sch.split(j, factors=[None, nj])
    sch.reorder(*batch, io, jo, k, ii, ji)
    outer = sch.fuse(*batch, io) if batch else io
    if _work(sch, block) >= PARALLEL_MIN_WORK and _extent(sch, outer) > 1:
        sch.parallel(outer)
    # the accumulator tile: the epilogue's input (compacted to mi x nj per tile) or a cache of the output
    store = infos[1].block_rv if len(infos) == 2 else sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(store, jo, preserve_unit_loops=True)
    _vectorize_inner(sch, sch.get_loops(store)[-1], cpu)
    # vectorise while the block is still a reduction block: after decompose_reduction the update is neither
    # complete nor a reduction, and vectorize refuses it
    sch.unroll(ii)
    sch.vectorize(ji)
    init = sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(init)[-1])
    return True


# --- rule: reductions along the last axes feeding an elementwise block -------------------------------------


def row_reduction(sch: s_tir.Schedule, infos: list, cpu: CpuInfo) -> bool:
    """Softmax, layer norm and the like: every block shares leading spatial axes, the last block is elementwise;
    all blocks are computed inside one parallel loop over those axes, reductions over the innermost axis
    vectorised through a vector of partial results (rfactor)."""
    if len(infos) < 2 or not infos[-1].is_injective() or all(b.is_injective() for b in infos):
        return False
    kinds = [b.dom_kind() for b in infos]
    if any(not kind or kind[0] != "S" for kind in kinds) or any(_is_contraction(sch.get(b.block_rv)) for b in infos):
        return False
    shared = min(_leading_spatial(kind) for kind in kinds)
    last = infos[-1].block_rv
    if shared >= len(sch.get_loops(last)):  # the last block needs an inner axis of its own to vectorise
        shared = len(sch.get_loops(last)) - 1
    if shared < 1:
        return False
    work = sum(_work(sch, b.block_rv) for b in infos)
    # rfactor needs the reduction's own loop nest, before compute_at moves it
    partials = [rf for info in infos if not info.is_injective() for rf in [_vector_partials(sch, info, cpu)] if rf]
    loops = sch.get_loops(last)
    outer = sch.fuse(*loops[:shared]) if shared > 1 else loops[0]
    rest = sch.get_loops(last)[1:]
    _vectorize_inner(sch, sch.fuse(*rest) if len(rest) > 1 else rest[0], cpu)
    root = sch.get_sblock("root")
    for block in reversed(sch.get_child_blocks(root)[:-1]):
        sch.compute_at(block, outer, preserve_unit_loops=True)
    for info in infos[:-1]:
        if info.is_injective():
            _vectorize_inner(sch, sch.get_loops(info.block_rv)[-1], cpu)
    if work >= PARALLEL_MIN_WORK and _extent(sch, outer) > 1:  # before decompose_reduction, like vectorize
        sch.parallel(outer)
    for rf in partials:
        # compute_at made one loop per block iter, in iter order: [lane, spatial..., chunk]; run the lanes
        # innermost, and vectorise them before decompose_reduction (after it the update is no reduction block)
        loops = sch.get_loops(rf)
        lanes, chunks = loops[-len(sch.get(rf).iter_vars)], loops[-1]
        sch.reorder(chunks, lanes)
        sch.vectorize(lanes)
        sch.decompose_reduction(rf, chunks)
    return True


def _is_contraction(block: tirx.SBlock) -> bool:
    """Whether `block` sums products of two tensors over its reduction axes (a matmul, a convolution), rather
    than reducing one row (softmax, norms): two or more buffers read at reduction-dependent positions."""
    reduce_vars = [it.var for it in block.iter_vars if it.iter_type == tirx.IterVar.CommReduce]
    if not reduce_vars:
        return False
    varying = 0
    for region in block.reads:
        if region.source.same_as(block.writes[0].source):
            continue
        used = []
        tvm_ffi.structural_walk(region.region, (tirx.Var, lambda v: used.extend(r for r in reduce_vars
                                                                              if r.same_as(v))))
        varying += bool(used)
    return varying >= 2


def _vector_partials(sch: s_tir.Schedule, info, cpu: CpuInfo):
    """Split a reduction over its innermost axis (extent a multiple of 2 vectors) into one vector of partial
    results per row (``rfactor``), summed after the loop; returns the partials' block, or None when the block
    has another shape."""
    kind = info.dom_kind()
    if kind.count("R") != 1 or kind[-1] != "R":
        return None
    loop = sch.get_loops(info.block_rv)[-1]
    extent = _extent(sch, loop)
    if extent is None or extent % cpu.lanes or extent < 2 * cpu.lanes:
        return None
    _, lanes = sch.split(loop, factors=[None, cpu.lanes])
    # the partials' axis last, so that one row's partials are one contiguous vector
    return sch.rfactor(lanes, factor_axis=len(sch.get(info.block_rv).writes[0].region))


# --- rule: each block on its own ------------------------------------------------------------------------------


def per_block(sch: s_tir.Schedule, infos: list, cpu: CpuInfo) -> bool:
    """Elementwise, broadcast, copies, gathers, pooling, leftover convolutions: each remaining block gets a
    parallel loop over its fused leading spatial axes and a vectorised innermost spatial axis (for a reduction,
    moved inside the reduction loops)."""
    for info in infos:
        block = info.block_rv
        loops = sch.get_loops(block)
        kind = info.dom_kind()
        lead = _leading_spatial(kind)
        if lead == 0 or len(loops) != len(kind):
            continue
        parallel = _work(sch, block) >= PARALLEL_MIN_WORK
        if lead == len(loops):  # elementwise: vectorise the last axis, parallel over the others
            _vectorize_inner(sch, loops[-1], cpu)
            loops = sch.get_loops(block)
            if len(loops) > 1:
                _parallel(sch, loops[:-1], parallel)
        elif "S" in kind[lead:]:  # spatial axes inside the reduction: leave the order alone
            _parallel(sch, loops[:lead], parallel)
        else:
            _spatial_inside_reduction(sch, block, loops, lead, parallel, cpu)
    return True


def _parallel(sch: s_tir.Schedule, loops: list, parallel: bool):
    outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if parallel and (_extent(sch, outer) or 1) > 1:
        sch.parallel(outer)
    return outer


def _spatial_inside_reduction(sch: s_tir.Schedule, block, loops: list, lead: int, parallel: bool, cpu: CpuInfo):
    """A reduction over trailing axes (pooling, a convolution no kernel of ours took): the last spatial axis,
    split by the vector width, runs inside the reduction loops as one vector of accumulators kept in a small
    buffer (a register), so each reduction step is one vector operation."""
    spatial, reductions = loops[:lead], loops[lead:]
    width = _vector_width(_extent(sch, spatial[-1]), cpu)
    if not width:
        _parallel(sch, spatial, parallel)
        return
    tile, lanes = sch.split(spatial[-1], factors=[None, width])
    sch.reorder(*reductions, lanes)
    tile = _parallel(sch, [*spatial[:-1], tile], parallel)
    acc = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(acc, tile, preserve_unit_loops=True)
    sch.vectorize(lanes)  # before decompose_reduction, which leaves no reduction block to vectorise
    init = sch.decompose_reduction(block, sch.get_loops(block)[-1 - len(reductions)])
    sch.vectorize(sch.get_loops(init)[-1])
    _vectorize_inner(sch, sch.get_loops(acc)[-1], cpu)


RULES = (("matmul", matmul), ("row_reduction", row_reduction), ("per_block", per_block))
