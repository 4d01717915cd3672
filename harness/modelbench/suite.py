"""The model suite behind `sparsebench models`: each model's dense build and its best 90 % 16x1 block-sparse build
against onnxruntime, on this machine, in this process.

Per model, the same path as `sparsebench run` takes up to the artifact: load and check the model
(`harness.models.onnx_io.load_model`), prune (`harness.sparsify.make_variant`), choose each layer's kernel by
timing the candidates on the device (`harness.compile.select.select_kernels` through the local transport: the
"best sparse build" is the one whose every layer got its fastest kernel), compile (`tvm_adapter.build`, cached).
Then, unlike `sparsebench run`, the artifacts are loaded in this process (the board runner's `TvmModel` and
`OrtModel`, TVM runtime VM and onnxruntime with the same thread count) and timed in interleaved rounds
(`timing.interleaved`), after their first output is checked against onnxruntime on evaluation rows.

A model that cannot be made (a missing exporter), compiled or checked becomes a record with its status and the
stage that failed, never an aborted suite.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .models import SuiteModel
from .timing import RoundPlan, interleaved, paired_ratio

#: Format of the JSON document `model_suite` returns (bump on incompatible changes).
SUITE_FORMAT = "sparsebench-models/1"
MEASURED_HOW = ("in-process on the host: the exported artifacts in TVM's runtime VM (harness.board.runner.TvmModel) "
                "and the ONNX models in onnxruntime (OrtModel) in this Python process, interleaved rounds of "
                "per-call perf_counter timings; not the board runner's subprocess protocol that `sparsebench run` "
                "uses (harness/board/runner.py)")


@dataclass(frozen=True)
class Plan:
    """What the suite does per model.

    Attributes:
        batch: batch size every model is compiled and timed at (the exports fix batch 1).
        sparsity: fraction of each prunable weight's blocks zeroed for the sparse build.
        block: the pruning block (rows x cols of the [N, K] weight view).
        rounds: timing (see :class:`timing.RoundPlan`).
        check_rows: evaluation rows whose first output is compared with onnxruntime's.
        rtol: a build is correct when max |y - y_ort| <= rtol x max(1, max |y_ort|).
        dense_target: the dense build's time over onnxruntime's must be at most this.
    """

    batch: int = 1
    sparsity: float = 0.9
    block: tuple[int, int] = (16, 1)
    rounds: RoundPlan = RoundPlan()
    check_rows: int = 4
    rtol: float = 1e-4
    dense_target: float = 1.5


FULL = Plan()
QUICK = Plan(rounds=RoundPlan(rounds=5, budget_s=0.15, warmup_s=0.1), check_rows=2)


def _failure(stage: str, err: BaseException) -> str:
    last = traceback.format_exception_only(type(err), err)[-1].strip()
    return f"{stage}: {last[:1000]}"


def _kernels(layers) -> dict[str, int]:
    """How many layers got which kernel, as ``op:kernel`` -> count (``conv:default``: left to TVM)."""
    counts: dict[str, int] = {}
    for layer in layers:
        key = f"{layer.get('op', 'matmul')}:{layer.get('kernel')}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _max_rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(1.0, float(np.abs(ref).max())))


class _Suite:
    """What every model shares: the plan, the target profile, the open local transport, the artifact cache."""

    def __init__(self, plan: Plan, transport, threads: int, log: Callable[[str], None]):
        from ..compile import ArtifactCache
        from ..config import load_target
        from ..transports.spec import DeviceSpec

        self.plan, self.transport, self.threads, self.log = plan, transport, threads, log
        self.profile = load_target("local")
        self.python = DeviceSpec().python_for(self.profile)
        self.cache = ArtifactCache()

    def model(self, model: SuiteModel) -> dict:
        """One model's record (see :func:`model_suite`)."""
        rec = {"model": model.name, "kind": model.kind, "source": model.source, "description": model.description,
               "batch": self.plan.batch}
        why = model.unavailable()
        if why:
            return {**rec, "status": "skipped", "reason": why}
        started = time.perf_counter()
        try:
            self._measure(model, rec)
        except _Stop as stop:
            rec.update(status="error", error=str(stop))
        rec["wall_s"] = round(time.perf_counter() - started, 1)
        return rec

    def _measure(self, model: SuiteModel, rec: dict) -> None:
        from ..board.runner import OrtModel, TvmModel, as_batches

        loaded, variants = self._prepare(model, rec)
        builds = self._build(loaded, variants, rec)
        names = [s.name for s in loaded.inputs]
        chunks = [c for c, _ in as_batches(list(loaded.eval_inputs.values()), self.plan.batch)]
        chunks = chunks[:max(1, self.plan.check_rows // self.plan.batch)]
        engines = {}
        try:
            ort = OrtModel(str(variants["dense"].onnx_path), names, self.threads)
        except Exception as err:  # noqa: BLE001 - onnxruntime refusing the model is the model's row, not the suite's
            raise _Stop(_failure("onnxruntime", err)) from None
        engines["ort"] = (ort, ort.feed(chunks[0]))
        for which, variant in variants.items():
            entry = rec[which]
            if builds[which].error:
                continue
            try:
                tvm_model = TvmModel(str(builds[which].artifact), "cpu")
                reference = ort if which == "dense" else OrtModel(str(variant.onnx_path), names, self.threads)
                errors = [_max_rel_err(tvm_model.first_output(tvm_model.feed(c)), reference.first_output(
                    reference.feed(c))) for c in chunks]
            except Exception as err:  # noqa: BLE001 - a runtime failure is this build's row
                entry.update(correct=False, error=_failure("run", err))
                continue
            entry.update(max_rel_err=float(f"{max(errors):.3g}"), correct=max(errors) <= self.plan.rtol,
                         checked_rows=len(chunks) * self.plan.batch)
            if entry["correct"]:
                engines[which] = (tvm_model, tvm_model.feed(chunks[0]))
        self.log(f"{model.name}: timing {', '.join(engines)} in {self.plan.rounds.rounds} interleaved rounds")
        timings, rounds = interleaved({name: (lambda m=m, fed=fed: m.run(fed)) for name, (m, fed) in engines.items()},
                                      self.plan.rounds)
        rec["ort"] = {"timing": timings["ort"]}
        for which in ("dense", "sparse"):
            if which in timings:
                rec[which]["timing"] = timings[which]
        rec["rounds_ms"] = rounds
        rec["paired"] = {key: paired_ratio(rounds, slow, fast) for key, slow, fast in (
            ("dense_over_ort", "dense", "ort"), ("sparse_over_ort", "sparse", "ort"),
            ("sparse_over_dense", "sparse", "dense"))}
        rec["ratios"] = _ratios(timings)
        rec["status"] = "ok"

    def _prepare(self, model: SuiteModel, rec: dict):
        """Export (or take from the zoo), load and check the model; its dense and pruned variants."""
        from ..compile.tvm_adapter import check_importable
        from ..config import Method
        from ..errors import HarnessError
        from ..models.onnx_io import load_model, read_onnx
        from ..paths import cache_dir
        from ..sparsify import make_variant

        try:
            self.log(f"{model.name}: export")
            onnx_path, eval_path = model.materialize()
        except Exception as err:  # noqa: BLE001 - an exporter failure is this model's row
            raise _Stop(_failure("export", err)) from None
        rec["onnx"] = str(onnx_path)
        try:
            loaded = load_model(model.name, onnx_path, eval_path, outputs=model.outputs)
            check_importable(read_onnx(loaded.path), model.name)
            rec["inputs"] = [s.to_json() for s in loaded.shapes_for_batch(self.plan.batch)]
            folder = cache_dir() / "variants"
            dense = make_variant(model.name, loaded.path, None, 0.0, folder)
            sparse = make_variant(model.name, loaded.path, Method("block", self.plan.block), self.plan.sparsity,
                                  folder)
        except (HarnessError, OSError, ValueError) as err:
            raise _Stop(_failure("load", err)) from None
        rec["sparse_layers"] = {"pruned": sum(layer.pruned for layer in sparse.layers), "of": len(sparse.layers),
                                "sparsity_actual": round(sparse.sparsity_actual, 4)}
        return loaded, {"dense": dense, "sparse": sparse}

    def _build(self, loaded, variants: dict, rec: dict) -> dict:
        """Kernel selection on this machine (the local transport), then both builds; records compile facts."""
        from ..compile.cache import BuildRequest
        from ..compile.select import select_kernels
        from ..compile.tvm_adapter import build

        shapes = loaded.shapes_for_batch(self.plan.batch)
        requests = {which: BuildRequest(v.onnx_path, v.sha256, shapes, self.profile.tvm_target, "ours",
                                        self.profile.toolchain) for which, v in variants.items()}
        self.log(f"{loaded.name}: kernel selection and compile")
        started = time.perf_counter()
        selection = select_kernels(list(requests.values()), transport=self.transport, python=self.python,
                                   toolchain=self.profile.toolchain, timeout_s=900,
                                   log=lambda msg: self.log(f"{loaded.name}: {msg}"))
        rec["selection"] = {"seconds": round(selection.seconds, 1), "timed": selection.timed,
                            "reused": selection.reused, "note": selection.plan.note}
        builds = {}
        for which, req in requests.items():
            built = build(replace(req, plan=selection.plan_for(req)), self.cache)
            builds[which] = built
            rec[which] = {"compiled": built.error is None, "error": built.error, "cached": built.cached,
                          "compile_s": None if built.compile_s is None else round(built.compile_s, 2),
                          "kernels": _kernels(built.layers), "correct": False}
        # what this run spent preparing: selection plus the builds it did not find in the cache
        rec["compile_wall_s"] = round(time.perf_counter() - started, 1)
        if builds["dense"].error and builds["sparse"].error:
            raise _Stop(builds["dense"].error)
        return builds


class _Stop(Exception):
    """A model's stage failed: the message (``stage: error``) is its record's error."""


def _ratios(timings: dict) -> dict:
    """Time ratios of the overall medians: dense/ORT, sparse/ORT, sparse/dense (below 1: the first is faster)."""
    def over(a: str, b: str):
        if a in timings and b in timings:
            return round(timings[a]["median_ms"] / timings[b]["median_ms"], 3)
        return None

    return {"dense_over_ort": over("dense", "ort"), "sparse_over_ort": over("sparse", "ort"),
            "sparse_over_dense": over("sparse", "dense")}


def model_suite(models: list[SuiteModel], plan: Plan = FULL, log: Callable[[str], None] | None = None) -> dict:
    """Run the suite over ``models``; returns the JSON-ready document ``{"format", "meta", "models", "targets"}``.

    Each model record: model, kind, source, description, batch, status (``ok``, ``skipped`` with ``reason``, or
    ``error`` with ``error`` = "stage: message"), onnx (its path), inputs, sparse_layers (pruned / of, the
    variant's sparsity_actual), selection (kernel selection: seconds, candidates timed and reused, note), ``dense``
    and ``sparse`` (compiled, error, cached, compile_s: seconds of TVM compile, kernels: ``op:kernel`` -> layer
    count, correct, max_rel_err: max |y - y_ort| / max(1, max |y_ort|), checked_rows, timing), ``ort`` (timing),
    ratios (time ratios of the medians), paired (the same ratios round by round: median/min/max), rounds_ms (each
    round's per-engine median), compile_wall_s (selection + builds in this run, s) and wall_s (the whole model, s).
    A timing: median_ms, p10_ms, p90_ms, min_ms, n (calls) over all rounds.
    """
    from ..board.meta import set_threads
    from ..transports.spec import DeviceSpec
    from .checks import target_checks

    threads = set_threads(None)  # before TVM's pool starts: onnxruntime gets the same number
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    records = []
    with DeviceSpec().transport() as transport:
        suite = _Suite(plan, transport, threads, log)
        for model in models:
            record = suite.model(model)
            log(f"{model.name}: {record['status']}" + (f" ({record.get('reason') or record.get('error')})"
                                                      if record["status"] != "ok" else ""))
            records.append(record)
    doc = {"format": SUITE_FORMAT, "meta": _meta(plan, threads, started, load_start), "models": records}
    doc["targets"] = target_checks(doc)
    return doc


def _meta(plan: Plan, threads: int, started: float, load_start: float) -> dict:
    from dataclasses import asdict

    from ..compile.tvm_adapter import tvm_version
    from ..config import load_target
    from ..kernelbench.suite import _cpu_model
    from .models import package_version

    # from the installed distributions' metadata: importing torch just to read its version costs seconds
    versions = {name: package_version(name) for name in ("onnx", "onnxruntime", "torch", "torchvision", "onnxscript",
                                                         "sklearn", "skl2onnx")}
    return {
        "measured": MEASURED_HOW,
        "target": load_target("local").tvm_target,
        "tvm_version": package_version("apache-tvm") or tvm_version(),  # the wheel's, without importing TVM
        "tvm_threads": int(os.environ["TVM_NUM_THREADS"]),
        "ort_threads": threads,
        "cpus": threads,
        "cpu_model": _cpu_model(),
        "host": platform.node(),
        "python": platform.python_version(),
        "versions": versions,
        "plan": {**asdict(plan), "block": list(plan.block)},
        "seconds": round(time.perf_counter() - started, 1),
        # 1-minute load average before and after: other processes on the cores distort every median
        "loadavg_start": round(load_start, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
    }
