"""The benchmark loop: config -> variants -> artifacts -> device runs -> store, one result at a time.

Every (variant, batch) becomes exactly one row: measured, or an ERROR row naming the stage that failed. Rows are
committed as they are made, so an interrupted run keeps what it finished and ``--resume`` measures the rest.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import __version__
from .config import RunConfig, TargetProfile, load_target
from .errors import HarnessError
from .models.onnx_io import LoadedModel, load_model, read_onnx
from .paths import cache_dir
from .peers import PEERS, TVM_DEFAULT, Peer
from .records import BuildRecord, DeviceMeta, EnergyRecord, ResultRow, join_layers
from .sparsify import Variant, make_variant
from .sparsify.asis import make_asis_variant
from .sparsify.channel import make_channel_variant
from .sparsify.finetune import Recovery

ENERGY_NOT_MEASURED = "unavailable: not measured (the variant did not run)"


@dataclass(frozen=True)
class Job:
    """One row to produce: a variant of a loaded model at one batch size, compiled by us -- or, with a ``peer``,
    the dense variant run as it is in that peer runtime (nothing compiled; the row's method is the peer's name) --
    or, with ``kernels = "tvm-default"``, the dense variant compiled by TVM's own default pipeline (the baseline
    row named ``tvm-default``)."""

    model: LoadedModel
    variant: Variant
    batch: int
    peer: Peer | None = None
    kernels: str | None = None  # None: the run's kernels (``--kernels``); TVM_DEFAULT for the baseline row
    # the dense row of an as-is model without a dense reference: its own weights through our dense kernel, forced
    force_dense: bool = False
    recovery: Recovery | None = None  # how a fine-tuned variant was recovered ([sparsify.finetune]); None: one-shot

    @property
    def baseline(self) -> str | None:
        """The other dense runtime this row measures (a peer's name, or ``tvm-default``), else None."""
        return self.peer.name if self.peer else TVM_DEFAULT if self.kernels == TVM_DEFAULT else None

    @property
    def method(self) -> str:
        return self.baseline or self.variant.method

    @property
    def key(self) -> str:
        if self.baseline:
            return f"{self.variant.model}/{self.baseline}/0@b{self.batch}"
        return f"{self.variant.key}@b{self.batch}"

    @property
    def dense_key(self) -> str:
        return f"{self.variant.model}/dense/0@b{self.batch}"


def config_hash(cfg: RunConfig) -> str:
    """The config's identity: its text, plus the accelerator when ``--accelerator`` chose one the text does not
    name (a CPU run and a CUDA run of one config are two runs; CPU runs keep the hash of the text alone)."""
    text = cfg.source if cfg.accelerator == "cpu" else f"{cfg.source}\n# accelerator = {cfg.accelerator}"
    return hashlib.sha256(text.encode()).hexdigest()


def baselines(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """(the other dense runtimes each group measures: peer names and ``tvm-default``; the configured peers this run
    leaves out, because they run on the CPU and it measures a GPU). A CUDA run always has ``tvm-default``: TVM's
    dlight GPU schedules are the dense build a sparse one must beat there."""
    names = list(cfg.compare.peers)
    if cfg.accelerator == "cpu":
        return names, []
    left_out = [n for n in names if n in PEERS]
    names = [n for n in names if n not in PEERS]
    return ([TVM_DEFAULT] if TVM_DEFAULT not in names else []) + names, left_out


def load_models(cfg: RunConfig) -> list[LoadedModel]:
    """Load and check every model before anything is compiled or measured (fail fast, with the fix)."""
    from .compile.tvm_adapter import check_importable
    from .models import zoo

    loaded = []
    for spec in cfg.models:
        if spec.torch is not None:  # a PyTorch module: its entry points checked, exported to ONNX (cached)
            from .models.torch_model import materialize_torch

            onnx_path, eval_path = materialize_torch(spec)
        elif spec.path is None:
            onnx_path, eval_path = zoo.materialize(spec.name)
        else:
            onnx_path, eval_path = spec.path, spec.eval_path
        model = load_model(spec.name, onnx_path, eval_path, outputs=spec.outputs, shapes=dict(spec.shapes),
                           vocab=dict(spec.vocab))
        check_importable(read_onnx(model.path), spec.name)  # the model as cut to its outputs
        for batch in spec.batches:
            model.shapes_for_batch(batch)
        loaded.append(model)
    return loaded


def plan_jobs(cfg: RunConfig, models: list[LoadedModel], log=None) -> list[Job]:
    """Dense first in each (model, batch) group, so sparse variants and peers can be compared with it; then the
    other dense runtimes of ``[compare]`` (:func:`baselines`: each runs the dense variant), then the sparse
    variants. With ``[sparsify.finetune]`` every sparse variant of a model that can be trained (a zoo model with
    labels, or a ``torch = ...`` model with ``data``) is the recovered one (fine-tuned here, in numpy or in torch,
    before anything is compiled; cached); ``log`` gets a line per variant trained."""
    from .config import model_finetune
    from .sparsify.finetune import recover, recover_channel

    variant_dir = cache_dir() / "variants"
    sp = cfg.sparsify
    jobs = []
    for spec, model in zip(cfg.models, models):
        methods = sp.methods if spec.methods is None else spec.methods
        dense, force_dense = _dense_variant(spec, model, methods, variant_dir)
        variants = [dense]
        recoveries: list[Recovery | None] = [None]  # one per variant (None: not fine-tuned)
        finetune = model_finetune(sp, spec)
        model_levels = sp.levels if spec.levels is None else spec.levels
        for method in methods:
            if method.name == "as-is":
                variants.append(make_asis_variant(model.name, model.path))
                recoveries.append(None)
                continue
            levels = model_levels if method.fixed_level is None else (method.fixed_level,)
            for level in levels:
                if level <= 0:
                    continue
                prune = {"prune_first": _pick(spec.prune_first, sp.prune_first),
                         "prune_last": _pick(spec.prune_last, sp.prune_last)}
                if method.name == "channel":  # a smaller dense model, fine-tuned like the sparse ones where it can be
                    cut = make_channel_variant(model.name, model.path, level, variant_dir,
                                               prune_first=prune["prune_first"])
                    if cut.params is None:  # nothing could be cut: no row (it would be the dense model), a note
                        variants[0] = replace(variants[0], notes=tuple(dict.fromkeys(variants[0].notes + cut.notes)))
                        continue
                    rec = recover_channel(cut, finetune, variant_dir, log=log) if finetune is not None else None
                    if finetune is not None and rec is None:
                        cut = replace(cut, notes=(*cut.notes, f"{model.name}: channel {level:g}: not fine-tuned (no "
                                                              "training path for this network's cut shape)"))
                    variants.append(rec.variant if rec else cut)
                    recoveries.append(rec)
                elif finetune is not None:  # every sparse variant recovered: its key is the one-shot one's
                    if spec.torch is not None:  # fine-tuned in torch, exported again (sparsify/finetune_torch.py)
                        from .sparsify.finetune_torch import recover_torch

                        rec = recover_torch(spec, model.path, method, level, variant_dir, finetune, log=log, **prune)
                    else:
                        rec = recover(model.name, model.path, method, level, variant_dir, finetune, log=log, **prune)
                    variants.append(rec.variant)
                    recoveries.append(rec)
                else:
                    variants.append(make_variant(model.name, model.path, method, level, variant_dir, **prune))
                    recoveries.append(None)
        names, _ = baselines(cfg)
        for batch in spec.batches:
            jobs.append(Job(model, variants[0], batch, force_dense=force_dense))
            jobs.extend(Job(model, variants[0], batch, PEERS.get(name), None if name in PEERS else name)
                        for name in names)
            jobs.extend(Job(model, v, batch, recovery=r) for v, r in zip(variants[1:], recoveries[1:]))
    return jobs


def _dense_variant(spec, model: LoadedModel, methods, variant_dir: Path) -> tuple[Variant, bool]:
    """(the group's dense variant, whether our dense kernel must be forced on it). For an ``as-is`` model: the
    ``dense = "path.onnx"`` model when given (same inputs and outputs), else the as-is model itself, compiled with
    our dense kernel forced (same math, zeros included): the note says which reference the speedups use."""
    if not any(m.name == "as-is" for m in methods):
        return make_variant(model.name, model.path, None, 0.0, variant_dir), False
    if spec.dense_path is None:
        variant = make_variant(model.name, model.path, None, 0.0, variant_dir)
        note = (f"{model.name}: as-is: no dense model given (dense = \"path.onnx\" in its [[models]]): the dense row "
                f"is the same weights, zeros included, through our dense kernel; its speedups are against that")
        return replace(variant, notes=(note,)), True
    if not spec.dense_path.is_file():
        raise HarnessError(f"model {model.name}: dense model {spec.dense_path} does not exist; give the dense ONNX "
                           f"the as-is model was pruned from, or drop dense")
    import onnx

    def io(path):
        graph = onnx.load(str(path), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        return [i.name for i in graph.input if i.name not in inits], len(graph.output)

    if io(spec.dense_path) != io(model.path):
        raise HarnessError(f"model {model.name}: dense model {spec.dense_path} has other inputs or outputs than "
                           f"{model.path} {io(spec.dense_path)} vs {io(model.path)}; give the dense model it was "
                           f"pruned from")
    variant = make_variant(model.name, spec.dense_path, None, 0.0, variant_dir)
    note = f"{model.name}: as-is: the dense row is {spec.dense_path} (dense = ...); its speedups are against that"
    return replace(variant, notes=(note,)), False


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """The jobs cut into runs of one model and batch (as :func:`plan_jobs` orders them: dense, peers, sparse):
    each group is measured together, its variants taking turns round by round."""
    groups: list[list[Job]] = []
    for job in jobs:
        if groups and (groups[-1][0].variant.model, groups[-1][0].batch) == (job.variant.model, job.batch):
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def accelerator_target(profile: TargetProfile, accelerator: str) -> dict:
    """The TVM target of ``profile`` that ``accelerator`` runs on (its ``[tvm]`` role); one line with the fix when the
    profile has none."""
    target = profile.tvm_targets.get(accelerator) or (profile.tvm_target if accelerator == "cpu" else None)
    if accelerator in profile.unresolved:
        raise HarnessError(f"target {profile.name!r}: {profile.unresolved[accelerator]}; or run with --accelerator cpu")
    if target is None:
        from .config import known_targets, load_target

        with_it = [name for name in known_targets()
                   if accelerator in {**load_target(name).tvm_targets, **load_target(name).unresolved}]
        raise HarnessError(f"target {profile.name!r} has no {accelerator} target ([tvm].{accelerator} in its profile); "
                           f"profiles with one: {', '.join(with_it) or 'none'}; or run with --accelerator cpu")
    return target


def _pick(override: bool | None, default: bool) -> bool:
    return default if override is None else override


def host_metadata() -> dict:
    """Where the harness (compiler side) ran; the device's own metadata comes from the runner."""
    return {"hostname": platform.node(), "os": platform.platform(), "python": platform.python_version(),
            "argv": sys.argv, "harness": __version__}


class Benchmark:
    """Runs the jobs of one config against one target, writing each result to the store as it is measured."""

    #: TVM compiles are not run concurrently (a farm run has one Benchmark per board, in threads)
    compile_lock = threading.Lock()

    def __init__(self, cfg: RunConfig, store, *, progress=None, kernels: str = "ours", device=None,
                 profile: TargetProfile | None = None, artifacts: Path | None = None):
        from .transports.spec import DeviceSpec

        self.cfg = cfg
        self.store = store
        self.board: str | None = None  # the farm file's name of the board (a farm run sets it; rows carry it)
        # a farm board brings its own profile (the config's target is the default)
        self.profile: TargetProfile = profile or load_target(cfg.target)
        self.progress = progress
        self.kernels = kernels
        # --device (a DeviceSpec) overrides the profile's transport; the device column names it (user@host:port)
        self.device_spec: DeviceSpec = device or DeviceSpec()
        self.device = self.device_spec.transport(self.profile).device
        self.python = self.device_spec.python_for(self.profile)
        # what runs the models ("cpu" / "cuda") and the TVM target they are compiled for
        self.accelerator = cfg.accelerator
        self.target = accelerator_target(self.profile, self.accelerator)
        # ``--artifacts DIR``: what ``sparsebench compile`` built; nothing is compiled (or kernel-selected) here
        self.prebuilt = None
        if artifacts is not None:
            from .compile.offline import Prebuilt

            self.prebuilt = Prebuilt.open(artifacts, profile=self.profile.name, accelerator=self.accelerator,
                                          target=self.target, kernels=kernels)
        # The profile's linker must exist (and a local run must be able to load its artifacts): one clear error
        # here, before anything is stored or measured, rather than one ERROR row per variant.
        from .compile.toolchains import check_run_toolchain

        self.toolchain = check_run_toolchain(self.profile, self.device_spec.transport_name(self.profile))
        self._reference: dict[tuple[str, int], tuple[np.ndarray | None, str]] = {}
        # set once the device passed its checks (runtime, memory for the batches): a HarnessError before that means
        # nothing was run (a usage error); after it, the run stopped early (resumable)
        self.preflight_done = False

    def start(self, resume: str | None, *, target: str | None = None, target_json: dict | None = None) -> str:
        """Create the run (or check the one to resume) and return its id. ``target``/``target_json``: the run's
        target columns when not the profile's (a farm run: "farm:NAME" and each profile's TVM target)."""
        from .store import new_run_id

        if resume:
            run = self.store.get_run(resume)
            if run is None:
                raise HarnessError(f"cannot resume: no run {resume!r} in {self.store.path}; see `sparsebench results`")
            if run["config_hash"] != config_hash(self.cfg):
                raise HarnessError(f"cannot resume {resume}: the config changed since it started; "
                                   "resume with the same config or start a new run")
            self.store.acquire_lease(resume)  # a second --resume of a run being measured is refused
            return resume
        run_id = new_run_id()
        self.store.create_run(run_id, name=self.cfg.name, config_toml=self.cfg.source, config_hash=config_hash(self.cfg),
                              target=target or self.profile.name,
                              target_json=self.target if target_json is None else target_json,
                              host=host_metadata(),
                              harness_version=__version__)
        self.store.acquire_lease(run_id)  # released when the store closes or the process exits
        return run_id

    def run(self, run_id: str, jobs: list[Job]) -> dict:
        """Measure the jobs not already in the store. Returns counts {"done", "skipped", "errors"}."""
        from .compile import ArtifactCache
        from .device.preflight import check_batch_memory, check_runtime, host_tvm_version, input_bytes

        done = self.store.completed(run_id)
        todo = [j for j in jobs if (j.key, self.device) not in done]
        counts = {"done": 0, "skipped": len(jobs) - len(todo), "errors": 0}
        cache = ArtifactCache()
        peers = tuple(dict.fromkeys(j.peer for j in todo if j.peer))
        # connecting and the runtime check fail the whole run with one message (rows already stored stay)
        with self.device_spec.transport(self.profile, run_name=run_id) as transport:
            probe = check_runtime(transport, self.python, host_tvm=host_tvm_version(),
                                  optional=tuple(p.module for p in peers))
            if self.accelerator == "cuda":
                from .device.preflight import check_cuda

                check_cuda(transport, self.python)
            sizes = {(j.variant.model, j.batch): j for j in todo}
            check_batch_memory(transport.device, probe, [(model, batch, input_bytes(j.model.shapes_for_batch(batch)))
                                                         for (model, batch), j in sizes.items()])
            self.preflight_done = True
            for note in dict.fromkeys(n for j in todo for n in j.variant.notes):
                self.note(run_id, note)
            for name in baselines(self.cfg)[1]:
                self.note(run_id, f"peer {name}: not run: it runs on the CPU and this run measures the "
                                  f"{self.accelerator} accelerator (its dense baseline is {TVM_DEFAULT}, TVM's default "
                                  f"{self.accelerator} build)")
            todo = self.drop_unavailable_peers(run_id, todo, peers, probe)
            selection = self.select([j for j in todo if not j.peer], transport)
            if self.progress:
                self.progress.start(len(todo))
            for group in _groups(todo):
                for job, row in zip(group, self.run_group(run_id, group, transport, cache, selection)):
                    counts["done"] += 1
                    counts["errors"] += row.verdict == "ERROR"
                    if self.progress:
                        self.progress.advance(job.key, row)
        return counts

    def drop_unavailable_peers(self, run_id: str, jobs: list[Job], peers: tuple[Peer, ...],
                               probe: dict) -> list[Job]:
        """``jobs`` without those of peers the device cannot import: no row for them (nothing was measured, and
        nothing failed), but one note on stderr and in the run's notes, which the report shows."""
        missing = {}
        for peer in peers:
            why = peer.unavailable(probe)
            if why:
                missing[peer] = why
                self.note(run_id, f"peer {peer.name}: unavailable on {self.device} ({why})")
        return [j for j in jobs if j.peer not in missing]

    def note(self, run_id: str, note: str) -> None:
        """One line on stderr and in the run's notes (the report shows them; kept once however often said)."""
        print(note, file=sys.stderr)
        self.store.add_note(run_id, note)

    def request(self, job: Job):
        """What to compile for ``job`` (without its kernel plan)."""
        from .compile.cache import BuildRequest

        return BuildRequest(job.variant.onnx_path, job.variant.sha256, job.model.shapes_for_batch(job.batch),
                            self.target, job.kernels or self.kernels, self.profile.toolchain)

    def select(self, jobs: list[Job], transport):
        """The kernel-selection step: every candidate kernel of the jobs' layers timed on the device (or taken
        from its timing cache); returns the :class:`~harness.compile.select.Selection` the builds follow."""
        from .compile.select import select_kernels

        if self.prebuilt is not None:  # chosen when the artifacts were compiled (their layer records say how)
            return None
        log = (lambda msg: print(msg, file=sys.stderr)) if self.progress else None
        selection = select_kernels([self.request(j) for j in jobs], transport=transport, python=self.python,
                                   toolchain=self.profile.toolchain, timeout_s=self.cfg.measure.timeout_s, log=log)
        if selection.plan.layers:
            print(f"kernel selection on {transport.device}: {len(selection.plan.layers)} layers, "
                  f"{selection.timed} candidate kernels timed there in {selection.seconds:.1f} s, "
                  f"{selection.reused} from its timing cache" + (f"; {selection.plan.note}" if selection.plan.note
                                                                 else ""), file=sys.stderr)
        return selection

    def run_group(self, run_id: str, group: list[Job], transport, cache, selection=None) -> list[ResultRow]:
        """Compile the variants of one model and batch, then measure them together on the device -- in rounds, the
        variants taking turns, so drift in clocks or load hits them alike -- and store one row each. A variant that
        does not compile is stored as its ERROR row at once; the others are measured."""
        from .device.session import run_group_on_device

        rows: dict[str, ResultRow] = {}
        ready: list[tuple[Job, ResultRow, Path]] = []
        for job in group:
            row = self._new_row(run_id, job, transport)
            if job.peer:
                artifact = job.variant.onnx_path  # the peer runs the dense model as it is: nothing to compile
            else:
                row, artifact = self.compile(row, job, cache, selection)
                if row.error:
                    self.store.add_result(row)
                    rows[job.key] = row
                    continue
            ready.append((job, row, artifact))
        if ready:
            first = ready[0][0]
            if self.progress:
                self.progress.step(f"run {first.variant.model}@b{first.batch}: {len(ready)} variant(s) in "
                                   f"{self.cfg.measure.rounds} interleaved rounds")
            devs = run_group_on_device(transport, models=[(artifact, job.peer) for job, _, artifact in ready],
                                       inputs=first.model.eval_inputs, batch=first.batch, measure=self.cfg.measure,
                                       python=self.python, label=f"{first.variant.model}@b{first.batch}",
                                       device=self.accelerator)
            outputs = {job.key: dev.outputs for (job, _, _), dev in zip(ready, devs)}
            for (job, row, _), dev in zip(ready, devs):
                rows[job.key] = self._finish(run_id, job, row, dev, outputs)
        return [rows[job.key] for job in group]

    def _new_row(self, run_id: str, job: Job, transport) -> ResultRow:
        """The job's row before anything is measured: an ERROR row until measured, so every early store of it
        carries its stage's error."""
        return ResultRow(
            run_id=run_id, variant_key=job.key, device=self.device, model=job.variant.model,
            model_sha256=job.model.sha256, variant_sha256=job.variant.sha256, method=job.method,
            sparsity_target=job.variant.sparsity_target, sparsity_actual=job.variant.sparsity_actual,
            block=job.variant.block_str, batch=job.batch, target=self.profile.name,
            target_json=self.target, transport=transport.name, accelerator=self.accelerator,
            energy_status=ENERGY_NOT_MEASURED,
            accuracy_oneshot=job.recovery.accuracy_oneshot if job.recovery else None,
            finetune_s=job.recovery.train_s if job.recovery else None,
            recovery=job.recovery.record if job.recovery else None,
            verdict="ERROR",
        )

    def _finish(self, run_id: str, job: Job, row: ResultRow, dev, outputs: dict) -> ResultRow:
        """The row of one measured job: statistics over all its rounds, quality against the dense variant and the
        reference, the verdict; stored."""
        from .measure import latency_stats, quality_figures, verdict
        from .measure.stats import model_time

        m = self.cfg.measure
        overhead = {**(row.overhead or {}), **{f"{k}_s": v for k, v in dev.steps_s.items()}}
        if dev.result:
            overhead.update({f"device_{k}_s": v for k, v in (dev.result.get("phases_s") or {}).items()})
            meta = dev.result.get("device_meta")
            if self.board:
                meta = {**(meta or {}), "board": self.board}
            row = replace(row, device_meta=DeviceMeta.from_json(meta) if meta else None)
        row = replace(row, overhead=overhead)
        if dev.error:
            row = replace(row, error=dev.error)
            self.store.add_result(row)
            return row

        result = dev.result
        stats = latency_stats(result["latencies_ns"], [r["n"] for r in result.get("rounds") or ()],
                              max_spread=m.max_spread)
        # sparse rows compare with the dense row of the same run (this group's, or one stored before a --resume)
        dense = outputs.get(job.dense_key)
        if dense is None:
            dense = self.store.outputs(run_id, job.dense_key, self.device)
        reference, why_none = self.reference(job)
        quality = quality_figures(dev.outputs, labels=job.model.eval_y, dense=dense, reference=reference)
        clocks = [f for r in result.get("rounds") or () for f in (r.get("freq_khz") or ())]
        clock_range = (min(clocks), max(clocks)) if clocks else None
        status, reasons = verdict(stats, quality, min_valid_runs=m.min_valid_runs, ref_rtol=m.ref_rtol,
                                  max_ci=m.max_ci, max_spread=m.max_spread, min_rounds=m.rounds,
                                  clock_range_khz=clock_range, max_clock_change=m.max_clock_change)
        if why_none:
            reasons.append(f"reference evaluation failed: {why_none}")
        energy = EnergyRecord.from_json(result.get("energy")
                                        or {"status": "unavailable: the runner reported no energy record"})
        row = replace(
            row.with_latency(stats).with_energy(energy), warmup_runs=result["warmup_runs"],
            accuracy=quality.accuracy, top1_agreement=quality.top1_agreement, max_abs_err=quality.max_abs_err,
            ref_max_abs_err=quality.ref_max_abs_err, peak_rss_mb=result["peak_rss_mb"], verdict=status,
            reasons=tuple(reasons), error=None, clock_range_khz=clock_range, **model_time(result.get("model_time_ms")),
        )
        self.store.add_result(row, samples_ns=result["latencies_ns"], outputs=dev.outputs)
        return row

    def compile(self, row: ResultRow, job: Job, cache, selection) -> tuple[ResultRow, Path | None]:
        """Build ``job``'s variant: (the row with its build record, per-layer kernels and the build's error if
        any; the artifact)."""
        from .compile.tvm_adapter import build

        if self.prebuilt is not None:
            artifact, entry, error = self.prebuilt.lookup(job.key, job.variant.sha256)
            layers = join_layers(job.variant.layers, entry.get("layers") or ())
            if job.force_dense and error is None and any(l.kernel != "dense" for l in layers):
                error = ("run: the artifacts do not run our dense kernel on every layer of the as-is model, which "
                         "its dense row needs; give dense = \"path.onnx\" for a dense reference")
            row = replace(row, layers=_layer_extras(job.variant, layers), overhead={"compile_cached": True},
                          error=error)
            return row.with_build(self.prebuilt.build_record(entry)), artifact
        if self.progress:
            self.progress.step(f"compile {job.key}")
        req = self.request(job)
        if selection is not None:
            req = replace(req, plan=selection.plan_for(req))
        if job.force_dense:
            if req.plan is None or not req.plan.layers:
                return replace(row, error="compile: cannot force our dense kernel on the as-is model (no kernel plan "
                                          "for this build); give dense = \"path.onnx\" for a dense reference"), None
            req = replace(req, plan=_dense_plan(req.plan))
        with self.compile_lock:
            built = build(req, cache)
        row = replace(row, layers=_layer_extras(job.variant, join_layers(job.variant.layers, built.layers)),
                      overhead={"compile_cached": built.cached}, error=built.error)
        return row.with_build(BuildRecord.from_result(built)), built.artifact

    def reference(self, job: Job) -> tuple[np.ndarray | None, str]:
        """(reference outputs of the variant's own ONNX -- pruned weights, dense math -- or None, why none).
        Evaluated at the job's batch (the model's own, for a fixed-batch model), cached per variant and batch; a
        failure makes the row INVALID with the reason, never a silent pass."""
        from .models.reference import reference_outputs

        key = (job.variant.sha256, job.batch)
        if key not in self._reference:
            try:
                outputs, _ = reference_outputs(job.variant.onnx_path, job.model.eval_inputs, job.batch)
                self._reference[key] = (outputs, "")
            except Exception as err:  # any evaluator failure: reported in the row's reasons
                self._reference[key] = (None, f"{type(err).__name__}: {err}"[:500])
        return self._reference[key]


#: the layer records' rule for the dense row of an as-is model without a dense reference
FORCED_DENSE = "dense kernel forced: the dense reference of an as-is model (its own weights, zeros included)"


def _dense_plan(plan):
    """``plan`` with our dense kernel on every layer (the dense row of an as-is model without a dense reference)."""
    from .compile.plan import LayerPlan

    return replace(plan, layers=tuple(LayerPlan(layer.key, layer.shape, layer.batch, "dense", ("dense", None), "rule",
                                                rule=FORCED_DENSE) for layer in plan.layers))


def _layer_extras(variant: Variant, layers):
    """The per-layer findings of as-is (``pattern``) and channel pruning (``detail``) added to the layer records."""
    found = {l.weight: {k: v for k, v in (("pattern", l.pattern), ("detail", l.detail)) if v}
             for l in variant.layers}
    return tuple(replace(rec, extra={**rec.extra, **found.get(rec.weight, {})}) if found.get(rec.weight) else rec
                 for rec in layers)
