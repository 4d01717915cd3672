"""sparsebench device-side runner: load one compiled model, time it, evaluate it, describe the device.

Part of the board package: runs on boards with only numpy and the TVM *runtime* (``TVM_USE_RUNTIME_LIB=1``: no
compiler, ``tvm.runtime.vm.VirtualMachine``), and imports nothing from sparsebench.

Usage: ``python -m sparsebench_board.runner JOB.json``, run in the folder that holds the package. The job names
the engine (``"tvm"``, the default, or ``"onnxruntime"``: a peer runtime, the ``artifact`` then an ONNX file),
the artifact, an ``.npz`` of evaluation inputs (one array per model input, in the model's input order), the batch,
the timing rules and the energy settings; the runner writes ``result.json`` (and ``outputs.npy``: the first output
of the model for every evaluation row) next to the job file and prints the result JSON as its last stdout line.

Timing: warm-up until both ``warmup_runs`` and ``warmup_s`` are reached; then every iteration is timed on its own
(perf_counter_ns around one call, with a device sync) until both ``min_runs`` and ``min_s`` are reached, capped
at ``max_runs``. Means of batches would hide the variation we report.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from .meta import device_metadata, set_threads


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
        self.main = VirtualMachine(tvm.runtime.load_module(artifact), self.dev)["main"]

    def feed(self, chunks: list):
        return [self.tvm.runtime.tensor(c, self.dev) for c in chunks]

    def run(self, fed) -> None:
        self.main(*fed)
        self.dev.sync()

    def first_output(self, fed):
        return _first_output(self.main(*fed)).numpy()


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


def load_model(job: dict, threads: int):
    """The job's model: a TVM artifact, or the ONNX file for ``"engine": "onnxruntime"``."""
    engine = job.get("engine", "tvm")
    if engine == "onnxruntime":
        return OrtModel(job["artifact"], job["input_names"], threads)
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


def run_job(job: dict, workdir: Path) -> dict:
    import numpy as np

    threads = set_threads(job.get("threads"))
    t0 = time.perf_counter()
    model = load_model(job, threads)
    load_s = time.perf_counter() - t0
    rss_after_load_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    batch = int(job["batch"])
    inputs = load_inputs(job)
    timing_input = model.feed(next(as_batches(inputs, batch))[0])

    # warm-up: both a run count and a duration, so caches, clocks and lazy init settle
    warm_n, start = 0, time.perf_counter()
    while warm_n < job["warmup_runs"] or time.perf_counter() - start < job["warmup_s"]:
        model.run(timing_input)
        warm_n += 1
    warmup_s = time.perf_counter() - start

    samples_ns = []
    start = time.perf_counter()
    clock = time.perf_counter_ns
    while (len(samples_ns) < job["min_runs"] or time.perf_counter() - start < job["min_s"]) \
            and len(samples_ns) < job["max_runs"]:
        t = clock()
        model.run(timing_input)
        samples_ns.append(clock() - t)
    measure_s = time.perf_counter() - start

    # energy: its own phase after the latency loop (sampling must not disturb the latencies), only with a sensor
    energy_cfg = job.get("energy") or {}
    start = time.perf_counter()
    energy = _measure_energy(lambda: model.run(timing_input), energy_cfg)
    energy_s = time.perf_counter() - start

    outputs = []
    start = time.perf_counter()
    for chunks, real in as_batches(inputs, batch):
        outputs.append(np.asarray(model.first_output(model.feed(chunks)))[:real])
    eval_s = time.perf_counter() - start
    out_path = workdir / "outputs.npy"
    np.save(out_path, np.concatenate(outputs))

    return {
        "ok": True,
        "engine": job.get("engine", "tvm"),
        "threads": threads,
        "latencies_ns": samples_ns,
        "warmup_runs": warm_n,
        "phases_s": {"load": load_s, "warmup": warmup_s, "measure": measure_s, "energy": energy_s, "eval": eval_s},
        "energy": energy,
        "outputs": out_path.name,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_after_load_mb": rss_after_load_mb,
    }


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
    text = json.dumps(result)
    (workdir / "result.json").write_text(text)
    print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
