"""sparsebench device-side kernel timer: time single compiled kernels (PrimFuncs) of one library on this device.

Part of the board package: numpy and the TVM *runtime* only (``TVM_USE_RUNTIME_LIB=1``). The kernel-selection
step uses it to time candidate kernels where they will run.

Usage: ``python -m sparsebench_board.timer JOB.json``, run in the folder that holds the package. The job::

    {"library": "kernels.so", "arrays": "arrays.npz", "device": "cpu", "threads": null,
     "number": 1, "repeat": 9, "min_repeat_ms": 2,
     "kernels": [{"id": "k0", "func": "dense_k0", "args": ["x0", "c0_0", "c0_1"], "out": [[1, 768], "float32"]}]}

A job without kernels (``{"kernels": []}``) only reports the device's metadata and fingerprint.
``library`` and ``arrays`` are paths (relative ones are relative to the job file's folder). Each kernel is called
with the named arrays of the ``.npz`` (each array becomes a TVM tensor once, however many kernels use it) and a
zeroed output of shape/dtype ``out`` as the last argument: once to warm up, then through ``time_evaluator``.

``device`` is ``"cpu"`` or ``"cuda"`` (a CUDA target's bundle); a machine without that device fails the job with
``"error": "no CUDA device ..."``.

Writes ``result.json`` next to the job file and prints it as the last stdout line; exit 0 when the job ran (even if
some kernels failed), 1 when it could not::

    {"ok": true, "timer_version": 1, "threads": 4,
     "times": {"k0": {"median_us": 12.5, "results_us": [...]}, "k1": {"error": "AttributeError: ..."}},
     "device_meta": {...}, "fingerprint": {...}}
    {"ok": false, "timer_version": 1, "error": "<Type>: <message>", "traceback": "...", "device_meta": {...}}

``results_us``: one value per repeat, each the mean of ``number`` calls (µs); ``median_us`` their median. A kernel
that fails (unknown symbol, missing array, wrong shapes) is an ``error`` for its id, never an aborted job.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from .meta import device_fingerprint, device_metadata, set_threads

TIMER_VERSION = 1


def _path(text: str, base: Path) -> str:
    path = Path(text)
    return str(path if path.is_absolute() else base / path)


def time_kernels(job: dict, base: Path) -> dict:
    """Time every kernel of ``job``; the result dict without the device metadata."""
    threads = set_threads(job.get("threads"))  # before TVM starts its thread pool
    if not job.get("kernels"):  # nothing to time: the caller wants the device's fingerprint only
        return {"ok": True, "timer_version": TIMER_VERSION, "times": {}, "threads": threads}
    import numpy as np
    import tvm

    from .runner import tvm_device

    device = job.get("device", "cpu")
    try:
        dev = tvm_device(tvm, device)
        missing = "" if dev.exist else f"no {device.upper()} device"
    except OSError as err:  # TVM's CUDA runtime needs the driver's libcuda: no driver, no GPU to time on
        missing = f"no {device.upper()} device ({err})"
    if missing:  # one line for the plan's note, not a traceback
        return {"ok": False, "timer_version": TIMER_VERSION, "error": missing, "threads": threads}
    lib = tvm.runtime.load_module(_path(job["library"], base))
    with np.load(_path(job["arrays"], base)) as npz:
        arrays = {name: npz[name] for name in npz.files}
    tensors: dict = {}  # array name -> TVM tensor, made once

    def tensor(name: str):
        if name not in tensors:
            if name not in arrays:
                raise KeyError(f"no array {name!r} in {job['arrays']}")
            tensors[name] = tvm.runtime.tensor(np.ascontiguousarray(arrays[name]), dev)
        return tensors[name]

    number, repeat, min_ms = int(job.get("number", 1)), int(job.get("repeat", 9)), int(job.get("min_repeat_ms", 2))
    times = {}
    for kernel in job["kernels"]:
        try:
            func = lib[kernel["func"]]
            shape, dtype = kernel["out"]
            args = [tensor(name) for name in kernel["args"]]
            args.append(tvm.runtime.tensor(np.zeros(shape, dtype=dtype), dev))
            func(*args)  # warm-up: first-call costs (lazy init, page faults) stay out of the timing
            dev.sync()
            timer = lib.time_evaluator(kernel["func"], dev, number=number, repeat=repeat, min_repeat_ms=min_ms)
            results_us = [float(s) * 1e6 for s in timer(*args).results]
            times[kernel["id"]] = {"median_us": statistics.median(results_us), "results_us": results_us}
        except Exception as err:  # one kernel's failure is its own row, as data
            times[kernel["id"]] = {"error": f"{type(err).__name__}: {err}"}
    return {"ok": True, "timer_version": TIMER_VERSION, "times": times, "threads": threads}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sparsebench_board.timer JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0])
    try:
        result = time_kernels(json.loads(job_path.read_text()), job_path.parent)
    except Exception as err:  # the whole job failed (library, arrays, job file): reported as data
        import traceback

        result = {"ok": False, "timer_version": TIMER_VERSION, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["device_meta"] = device_metadata()
    if result["ok"]:
        result["fingerprint"] = device_fingerprint(result["device_meta"])
    text = json.dumps(result)
    (job_path.parent / "result.json").write_text(text)
    print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
