"""The kernel suite behind `sparsebench kernels`: our kernels against what a user would pick instead.

For every weight shape, batch, sparsity and storage format, in one process on this machine:
our sparse kernel (``ours-sparse``, built by `schedules.kernels.make_kernel`, the factory the rewrite
uses), our packed dense kernel (``ours-dense``) and the peers of `peers` (``tvm-default``, ``numpy``,
``onnxruntime``, ``scipy-csr``). It also measures memory bandwidth and gives every batch-1
measurement its fraction of the bandwidth roofline.

* each measurement as `timer.Clock` takes it: at least `Plan.min_runs` calls, each timed on its
  own: median, p90 and n are reported;
* dense implementations do the same work whatever the weight's values, so they are timed once
  per shape and batch (records with sparsity 0.0); scipy CSR runs on each sparse weight;
* everything is built and checked against numpy first, then timed in `Plan.passes` rounds over
  all measurements; each record keeps its best round (lowest median), and a measurement whose
  median is far above its fastest call is retried at once (`Plan.attempts`). Other processes
  only ever add time: on a shared 2-core machine this keeps their bursts out of the table.

TVM sizes its thread pool once per process, from TVM_NUM_THREADS or else (on x86) half the
logical CPUs, assuming SMT: a single thread on a 2-vCPU VM, while numpy uses both. We set
TVM_NUM_THREADS to the CPU count unless the caller did, before the pool exists.

All TVM calls go through `schedules.build`; this package does not import TVM.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import peers
from .bandwidth import measure_bandwidth, measure_read_curve, read_roofline
from .document import SUITE_FORMAT
from .plan import FULL, Plan, sparse_weights
from .timer import Clock, Timing


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
    clock: Clock
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
            roof = {"roofline_fraction": None}
            if job.fields["batch"] == 1 and job.nbytes:
                n, k = job.fields["shape"]
                activations = 4 * job.fields["batch"] * (n + k)  # x read and y written, fp32
                roof = read_roofline(job.nbytes + activations, timing, self.bandwidth["read_curve"])
            out.append({
                **job.fields,
                "median_us": round(timing.median_us, 3), "p90_us": round(timing.p90_us, 3), "n": timing.n,
                "min_us": round(timing.min_us, 3), "attempts": timing.attempts, "pass": job.best_pass,
                "passes": passes,
                **roof, "format_bytes": job.nbytes,
            })
        return out


def _check(out: np.ndarray, x: np.ndarray, weight: np.ndarray, what: str) -> None:
    """Our kernels must compute the product they are timed on (relative 1e-4 of the output scale)."""
    ref = x.astype(np.float64) @ weight.T.astype(np.float64)
    err = float(np.abs(out - ref).max()) / max(1.0, float(np.abs(ref).max()))
    if err > 1e-4:
        raise AssertionError(f"{what}: max relative error {err:.2e}")


def _ours(ctx: _Context, candidate, weight: np.ndarray, m: int, x: np.ndarray, what: str):
    """Our kernel for `candidate` built, run once and checked; returns (call, impl)."""
    from schedules.build import kernel_call
    from schedules.kernels import make_kernel

    impl = make_kernel(candidate, weight, m, ctx.cpu)
    call = kernel_call(impl, x, weight.shape[0], ctx.target)
    call()
    _check(call.output(), x, weight, what)
    return call, impl


def _dense(ctx: _Context, shape, m: int, x: np.ndarray, rng) -> None:
    """ours-dense, tvm-default, numpy and onnxruntime on a dense random weight."""
    n, k = shape
    weight = rng.standard_normal((n, k)).astype(np.float32)
    call, impl = _ours(ctx, ("dense", None), weight, m, x, f"ours-dense {shape} batch {m}")
    ctx.add(shape, m, 0.0, "dense", None, "ours-dense", lambda: ctx.clock.tvm(call), impl.weight_bytes)

    default = peers.tvm_default(weight, x, ctx.target)
    slow = ctx.clock.plan.slow_min_runs
    ctx.add(shape, m, 0.0, "dense", None, "tvm-default", lambda: ctx.clock.tvm(default, min_runs=slow, warmup=1),
            weight.nbytes)
    for impl_name, peer in (("numpy", peers.numpy_matmul(weight, x)),
                            ("onnxruntime", peers.onnxruntime_matmul(weight, x, ctx.threads))):
        ctx.add(shape, m, 0.0, "dense", None, impl_name, lambda call=peer.call: ctx.clock.python(call), peer.nbytes)


def _sparse(ctx: _Context, shape, m: int, sparsity: float, fmt: str, block, weight: np.ndarray, x: np.ndarray) -> None:
    """ours-sparse and scipy CSR on one pruned weight."""
    actual = round(1.0 - float(np.count_nonzero(weight)) / weight.size, 4)
    what = f"ours-sparse {fmt} {block} {shape} batch {m} sparsity {sparsity}"
    call, impl = _ours(ctx, (fmt, block), weight, m, x, what)
    ctx.add(shape, m, sparsity, fmt, block, "ours-sparse", lambda: ctx.clock.tvm(call), impl.weight_bytes,
            actual_sparsity=actual)
    csr = peers.scipy_csr(weight, x)
    ctx.add(shape, m, sparsity, fmt, block, "scipy-csr", lambda: ctx.clock.python(csr.call), csr.nbytes,
            actual_sparsity=actual)


def kernel_suite(
    plan: Plan = FULL,
    target=None,
    log: Callable[[str], None] | None = None,
    bandwidth: dict | None = None,
) -> dict:
    """Run the suite; returns the JSON-ready document ``{"format", "meta", "bandwidth", "records"}``.

    `target`: a ``tvm.target.Target``, a target dict, or None (`schedules.build.default_target`).

    Each record: shape [N, K], batch M, sparsity (requested fraction of zeros; 0.0 for the dense
    implementations, which do the same work whatever the values), format ("bsr", "nm" or
    "dense"), block ([r, c] for bsr, [n, m] for nm, null for dense), impl, median_us, p90_us, n
    (timed calls), min_us, attempts (see `Plan.attempts`), pass (the kept one of `passes`),
    for batch 1: working_set_bytes (format_bytes + the fp32 activations read and written), roofline_gbs (the read
    bandwidth curve at that size) and roofline_fraction (working set at that bandwidth over median_us, never above
    1 + tolerance; beyond it roofline_fraction is null and roofline_error says the probe is wrong), format_bytes
    (bytes of the weight as that implementation stores it) and, for sparse weights, actual_sparsity.

    `bandwidth` replaces the bandwidth measurement (a dict like `measure_bandwidth` returns).
    """
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    from schedules.build import as_target, runtime_info
    from schedules.cpu import cpu_info

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    target = as_target(target)
    started = time.perf_counter()
    load_start = os.getloadavg()
    quick = plan.max_runs < FULL.max_runs
    if bandwidth is None:
        log("measuring memory bandwidth ...")
        bandwidth = measure_bandwidth(threads, quick=quick)
    if "read_curve" not in bandwidth:
        log("measuring the read-bandwidth curve (16 KiB ... past the LLC) ...")
        bandwidth = {**bandwidth, "read_curve": measure_read_curve(target, threads, quick=quick)}
    ctx = _Context(target, cpu_info(target), Clock(plan), bandwidth, threads, log=log)
    rng = np.random.default_rng(0)
    for shape in plan.shapes:  # build (and check) everything first, then time it in passes
        for m in plan.batches:
            x = rng.standard_normal((m, shape[1])).astype(np.float32)
            _dense(ctx, shape, m, x, rng)
            for sparsity in plan.sparsities:
                for fmt, block, weight in sparse_weights(plan, shape, sparsity, rng):
                    _sparse(ctx, shape, m, sparsity, fmt, block, weight, x)
        log(f"W{list(shape)}: built and checked ({time.perf_counter() - started:.0f} s)")
    ctx.run(plan.passes)
    runtime = runtime_info()
    meta = {
        "target": str(target),
        "tvm_version": runtime["tvm_version"],
        "tvm_threads": runtime["tvm_threads"],
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
