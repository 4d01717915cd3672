"""The kernel suite behind `sparsebench kernels`: our kernels against what a user would pick instead.

For every weight shape, batch, sparsity and storage format, in one process on this machine:
our sparse kernel (``ours-sparse``, built by `kernels.make_kernel`, the factory the rewrite uses),
our packed dense kernel (``ours-dense``), TVM's default Relax pipeline on the same dense matmul
(``tvm-default``), numpy, onnxruntime (a one-node MatMul model) and scipy CSR. It also measures
memory bandwidth and gives every batch-1 measurement its fraction of the bandwidth roofline.

How times are taken:

* each measurement: a pause (other thread pools stop spinning: TVM, OpenBLAS and onnxruntime
  all busy-wait after work, and on two cores a spinning pool halves whoever runs next), warm-up
  calls, then at least `Plan.min_runs` timed calls (more while the time budget allows), each
  call timed on its own: median, p90 and n are reported;
* TVM kernels through ``time_evaluator(number=1)`` (one call per sample, timed in C++); numpy,
  scipy and onnxruntime from Python with ``perf_counter`` around one call, each on its
  cheapest path (preallocated output for numpy, IO binding for onnxruntime);
* dense implementations do the same work whatever the weight's values, so they are timed once
  per shape and batch (records with sparsity 0.0); scipy CSR runs on each sparse weight.
* everything is built and checked against numpy first, then timed in `Plan.passes` rounds over
  all measurements; each record keeps its best round (lowest median), and a measurement whose
  median is far above its fastest call is retried at once (`Plan.attempts`). Other processes
  only ever add time: on a shared 2-core machine this keeps their bursts out of the table.

TVM sizes its thread pool once per process, from TVM_NUM_THREADS or else (on x86) half the
logical CPUs, assuming SMT: a single thread on a 2-vCPU VM, while numpy uses both. We set
TVM_NUM_THREADS to the CPU count unless the caller did, before the pool exists.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tvm

#: Format of the JSON document `kernel_suite` returns (bump on incompatible changes).
SUITE_FORMAT = "sparsebench-kernels/1"

SHAPES = ((768, 768), (3072, 768), (768, 3072), (1024, 1024))
BATCHES = (1, 16)
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
#: BSR block shapes timed, as (r, c) over W[N, K].
BLOCKS = ((1, 1), (4, 1), (8, 1), (16, 1), (1, 4), (4, 4))
#: The N:M pattern timed, at its own sparsity.
NM_PATTERN = (2, 4)


def default_target() -> tvm.target.Target:
    """A portable x86-64 AVX2 target (x86-64-v3 + FMA)."""
    import tvm

    return tvm.target.Target(
        {
            "kind": "llvm",
            "mtriple": "x86_64-linux-gnu",
            "mcpu": "x86-64-v3",
            "mattr": ["+avx2", "+fma"],
            "num-cores": os.cpu_count() or 1,
        }
    )


def build_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target, name: str = "kernel"):
    """Compile one of our PrimFuncs on its own; returns the callable packed function.

    Kernels are built private (Relax names them when they are added to a module), so a
    standalone build must give them an exported symbol first.
    """
    import tvm

    return tvm.compile(func.with_attr("global_symbol", name), target=target)[name]


def block_pruned(n: int, k: int, block: tuple[int, int], sparsity: float, rng: np.random.Generator) -> np.ndarray:
    """A random [n, k] float32 weight with a `sparsity` fraction of its r x c blocks zeroed."""
    r, c = block
    keep = rng.random((-(-n // r), -(-k // c))) >= sparsity
    mask = np.kron(keep, np.ones(block, dtype=bool))[:n, :k]
    return rng.standard_normal((n, k)).astype(np.float32) * mask


# --- what to run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the suite measures and how long it may spend on each measurement.

    Attributes:
        shapes: weight shapes (N, K).
        batches: batch sizes M.
        sparsities: fractions of zero weights (each BSR block shape is pruned to each).
        blocks: BSR block shapes (r, c).
        nm: the N:M pattern, timed at sparsity 1 - n/m (if that sparsity is in the plan).
        min_runs: timed calls per measurement at least (the issue asks for >= 20).
        max_runs: timed calls at most.
        budget_s: seconds of timed calls per measurement beyond `min_runs` (fast kernels get more runs).
        slow_min_runs: min_runs for tvm-default when one call takes more than `slow_call_s`.
        slow_call_s: see slow_min_runs.
        warmup: untimed calls before timing.
        settle_s: pause before each measurement so other thread pools stop spinning.
        attempts: times a measurement is taken at most; another attempt (after a pause) is made
            while the median exceeds `noisy_ratio` x the fastest call, the mark of another process
            taking a core mid-run (on 2 cores a descheduled worker thread costs a whole
            scheduler time slice, milliseconds). The attempt with the lowest median is kept.
        noisy_ratio: see attempts.
        passes: rounds over all measurements (a minute or more apart); each record keeps the
            round with the lowest median. Other processes only ever add time, and on a shared
            machine a burst of theirs can cover a whole measurement.
    """

    shapes: tuple[tuple[int, int], ...] = SHAPES
    batches: tuple[int, ...] = BATCHES
    sparsities: tuple[float, ...] = SPARSITIES
    blocks: tuple[tuple[int, int], ...] = BLOCKS
    nm: tuple[int, int] | None = NM_PATTERN
    min_runs: int = 20
    max_runs: int = 200
    budget_s: float = 0.3
    slow_min_runs: int = 5
    slow_call_s: float = 0.02
    warmup: int = 5
    settle_s: float = 0.05
    attempts: int = 3
    noisy_ratio: float = 2.0
    passes: int = 2


FULL = Plan()
#: --quick: the sparsities the issue's numbers are stated at, fewer and shorter repeats.
QUICK = replace(FULL, sparsities=(0.5, 0.9), max_runs=100, budget_s=0.1, warmup=3, settle_s=0.03)


@dataclass(frozen=True)
class Timing:
    """Per-call times of one measurement, in microseconds."""

    median_us: float
    p90_us: float
    n: int
    min_us: float = 0.0
    attempts: int = 1

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        us = np.asarray(seconds, dtype=np.float64) * 1e6
        return cls(float(np.median(us)), float(np.percentile(us, 90)), int(len(us)), float(us.min()))


# --- timing --------------------------------------------------------------------------------------


class _Clock:
    """Times callables under one Plan: pause, warm up, estimate, then time each call."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def _steady(self, measure: Callable[[], Timing]) -> Timing:
        """`measure` again (after a pause) while its median says another process interfered; the best median wins."""
        best = None
        for attempt in range(1, self.plan.attempts + 1):
            if attempt > 1:
                time.sleep(0.5)
            timing = replace(measure(), attempts=attempt)
            best = timing if best is None or timing.median_us < best.median_us else replace(best, attempts=attempt)
            if timing.median_us <= self.plan.noisy_ratio * timing.min_us:
                break
        return best

    def _runs(self, estimate_s: float, min_runs: int) -> int:
        extra = int(self.plan.budget_s / max(estimate_s, 1e-7))
        return max(min_runs, min(self.plan.max_runs, extra))

    def python(self, call: Callable[[], object], min_runs: int | None = None) -> Timing:
        """Time a Python callable, one perf_counter pair per call."""
        return self._steady(lambda: self._python(call, min_runs))

    def _python(self, call: Callable[[], object], min_runs: int | None) -> Timing:
        time.sleep(self.plan.settle_s)
        start = time.perf_counter()
        for _ in range(self.plan.warmup):
            call()
        estimate = (time.perf_counter() - start) / max(self.plan.warmup, 1)
        samples = []
        for _ in range(self._runs(estimate, min_runs or self.plan.min_runs)):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        return Timing.of(samples)

    def tvm(self, module, name: str, args: Sequence, min_runs: int | None = None, warmup: int | None = None) -> Timing:
        """Time a TVM function (kernel or VM entry) with time_evaluator, one call per sample."""
        return self._steady(lambda: self._tvm(module, name, args, min_runs, warmup))

    def _tvm(self, module, name: str, args: Sequence, min_runs: int | None, warmup: int | None) -> Timing:
        import tvm

        time.sleep(self.plan.settle_s)
        dev = tvm.cpu(0)
        warm = self.plan.warmup if warmup is None else warmup
        first = module.time_evaluator(name, dev, number=1, repeat=max(warm, 1))(*args)
        estimate = float(np.min(first.results))
        runs = self._runs(estimate, min_runs or self.plan.min_runs)
        result = module.time_evaluator(name, dev, number=1, repeat=runs)(*args)
        return Timing.of(result.results)


# --- memory bandwidth ----------------------------------------------------------------------------


def cache_bytes(level: int | None = None) -> int:
    """Size in bytes of cpu0's cache at `level` (None: the last level) from sysfs; 0 if unknown."""
    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            lvl = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        sizes[lvl] = int(text.rstrip("KMG")) * scale
    if not sizes:
        return 0
    return sizes.get(level, 0) if level is not None else sizes[max(sizes)]


def llc_bytes() -> int:
    """Size of the last-level cache (32 MiB if unknown)."""
    return cache_bytes() or 32 << 20


def _copy_gbs(nbytes: int, threads: int, repeats: int) -> float:
    """Best-of-threads copy bandwidth over `nbytes` of float32 split across threads: (read + write bytes) / median
    time, GB/s. Each thread copies its part several times per sample, so pool dispatch does not dominate small
    buffers."""
    from concurrent.futures import ThreadPoolExecutor

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    inner = max(1, (32 << 20) // max(nbytes, 1))  # at least ~32 MiB copied per sample
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for t in sorted({1, threads}):
            chunks = [slice(j * len(src) // t, (j + 1) * len(src) // t) for j in range(t)]
            parts = [(src[c], dst[c]) for c in chunks]

            def work(part):
                for _ in range(inner):
                    np.copyto(part[1], part[0])

            def copy(parts=parts):
                if len(parts) == 1:
                    work(parts[0])
                else:
                    list(pool.map(work, parts))

            copy()
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                copy()
                samples.append(time.perf_counter() - start)
            best = max(best, 2 * src.nbytes * inner / float(np.median(samples)) / 1e9)
    return best


def measure_bandwidth(threads: int, quick: bool = False) -> dict:
    """numpy copy bandwidth in GB/s (STREAM convention: bytes read + bytes written) for two buffers.

    ``cache``: source and destination together a quarter of the last-level cache (fits in it,
    not in the per-core L2s); ``dram``: each buffer 4x the LLC. The best of 1 and `threads`
    threads counts, as a roofline should be the best attainable. (numpy cannot time an
    L2-sized copy reliably -- its per-call overhead is a large part of it -- so a format that
    fits in the L2s can beat the cache roofline: fractions above 1.)
    """
    llc = llc_bytes()
    cache_buffer, dram_buffer = llc // 8, 4 * llc
    return {
        "llc_bytes": llc,
        "cache_buffer_bytes": cache_buffer,
        "dram_buffer_bytes": dram_buffer,
        "cache_gbs": _copy_gbs(cache_buffer, threads, 20 if quick else 50),
        "dram_gbs": _copy_gbs(dram_buffer, threads, 5 if quick else 10),
    }


def roofline(nbytes: int, timing: Timing, bandwidth: dict) -> tuple[float, str]:
    """(fraction, level): time to stream `nbytes` at the bandwidth of the level it fits in, over the measured median.

    A format whose bytes fit in half the LLC is compared with the cache copy bandwidth, a larger
    one with DRAM's. Above 1.0 means faster than that copy (the data sat in a closer cache).
    """
    level = "cache" if nbytes <= bandwidth["llc_bytes"] // 2 else "dram"
    ideal_us = nbytes / (bandwidth[f"{level}_gbs"] * 1e9) * 1e6
    return ideal_us / timing.median_us, level


# --- the baselines ---------------------------------------------------------------------------------


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


def _ort_session(weight: np.ndarray, m: int, threads: int):
    """An onnxruntime session of one MatMul node x[m, K] @ W^T (W^T as an initializer), intra-op threads = cores."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n, k = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wt"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T), "wt")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@dataclass
class _Job:
    """One measurement to take: what the record will say, and how to time it."""

    fields: dict
    measure: Callable[[], Timing]
    nbytes: int | None
    best: Timing | None = None
    best_pass: int = 0


@dataclass
class _Context:
    """Everything measurements share: target, clock, bandwidth, the jobs and their records."""

    target: object
    cpu: object
    clock: _Clock
    bandwidth: dict
    threads: int
    jobs: list[_Job] = field(default_factory=list)
    log: Callable[[str], None] = print

    def add(self, shape, batch, sparsity, fmt, block, impl, measure: Callable[[], Timing], nbytes: int | None,
            **extra) -> None:
        """Queue a measurement; `measure` runs once per pass (see `run`)."""
        fields = {"shape": list(shape), "batch": batch, "sparsity": sparsity, "format": fmt,
                  "block": list(block) if block else None, "impl": impl, **extra}
        self.jobs.append(_Job(fields, measure, nbytes))

    def run(self, passes: int) -> None:
        """Time every queued job `passes` times over, keeping each job's best (lowest-median) pass."""
        for number in range(1, passes + 1):
            started = time.perf_counter()
            for job in self.jobs:
                timing = job.measure()
                if job.best is None or timing.median_us < job.best.median_us:
                    job.best, job.best_pass = timing, number
            self.log(f"pass {number}/{passes}: {len(self.jobs)} measurements in {time.perf_counter() - started:.0f} s")

    def records(self, passes: int) -> list[dict]:
        out = []
        for job in self.jobs:
            timing = job.best
            fraction = level = None
            if job.fields["batch"] == 1 and job.nbytes:
                fraction, level = roofline(job.nbytes, timing, self.bandwidth)
            out.append({
                **job.fields,
                "median_us": round(timing.median_us, 3), "p90_us": round(timing.p90_us, 3), "n": timing.n,
                "min_us": round(timing.min_us, 3), "attempts": timing.attempts, "pass": job.best_pass,
                "passes": passes,
                "roofline_fraction": None if fraction is None else round(fraction, 4),
                "roofline_level": level, "format_bytes": job.nbytes,
            })
        return out


def _check(out: np.ndarray, x: np.ndarray, weight: np.ndarray, what: str) -> None:
    """Our kernels must compute the product they are timed on (relative 1e-4 of the output scale)."""
    ref = x.astype(np.float64) @ weight.T.astype(np.float64)
    err = float(np.abs(out - ref).max()) / max(1.0, float(np.abs(ref).max()))
    if err > 1e-4:
        raise AssertionError(f"{what}: max relative error {err:.2e}")


def _dense_baselines(ctx: _Context, shape, m: int, x: np.ndarray, rng) -> None:
    """ours-dense, tvm-default, numpy and onnxruntime on a dense random weight."""
    import tvm

    from .kernels import make_kernel

    n, k = shape
    weight = rng.standard_normal((n, k)).astype(np.float32)
    dev = tvm.cpu(0)

    impl = make_kernel(("dense", None), weight, m, ctx.cpu)
    lib = tvm.compile(impl.func.with_attr("global_symbol", impl.name), target=ctx.target).jit()
    y = tvm.runtime.tensor(np.zeros((m, n), np.float32), dev)
    args = [tvm.runtime.tensor(a, dev) for a in (x, *impl.consts)] + [y]
    lib[impl.name](*args)
    _check(y.numpy(), x, weight, f"ours-dense {shape} batch {m}")
    ctx.add(shape, m, 0.0, "dense", None, "ours-dense", lambda: ctx.clock.tvm(lib, impl.name, args), impl.weight_bytes)

    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(_relax_matmul(weight, m), target=ctx.target), dev)
    xv = tvm.runtime.tensor(x, dev)
    slow = ctx.clock.plan.slow_min_runs
    ctx.add(shape, m, 0.0, "dense", None, "tvm-default",
            lambda: ctx.clock.tvm(vm, "main", [xv], min_runs=slow, warmup=1), weight.nbytes)

    wt = np.ascontiguousarray(weight.T)
    out = np.empty((m, n), np.float32)
    ctx.add(shape, m, 0.0, "dense", None, "numpy", lambda: ctx.clock.python(lambda: np.matmul(x, wt, out=out)),
            weight.nbytes)

    session = _ort_session(weight, m, ctx.threads)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu")
    session.run_with_iobinding(binding)  # allocates the output once; later runs reuse it
    ctx.add(shape, m, 0.0, "dense", None, "onnxruntime",
            lambda: ctx.clock.python(lambda: session.run_with_iobinding(binding)), weight.nbytes)


def _sparse_weights(plan: Plan, shape, sparsity: float, rng) -> list[tuple[str, tuple[int, int], np.ndarray]]:
    """(format, block, weight) for every format the plan times at this sparsity."""
    from .nm import prune_nm

    n, k = shape
    out = [("bsr", block, block_pruned(n, k, block, sparsity, rng)) for block in plan.blocks if k % block[1] == 0]
    if plan.nm and abs(sparsity - (1 - plan.nm[0] / plan.nm[1])) < 1e-9:
        out.append(("nm", plan.nm, prune_nm(rng.standard_normal((n, k)).astype(np.float32), *plan.nm)))
    return out


def _sparse(ctx: _Context, shape, m: int, sparsity: float, fmt: str, block, weight: np.ndarray, x: np.ndarray) -> None:
    """ours-sparse and scipy CSR on one pruned weight."""
    import scipy.sparse
    import tvm

    from .kernels import make_kernel

    n, _ = shape
    actual = round(1.0 - float(np.count_nonzero(weight)) / weight.size, 4)
    impl = make_kernel((fmt, block), weight, m, ctx.cpu)
    lib = tvm.compile(impl.func.with_attr("global_symbol", impl.name), target=ctx.target).jit()
    dev = tvm.cpu(0)
    y = tvm.runtime.tensor(np.zeros((m, n), np.float32), dev)
    args = [tvm.runtime.tensor(a, dev) for a in (x, *impl.consts)] + [y]
    lib[impl.name](*args)
    _check(y.numpy(), x, weight, f"ours-sparse {fmt} {block} {shape} batch {m} sparsity {sparsity}")
    ctx.add(shape, m, sparsity, fmt, block, "ours-sparse", lambda: ctx.clock.tvm(lib, impl.name, args),
            impl.weight_bytes, actual_sparsity=actual)

    csr = scipy.sparse.csr_matrix(weight)
    xt = np.ascontiguousarray(x.T)
    nbytes = csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes
    ctx.add(shape, m, sparsity, fmt, block, "scipy-csr", lambda: ctx.clock.python(lambda: csr @ xt), nbytes,
            actual_sparsity=actual)


def kernel_suite(
    plan: Plan = FULL,
    target: tvm.target.Target | dict | None = None,
    log: Callable[[str], None] | None = None,
    bandwidth: dict | None = None,
) -> dict:
    """Run the suite; returns the JSON-ready document ``{"format", "meta", "bandwidth", "records"}``.

    Each record: shape [N, K], batch M, sparsity (requested fraction of zeros; 0.0 for the dense
    implementations, which do the same work whatever the values), format ("bsr", "nm" or
    "dense"), block ([r, c] for bsr, [n, m] for nm, null for dense), impl, median_us, p90_us, n
    (timed calls), min_us, attempts (see `Plan.attempts`), pass (the kept one of `passes`),
    roofline_fraction (batch 1 only: format_bytes at the bandwidth of the level it fits in, over
    median_us), roofline_level ("cache" or "dram"), format_bytes (bytes of the weight as that
    implementation stores it) and, for sparse weights, actual_sparsity.

    `bandwidth` replaces the bandwidth measurement (a dict like `measure_bandwidth` returns).
    """
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    import tvm

    from .cpu import cpu_info

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    target = default_target() if target is None else tvm.target.Target(target) if isinstance(target, dict) else target
    started = time.perf_counter()
    load_start = os.getloadavg()
    if bandwidth is None:
        log("measuring memory bandwidth ...")
        bandwidth = measure_bandwidth(threads, quick=plan.max_runs < FULL.max_runs)
    ctx = _Context(target, cpu_info(target), _Clock(plan), bandwidth, threads, log=log)
    rng = np.random.default_rng(0)
    for shape in plan.shapes:  # build (and check) everything first, then time it in passes
        for m in plan.batches:
            x = rng.standard_normal((m, shape[1])).astype(np.float32)
            _dense_baselines(ctx, shape, m, x, rng)
            for sparsity in plan.sparsities:
                for fmt, block, weight in _sparse_weights(plan, shape, sparsity, rng):
                    _sparse(ctx, shape, m, sparsity, fmt, block, weight, x)
        log(f"W{list(shape)}: built and checked ({time.perf_counter() - started:.0f} s)")
    ctx.run(plan.passes)
    meta = {
        "target": str(target),
        "tvm_version": tvm.__version__,
        "tvm_threads": int(tvm.runtime.num_threads()),
        "cpus": threads,
        "cpu_model": _cpu_model(),
        "plan": {"shapes": [list(s) for s in plan.shapes], "batches": list(plan.batches),
                 "sparsities": list(plan.sparsities), "blocks": [list(b) for b in plan.blocks],
                 "nm": list(plan.nm) if plan.nm else None, "min_runs": plan.min_runs, "max_runs": plan.max_runs,
                 "passes": plan.passes},
        "seconds": round(time.perf_counter() - started, 1),
        # 1-minute load average before and after: other processes on the cores distort every median
        "loadavg_start": round(load_start[0], 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
    }
    return {"format": SUITE_FORMAT, "meta": meta, "bandwidth": bandwidth, "records": ctx.records(plan.passes)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


# --- reading the results ---------------------------------------------------------------------------


def _index(records: Sequence[dict]) -> dict:
    return {(tuple(r["shape"]), r["batch"], r["sparsity"], r["format"], tuple(r["block"] or ()), r["impl"]): r
            for r in records}


def _dense(idx: dict, shape, m: int, impl: str) -> dict | None:
    return idx.get((shape, m, 0.0, "dense", (), impl))


def _rows(doc: dict) -> list[dict]:
    """One summary row per shape, batch and sparsity: the best of our sparse kernels against the baselines."""
    idx = _index(doc["records"])
    keys = sorted({(tuple(r["shape"]), r["batch"], r["sparsity"]) for r in doc["records"] if r["impl"] == "ours-sparse"},
                  key=lambda key: (doc["meta"]["plan"]["shapes"].index(list(key[0])), key[1], key[2]))
    rows = []
    for shape, m, sparsity in keys:
        ours = [r for r in doc["records"] if tuple(r["shape"]) == shape and r["batch"] == m
                and r["sparsity"] == sparsity and r["impl"] == "ours-sparse"]
        blocks = [r for r in ours if r["format"] == "bsr"]
        best = min(ours, key=lambda r: r["median_us"])
        best_block = min(blocks, key=lambda r: r["median_us"]) if blocks else None
        baselines = [_dense(idx, shape, m, impl) for impl in ("numpy", "onnxruntime")]
        faster = min((b for b in baselines if b), key=lambda r: r["median_us"], default=None)
        dense = _dense(idx, shape, m, "ours-dense")
        csr = idx.get((shape, m, sparsity, "bsr", (1, 1), "ours-sparse"))
        scipy_csr = idx.get((shape, m, sparsity, "bsr", (1, 1), "scipy-csr"))
        nm_rec = next((r for r in ours if r["format"] == "nm"), None)
        rows.append({"shape": shape, "batch": m, "sparsity": sparsity, "best": best, "best_block": best_block,
                     "baseline": faster, "dense": dense, "csr": csr, "scipy_csr": scipy_csr, "nm": nm_rec,
                     "tvm_default": _dense(idx, shape, m, "tvm-default")})
    return rows


def _label(record: dict | None) -> str:
    if record is None:
        return "-"
    block = record["block"]
    if record["format"] == "nm":
        return f"nm {block[0]}:{block[1]}"
    return f"{record['format']} {block[0]}x{block[1]}" if block else record["format"]


def _ratio(a: dict | None, b: dict | None) -> float | None:
    """How many times faster `b` is than `a` (a.median / b.median)."""
    if not a or not b:
        return None
    return a["median_us"] / b["median_us"]


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "x") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(doc: dict) -> str:
    """The short stdout table: per shape, batch and sparsity, the best sparse kernel against the baselines."""
    bw = doc["bandwidth"]
    lines = [
        f"target {doc['meta']['target']}  TVM threads {doc['meta']['tvm_threads']}  ({doc['meta']['seconds']} s)",
        f"copy bandwidth (read+write): cache {bw['cache_gbs']:.1f} GB/s ({bw['cache_buffer_bytes'] >> 20} MiB buffer), "
        f"dram {bw['dram_gbs']:.1f} GB/s ({bw['dram_buffer_bytes'] >> 20} MiB); LLC {bw['llc_bytes'] >> 20} MiB",
        f"times are medians in µs (best of {doc['meta']['plan'].get('passes', 1)} passes); "
        "'x' = how many times faster the best sparse kernel is; "
        "np/ort = the faster of numpy and onnxruntime; roof = fraction of the bandwidth roofline",
        f"{'N x K':>10} {'M':>3} {'zeros':>5} | {'best sparse':>12} {'µs':>8} {'roof':>5} | {'np/ort':>8} {'x':>6} | "
        f"{'dense':>8} {'x':>6} | {'1x1 µs':>8} {'scipy':>8} {'x':>6} | {'2:4':>8} {'x np/ort':>8}",
    ]
    busy = max(doc["meta"].get("loadavg_start", 0), doc["meta"].get("loadavg_end", 0))
    if busy > 0.5 * doc["meta"]["cpus"]:
        lines.insert(0, f"WARNING: load average {busy:.2f} on {doc['meta']['cpus']} CPUs during the run: other "
                        "processes shared the cores, so times are inflated and noisy; rerun on an idle machine")
    for row in _rows(doc):
        best, base, dense = row["best"], row["baseline"], row["dense"]
        roof = best.get("roofline_fraction")
        lines.append(
            f"{row['shape'][0]:>5}x{row['shape'][1]:<4} {row['batch']:>3} {row['sparsity']:>5.2f} | "
            f"{_label(best):>12} {best['median_us']:>8.1f} {_fmt(roof, '.2f', ''):>5} | "
            f"{_fmt(base and base['median_us'], '.1f', ''):>8} {_fmt(_ratio(base, best)):>6} | "
            f"{_fmt(dense and dense['median_us'], '.1f', ''):>8} {_fmt(_ratio(dense, best)):>6} | "
            f"{_fmt(row['csr'] and row['csr']['median_us'], '.1f', ''):>8} "
            f"{_fmt(row['scipy_csr'] and row['scipy_csr']['median_us'], '.1f', ''):>8} "
            f"{_fmt(_ratio(row['scipy_csr'], row['csr'])):>6} | "
            f"{_fmt(row['nm'] and row['nm']['median_us'], '.1f', ''):>8} {_fmt(_ratio(base, row['nm'])):>8}"
        )
    dense_lines = ["", "dense (µs): ours-dense / numpy / onnxruntime / tvm-default"]
    idx = _index(doc["records"])
    for shape in doc["meta"]["plan"]["shapes"]:
        for m in doc["meta"]["plan"]["batches"]:
            got = [_dense(idx, tuple(shape), m, impl) for impl in ("ours-dense", "numpy", "onnxruntime", "tvm-default")]
            dense_lines.append(f"{shape[0]:>5}x{shape[1]:<4} {m:>3}: " + " / ".join(
                _fmt(r and r["median_us"], ".1f", "") for r in got))
    checks = ["", "issue #3 numbers (this run):"]
    for check in issue_checks(doc):
        checks.append(f"  [{'PASS' if check['ok'] else 'FAIL'}] {check['claim']}: {check['detail']}")
    return "\n".join(lines + dense_lines + checks)


def issue_checks(doc: dict) -> list[dict]:
    """The issue's kernel-level targets evaluated on this run: ``{"claim", "ok", "detail"}`` each.

    "np/ort" is the faster of numpy and onnxruntime for that shape and batch. Claims about a
    sparsity or batch the run did not measure are left out.
    """
    rows = _rows(doc)
    idx = _index(doc["records"])
    checks = []

    def add(claim: str, items: list[tuple[str, bool]]) -> None:
        if items:
            checks.append({"claim": claim, "ok": all(ok for _, ok in items), "detail": "; ".join(d for d, _ in items)})

    items = []
    for shape in doc["meta"]["plan"]["shapes"]:
        for m in doc["meta"]["plan"]["batches"]:
            dense = _dense(idx, tuple(shape), m, "ours-dense")
            base = min((b for b in (_dense(idx, tuple(shape), m, i) for i in ("numpy", "onnxruntime")) if b),
                       key=lambda r: r["median_us"], default=None)
            if dense and base:
                ratio = dense["median_us"] / base["median_us"]
                items.append((f"{shape[0]}x{shape[1]} M{m} {ratio:.2f}", ratio <= 1.5))
    add("ours-dense within 1.5x of np/ort (dense time / np/ort time)", items)

    def pick(batch: int, sparsity: float):
        return [r for r in rows if r["batch"] == batch and abs(r["sparsity"] - sparsity) < 1e-9]

    def shape_name(row):
        return f"{row['shape'][0]}x{row['shape'][1]}"

    add(">= 4x np/ort, batch 1, 90 %, best block", [
        (f"{shape_name(r)} {_label(r['best_block'])} {_ratio(r['baseline'], r['best_block']):.2f}x",
         _ratio(r["baseline"], r["best_block"]) >= 4) for r in pick(1, 0.9) if r["best_block"] and r["baseline"]])
    add(">= 5x ours-dense, batch 1, 90 %, best block", [
        (f"{shape_name(r)} {_ratio(r['dense'], r['best_block']):.2f}x", _ratio(r["dense"], r["best_block"]) >= 5)
        for r in pick(1, 0.9) if r["best_block"] and r["dense"]])
    add(">= 60 % of the bandwidth roofline, batch 1, 90 %, best block", [
        (f"{shape_name(r)} {r['best_block']['roofline_fraction']:.2f} ({r['best_block']['roofline_level']})",
         r["best_block"]["roofline_fraction"] >= 0.6) for r in pick(1, 0.9) if r["best_block"]])
    add(">= 1.5x np/ort, batch 1, 90 %, 1x1", [
        (f"{shape_name(r)} {_ratio(r['baseline'], r['csr']):.2f}x", _ratio(r["baseline"], r["csr"]) >= 1.5)
        for r in pick(1, 0.9) if r["csr"] and r["baseline"]])
    add(">= 2x scipy CSR, batch 1, 90 %, 1x1", [
        (f"{shape_name(r)} {_ratio(r['scipy_csr'], r['csr']):.2f}x", _ratio(r["scipy_csr"], r["csr"]) >= 2)
        for r in pick(1, 0.9) if r["csr"] and r["scipy_csr"]])
    add("best block beats np/ort at 50 %, batch 1", [
        (f"{shape_name(r)} {_label(r['best_block'])} {_ratio(r['baseline'], r['best_block']):.2f}x",
         _ratio(r["baseline"], r["best_block"]) > 1) for r in pick(1, 0.5) if r["best_block"] and r["baseline"]])
    add(">= 2.5x np/ort, batch 16, 90 %, best block", [
        (f"{shape_name(r)} {_label(r['best_block'])} {_ratio(r['baseline'], r['best_block']):.2f}x",
         _ratio(r["baseline"], r["best_block"]) >= 2.5) for r in pick(16, 0.9) if r["best_block"] and r["baseline"]])
    add(">= 1.3x np/ort, batch 1, 2:4", [
        (f"{shape_name(r)} {_ratio(r['baseline'], r['nm']):.2f}x", _ratio(r["baseline"], r["nm"]) >= 1.3)
        for r in pick(1, 0.5) if r["nm"] and r["baseline"]])
    return checks


def write_json(doc: dict, path: Path) -> Path:
    """Write the suite's document as indented JSON (atomically: a partial file never replaces a good one)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


if __name__ == "__main__":
    _doc = kernel_suite(QUICK)
    print(format_table(_doc))
