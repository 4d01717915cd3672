"""Host side of a device run, as named and timed steps: workdir -> upload -> run -> fetch -> clean.

Step timings are harness overhead, stored apart from model time (which the runner measures on the device).
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import MeasureConfig
from ..peers import Peer
from ..transports import Transport, TransportError
from .ship import board_command, upload_board


@dataclass
class DeviceRun:
    """What came back from one device run: the runner's JSON, the outputs, the step timings, or an error."""

    result: dict | None = None
    outputs: np.ndarray | None = None
    steps_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # "<step>: <message>"


@contextmanager
def _timed(steps: dict, name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - start


def run_on_device(transport: Transport, *, artifact: Path, inputs: dict[str, np.ndarray], batch: int,
                  measure: MeasureConfig, python: str = "", label: str = "job", keep: bool = False,
                  peer: Peer | None = None) -> DeviceRun:
    """One model through :func:`run_group_on_device` (a group of one)."""
    return run_group_on_device(transport, models=[(artifact, peer)], inputs=inputs, batch=batch, measure=measure,
                               python=python, label=label, keep=keep)[0]


def run_group_on_device(transport: Transport, *, models: list[tuple[Path, Peer | None]],
                        inputs: dict[str, np.ndarray], batch: int, measure: MeasureConfig, python: str = "",
                        label: str = "job", keep: bool = False) -> list[DeviceRun]:
    """Upload the ``models`` of one model and batch (each an artifact, or with a ``peer`` the dense ONNX model that
    runtime runs) + the board package + the evaluation ``inputs`` (one array per model input, in the model's input
    order, each of its input's dtype), run the board's runner once with the TVM runtime only -- it times the models
    in interleaved rounds -- and fetch their results: one :class:`DeviceRun` per model, in order. The step timings
    are the group's (shared by its runs); a failure of the whole run is every model's error."""
    runs = [DeviceRun() for _ in models]
    steps: dict[str, float] = {}
    error = None
    workdir = None
    try:
        with _timed(steps, "connect"):
            transport.connect()  # ~0 s when open; a connection dropped by an earlier job is reopened (and timed) here
        with _timed(steps, "prepare"):
            workdir = transport.make_workdir(label)
        with tempfile.TemporaryDirectory(prefix="sparsebench-job-") as tmp:
            tmp = Path(tmp)
            # numbered arrays in input order (an input name need not be a valid file name inside the .npz)
            np.savez(tmp / "inputs.npz", *[np.ascontiguousarray(a) for a in inputs.values()])
            with _timed(steps, "upload"):
                specs = []
                for i, (artifact, peer) in enumerate(models):
                    remote = transport.put(artifact, workdir, f"model{i}" + (peer.suffix if peer else ".so"))
                    specs.append({"id": str(i), "artifact": remote, "engine": peer.engine if peer else "tvm"})
                upload_board(transport, workdir)
                remote_inputs = transport.put(tmp / "inputs.npz", workdir)
                energy = {"idle_s": measure.energy_idle_s, "window_s": measure.energy_window_s,
                          "rate_hz": measure.energy_rate_hz, "root": measure.sensor_root}
                if measure.meter_command:
                    energy["meter_command"] = list(measure.meter_command)
                job = {"models": specs, "eval_inputs": remote_inputs, "input_names": list(inputs),
                       "batch": batch, "device": "cpu", "warmup_runs": measure.warmup_runs,
                       "warmup_s": measure.warmup_s, "min_runs": measure.min_runs, "min_s": measure.min_s,
                       "max_runs": measure.max_runs, "rounds": measure.rounds, "max_rounds": measure.max_rounds,
                       "max_ci": measure.max_ci, "max_spread": measure.max_spread, "extend_s": measure.extend_s,
                       "cpus": list(measure.cpus), "energy": energy}
                (tmp / "job.json").write_text(json.dumps(job))
                remote_job = transport.put(tmp / "job.json", workdir)
            timeout_s = measure.timeout_s * len(models)  # timeout_s is one variant's share
            with _timed(steps, "run"):
                # TVM_USE_RUNTIME_LIB=1: the device has (and the runner may use) only the TVM runtime.
                cmd = transport.run(board_command(python or transport.default_python(), "runner", remote_job),
                                    env={"TVM_USE_RUNTIME_LIB": "1"}, timeout_s=timeout_s, cwd=workdir)
            if cmd.timed_out:
                error = (f"run: timed out after {timeout_s:g} s ({len(models)} variant(s) x [measure].timeout_s); "
                         "raise [measure].timeout_s")
                return runs
            with _timed(steps, "fetch"):
                transport.get(f"{workdir}/result.json", tmp / "result.json")
                result = json.loads((tmp / "result.json").read_text())
                if not result.get("ok"):
                    error = f"run: {result.get('error', 'runner failed')}"
                    return runs
                shared = {k: result.get(k) for k in ("threads", "peak_rss_mb", "rss_after_load_mb", "device_meta")}
                if isinstance(shared["device_meta"], dict):  # where the runner ran: its CPU affinity
                    shared["device_meta"] = {**shared["device_meta"], "affinity": result.get("cpus")}
                for run, got in zip(runs, result["models"]):
                    run.result = {**got, **shared}
                    if not got.get("ok"):
                        run.error = f"run: {got.get('error') or 'runner failed'}"
                        continue
                    transport.get(f"{workdir}/{got['outputs']}", tmp / "outputs.npy")
                    run.outputs = np.load(tmp / "outputs.npy")
    except TransportError as err:
        error = str(err)
    except (OSError, ValueError, KeyError) as err:
        # result.json missing or unreadable: the runner died before writing it (crash, OOM kill)
        tail = cmd.tail() if "cmd" in locals() else ""
        error = f"run: runner produced no result ({err}){'; ' + tail if tail else ''}"
    finally:
        if workdir is not None and not keep:
            with _timed(steps, "clean"):
                try:
                    transport.remove(workdir)
                except TransportError as err:  # files left on the device: say so (the rows are retried on resume)
                    error = error or str(err)
        for run in runs:
            run.steps_s = dict(steps)
            if error and not run.error:
                run.error = error
    return runs
