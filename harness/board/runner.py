"""sparsebench device-side runner: load the compiled variants of one model and batch, time them in interleaved
rounds, evaluate them, describe the device.

Part of the board package: runs on boards with only numpy and the TVM *runtime* (``TVM_USE_RUNTIME_LIB=1``: no
compiler, ``tvm.runtime.vm.VirtualMachine``), and imports nothing from sparsebench.

Usage: ``python -m sparsebench_board.runner JOB.json``, run in the folder that holds the package. The job lists
``models`` (each an ``artifact`` and its ``engine``: ``"tvm"``, the default, or ``"onnxruntime"``, a peer
runtime, the artifact then an ONNX file), an ``.npz`` of evaluation inputs (one array per model input, in the
model's input order), the batch, the timing rules and the energy settings; the runner writes ``result.json`` (and
``outputs_<i>.npy``: the first output of model i for every evaluation row) next to the job file and prints the
result JSON as its last stdout line.

Timing: ``rounds`` rounds, the models taking turns (A B C A B C ...) so that drift hits them alike; each round
warms up afresh (until both ``warmup_runs`` and ``warmup_s``) and then times every iteration on its own
(perf_counter_ns around one call, with a device sync) until both its share of ``min_runs`` and ``min_s`` are
reached, capped at ``max_runs``. Means of batches would hide the variation we report. A first, settling round is
discarded. While a model's median is not yet precise (``max_ci``) or too few of its rounds agree (within
``max_spread``: a majority and at least ``rounds``), every model gets another round (the rotation stays the same),
up to ``max_rounds`` and ``extend_s`` seconds (``rounds.py``).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from . import rounds
from .meta import cpu_freqs_khz, device_metadata, set_affinity, set_threads


def tvm_device(tvm, device: str):
    """``tvm.device(device, 0)``, after loading TVM's CUDA runtime library for ``"cuda"``: with
    TVM_USE_RUNTIME_LIB=1 TVM does not load it, so a CUDA module (even one with a pre-compiled fatbin) fails to load
    ("ffi.Module.load_from_bytes.cuda is not registered")."""
    if device == "cuda":
        import ctypes

        runtime = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve()
        ctypes.CDLL(str(runtime.parent / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_LOCAL)
    return tvm.device(device, 0)


def _first_output(out):
    """The first tensor of a VM result (a Tensor, or an Array/tuple of them)."""
    while not hasattr(out, "numpy"):
        out = out[0]
    return out


class TvmModel:
    """A compiled artifact in the TVM runtime's VM: ``feed`` puts a chunk on the device once, ``run`` is one timed
    call (synchronised), ``first_output`` the model's first output as numpy."""

    def __init__(self, artifact: str, device: str):
        import tvm
        from tvm.runtime.vm import VirtualMachine  # what relax.VirtualMachine is; works without the compiler

        self.tvm = tvm
        self.dev = tvm_device(tvm, device)
        self.vm = VirtualMachine(tvm.runtime.load_module(artifact), self.dev)
        self.main = self.vm["main"]

    def feed(self, chunks: list):
        return [self.tvm.runtime.tensor(c, self.dev) for c in chunks]

    def run(self, fed) -> None:
        self.main(*fed)
        self.dev.sync()

    def first_output(self, fed):
        return _first_output(self.main(*fed)).numpy()

    def model_time_ms(self, fed, repeat: int) -> list:
        """The model's time by TVM's own C++ timer (``time_evaluator`` on the VM's ``invoke_stateful``), ms per
        call: one mean per repeat, each repeat at least 1 ms of back-to-back calls, so a µs-scale model is not
        dominated by the Python/FFI overhead of a single timed call."""
        self.vm.set_input("main", *fed)
        timer = self.vm.time_evaluator("invoke_stateful", self.dev, number=1, repeat=repeat, min_repeat_ms=1)
        return [float(t) * 1e3 for t in timer("main").results]


class OrtModel:
    """The dense ONNX model in onnxruntime (a peer runtime), on the CPU with the runner's thread count, so it is
    timed by the same rules as a TVM artifact. onnxruntime is imported here only: boards without it still run
    TVM jobs."""

    def __init__(self, model: str, input_names: list, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # the cores TVM's pool gets (meta.set_threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.names = list(input_names)
        self.output = [self.session.get_outputs()[0].name]

    def feed(self, chunks: list) -> dict:
        return dict(zip(self.names, chunks))

    def run(self, fed) -> None:
        self.session.run(self.output, fed)  # synchronous on the CPU provider

    def first_output(self, fed):
        return self.session.run(self.output, fed)[0]


def _peer_main(conn, model: str, input_names: list, threads: int) -> None:
    """The peer process: an :class:`OrtModel` that takes its rounds, evaluations and single calls on command."""
    try:
        peer = OrtModel(model, input_names, threads)
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    import onnxruntime

    conn.send(("ok", onnxruntime.__version__))
    fed = None
    while True:
        try:
            what, arg = conn.recv()
        except EOFError:
            return
        try:
            if what == "feed":
                fed = peer.feed(arg)
                reply = None
            elif what == "round":
                reply = _timed_round(peer, fed, arg)
            elif what == "run":
                reply = peer.run(fed)
            elif what == "outputs":
                reply = peer.first_output(peer.feed(arg))
            elif what == "energy":
                reply = _measure_energy(lambda: peer.run(fed), arg)
            else:
                return
            conn.send(("ok", reply))
        except Exception as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))


class PeerProcess:
    """A peer runtime (onnxruntime) in a process of its own, driven round by round from the runner.

    In one process, onnxruntime's spinning worker threads and TVM's pool disturb each other: measured on a 2-core
    VM, the TVM rounds that follow an onnxruntime round come out 30-40 % slower or faster than the rest, whereas
    with onnxruntime loaded but idle they agree within ±3-5 %. In its own process each runtime keeps its threads to
    itself, and the rounds still take turns (the runner waits for the peer's round to end)."""

    def __init__(self, model: str, input_names: list, threads: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no TVM, no inherited thread pool
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_peer_main, args=(child, model, list(input_names), threads), daemon=True)
        self.proc.start()
        child.close()
        self.version = self._call(None)  # onnxruntime's, for the device metadata

    def _call(self, message):
        if message is not None:
            self.conn.send(message)
        try:
            status, reply = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the onnxruntime process ended (exit code {self.proc.exitcode})") from None
        if status != "ok":
            raise RuntimeError(reply)
        return reply

    def feed(self, chunks: list):
        self._call(("feed", [c for c in chunks]))
        return None

    def timed_round(self, rules: dict) -> dict:
        return self._call(("round", rules))

    def run(self, fed=None) -> None:  # one call, over the pipe (energy windows only: the timing uses whole rounds)
        self._call(("run", None))

    def first_output(self, chunks):
        return self._call(("outputs", list(chunks)))

    def energy(self, cfg: dict) -> dict:
        """Energy per call, measured in the peer's process (calls over the pipe would count the pipe)."""
        return self._call(("energy", cfg))

    def close(self) -> None:
        try:
            self.conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def load_model(job: dict, threads: int):
    """The job's model: a TVM artifact, or the ONNX file for ``"engine": "onnxruntime"`` (in a process of its own
    unless ``"in_process": true``)."""
    engine = job.get("engine", "tvm")
    if engine == "onnxruntime":
        if job.get("in_process"):
            return OrtModel(job["artifact"], job["input_names"], threads)
        return PeerProcess(job["artifact"], job["input_names"], threads)
    if engine == "tvm":
        return TvmModel(job["artifact"], job.get("device", "cpu"))
    raise ValueError(f"unknown engine {engine!r}; known: tvm, onnxruntime")


def _measure_energy(run_once, cfg: dict) -> dict:
    """Energy per inference from the board's own sensor (or the external meter the job names), or a dict whose
    ``status`` says why it is unavailable. Never an estimate."""
    from . import sensors

    sensor, reason = sensors.detect(cfg.get("root", "/"), meter_command=cfg.get("meter_command"))
    if sensor is None:
        return sensors.unavailable(reason)
    return sensors.measure_energy(run_once, backend=sensor, idle_s=cfg.get("idle_s", 2.0),
                                  window_s=cfg.get("window_s", 3.0), rate_hz=cfg.get("rate_hz", 50.0))


def load_inputs(job: dict) -> list:
    """The evaluation inputs of the job, in the model's input order: arrays ``arr_0``, ``arr_1``... of the ``.npz``
    the job names (numbered, not named: an input name need not be a valid file name inside a zip)."""
    import numpy as np

    names = job["input_names"]
    with np.load(job["eval_inputs"], allow_pickle=False) as data:
        arrays = [np.ascontiguousarray(data[f"arr_{i}"]) for i in range(len(names))]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"inputs {names} have different row counts {[len(a) for a in arrays]}")
    return arrays


def as_batches(arrays: list, batch: int):
    """``(chunks, real)``: every array cut into chunks of exactly ``batch`` rows (the artifact has a static batch),
    ``real`` of them real; the last chunk is padded with copies of its last row (a zero row can be a degenerate
    input: an all-zero attention mask divides by zero). The host's reference evaluation chunks the same way."""
    import numpy as np

    for start in range(0, len(arrays[0]), batch):
        chunks = [a[start:start + batch] for a in arrays]
        real = len(chunks[0])
        if real < batch:
            chunks = [np.concatenate([c, np.repeat(c[-1:], batch - real, axis=0)]) for c in chunks]
        yield chunks, real


def _timed_round(model, fed, rules: dict) -> dict:
    """One round: a fresh warm-up (both a run count and a duration, so caches, clocks and lazy init settle), then
    every iteration timed on its own until both the round's run count and duration are reached (capped)."""
    warm_n, start = 0, time.perf_counter()
    while warm_n < rules["warmup_runs"] or time.perf_counter() - start < rules["warmup_s"]:
        model.run(fed)
        warm_n += 1
    warmup_s = time.perf_counter() - start
    samples_ns = []
    clock = time.perf_counter_ns
    start = time.perf_counter()
    while (len(samples_ns) < rules["min_runs"] or time.perf_counter() - start < rules["min_s"]) \
            and len(samples_ns) < rules["max_runs"]:
        t = clock()
        model.run(fed)
        samples_ns.append(clock() - t)
    return {"samples_ns": samples_ns, "warmup_runs": warm_n, "warmup_s": warmup_s,
            "measure_s": time.perf_counter() - start}


def timed_round(model, fed, rules: dict) -> dict:
    """One round of ``model``: in this process, or in the peer's own (:class:`PeerProcess`)."""
    if hasattr(model, "timed_round"):
        return model.timed_round(rules)
    return _timed_round(model, fed, rules)


class _Entry:
    """One model of the job and what was measured of it so far."""

    def __init__(self, spec: dict, index: int):
        self.spec = spec
        self.id = str(spec.get("id", index))
        self.model = None
        self.fed = None
        self.error = None
        self.energy = None
        self.model_time_ms = None
        self.model_time_error = None
        self.samples_ns = []  # every round's, in the order taken
        self.round_samples = []  # the same, one list per round
        self.rounds = []
        self.phases_s = {"load": 0.0, "warmup": 0.0, "measure": 0.0, "energy": 0.0, "eval": 0.0}

    def take_round(self, rules: dict, cpus=()) -> None:
        # a heartbeat on stderr: the host (and a test starting a competing load) sees which round runs now
        heartbeat(f"round {len(self.rounds) + 1} model {self.id}")
        start_ns = time.perf_counter_ns()
        freqs = cpu_freqs_khz(cpus)
        try:
            got = timed_round(self.model, self.fed, rules)
            freqs += cpu_freqs_khz(cpus)  # before and after: a clock that moved during the round shows
        except Exception as err:  # this model fails; the others of the job carry on
            self.error = f"{type(err).__name__}: {err}"
            return
        self.samples_ns += got["samples_ns"]
        self.round_samples.append(got["samples_ns"])
        self.phases_s["warmup"] += got["warmup_s"]
        self.phases_s["measure"] += got["measure_s"]
        ordered = sorted(got["samples_ns"])
        self.rounds.append({"n": len(ordered), "p50_ns": rounds.median(ordered), "warmup_runs": got["warmup_runs"],
                            "measure_s": got["measure_s"], "start_ns": start_ns,
                            "freq_khz": [min(freqs), max(freqs)] if freqs else None})

    def unsettled(self, job: dict) -> list:
        return rounds.unsettled(self.round_samples, max_ci=job.get("max_ci", 0.03),
                                max_spread=job.get("max_spread", 0.03), min_rounds=int(job.get("rounds", 1)))


def run_job(job: dict, workdir: Path) -> dict:
    """Time every model of the job in interleaved rounds (A B C A B C ...; extended while some are unsettled, up to
    ``max_rounds`` and ``extend_s``), then measure each one's energy and evaluate it on the evaluation set."""
    import numpy as np

    cpus = set_affinity(job.get("cpus") or [])  # before any thread pool starts: the pools inherit it
    threads = set_threads(job.get("threads"))
    batch = int(job["batch"])
    inputs = load_inputs(job)
    first_chunk = next(as_batches(inputs, batch))[0]
    entries = [_Entry(spec, i) for i, spec in enumerate(job["models"])]
    for entry in entries:
        start = time.perf_counter()
        try:
            heartbeat(f"load model {entry.id}")
            entry.model = load_model({**job, **entry.spec}, threads)
            entry.fed = entry.model.feed(first_chunk)
        except Exception as err:  # one artifact that does not load is that row's error, not the job's
            entry.error = f"{type(err).__name__}: {err}"
        entry.phases_s["load"] = time.perf_counter() - start
    rss_after_load_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    versions = {"onnxruntime": e.model.version for e in entries if isinstance(e.model, PeerProcess)}

    n_rounds = max(1, int(job.get("rounds", 1)))
    # the row's timing budget (min_runs, min_s) is shared by its rounds; each round warms up afresh
    rules = {"warmup_runs": job["warmup_runs"], "warmup_s": job["warmup_s"],
             "min_runs": -(-int(job["min_runs"]) // n_rounds), "min_s": float(job["min_s"]) / n_rounds,
             "max_runs": max(1, int(job["max_runs"]) // n_rounds)}
    live = lambda: [e for e in entries if e.error is None]  # noqa: E731
    # a settling round, discarded: the first calls after loading pay for page faults, clock ramps and the other
    # runtime's idle threads; every model then starts its measured rounds from the same state
    for entry in live():
        try:
            timed_round(entry.model, entry.fed, rules)
        except Exception as err:
            entry.error = f"{type(err).__name__}: {err}"
    for _ in range(n_rounds):
        for entry in live():
            entry.take_round(rules, cpus)
    # extension: while some model is unsettled, another round for *every* model, so the rotation (and what the
    # caches hold between one model's turns) stays the one the earlier rounds had
    extend_until = time.perf_counter() + float(job.get("extend_s", 0.0))
    max_rounds = int(job.get("max_rounds", n_rounds))
    while time.perf_counter() < extend_until:
        if not any(len(e.rounds) < max_rounds and e.unsettled(job) for e in live()):
            break
        for entry in live():
            if len(entry.rounds) < max_rounds:
                entry.take_round(rules, cpus)

    # model time by TVM's C++ timer, where the engine has one (a peer runtime's rows leave it unavailable)
    for entry in live():
        if hasattr(entry.model, "model_time_ms"):
            try:
                entry.model_time_ms = entry.model.model_time_ms(entry.fed, int(job.get("model_time_repeat", 15)))
            except Exception as err:  # the per-call latency stands; the C++ figure is then unavailable
                entry.model_time_error = f"{type(err).__name__}: {err}"

    # energy: its own phase after the latency rounds (sampling must not disturb the latencies), only with a sensor
    energy_cfg = job.get("energy")
    results = []
    for entry in entries:
        if entry.error is None and energy_cfg is not None:
            start = time.perf_counter()
            heartbeat(f"energy model {entry.id}")
            try:
                entry.energy = (entry.model.energy(energy_cfg) if isinstance(entry.model, PeerProcess) else
                                _measure_energy(lambda: entry.model.run(entry.fed), energy_cfg))
            except Exception as err:
                entry.error = f"energy: {type(err).__name__}: {err}"
            entry.phases_s["energy"] = time.perf_counter() - start
        out_name = None
        if entry.error is None:
            start = time.perf_counter()
            heartbeat(f"eval model {entry.id}")
            try:
                first = (entry.model.first_output if isinstance(entry.model, PeerProcess)
                         else lambda chunks: entry.model.first_output(entry.model.feed(chunks)))
                outputs = [np.asarray(first(chunks))[:real] for chunks, real in as_batches(inputs, batch)]
                out_name = f"outputs_{len(results)}.npy"
                np.save(workdir / out_name, np.concatenate(outputs))
            except Exception as err:
                entry.error = f"evaluate: {type(err).__name__}: {err}"
            entry.phases_s["eval"] = time.perf_counter() - start
        results.append({
            "id": entry.id, "ok": entry.error is None, "error": entry.error,
            "engine": entry.spec.get("engine", "tvm"), "latencies_ns": entry.samples_ns, "rounds": entry.rounds,
            "unsettled": [list(bound) for bound in entry.unsettled(job)] if entry.error is None else [],
            "warmup_runs": sum(r["warmup_runs"] for r in entry.rounds), "phases_s": entry.phases_s,
            "energy": entry.energy, "outputs": out_name, "model_time_ms": entry.model_time_ms,
            "model_time_error": entry.model_time_error,
        })
        if hasattr(entry.model, "close"):
            entry.model.close()
        entry.model = entry.fed = None  # free the artifact before the next one evaluates
    return {
        "ok": True,
        "peer_versions": versions,
        "threads": threads,
        "cpus": cpus,
        "models": results,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_after_load_mb": rss_after_load_mb,
    }


def heartbeat(what: str) -> None:
    """One line on stderr: the host's stall detector hears the runner is alive, and after a crash the last line
    says where it was and how much memory it had (``peak rss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    try:
        print(f"{what} peak rss {rss:.0f} MB", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # nobody listens any more (the connection dropped): measure on, the host
        pass  # fetches result.json over a fresh one


def _own_session() -> None:
    """A session (and process group) of its own, unless it leads one already (sshd's shell does): the host stops
    the runner with its children (the peer runtime's process) by that group."""
    import os

    try:
        if os.getpgid(0) != os.getpid():
            os.setsid()
    except (AttributeError, OSError):  # not POSIX, or not permitted: the pid alone is stopped then
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sparsebench_board.runner JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    workdir = job_path.parent
    try:
        result = run_job(job, workdir)
    except Exception as err:  # reported as data; the host turns it into an error row
        import traceback

        result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    result["device_meta"] = device_metadata()
    for name, version in (result.get("peer_versions") or {}).items():  # loaded in the peer's process, not here
        result["device_meta"][name] = result["device_meta"].get(name) or version
    text = json.dumps(result)
    (workdir / "result.json").write_text(text)
    print(text)
    return 0 if result["ok"] and all(m["ok"] for m in result["models"]) else 1


if __name__ == "__main__":
    _own_session()
    sys.exit(main(sys.argv[1:]))
