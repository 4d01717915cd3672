"""Host side of a device run, as named and timed steps: workdir -> upload -> run -> fetch -> clean.

Step timings are harness overhead, stored apart from model time (which the runner measures on the device).
"""

from __future__ import annotations

import json
import re
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import MeasureConfig
from ..errors import DeviceLost
from ..peers import Peer
from ..transports import Transport, TransportError
from ..transports.base import CommandResult, ConnectionLost, Stalled
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
                        label: str = "job", keep: bool = False, device: str = "cpu") -> list[DeviceRun]:
    """Upload the ``models`` of one model and batch (each an artifact, or with a ``peer`` the dense ONNX model that
    runtime runs) + the board package + the evaluation ``inputs`` (one array per model input, in the model's input
    order, each of its input's dtype), run the board's runner once with the TVM runtime only -- it times the models
    in interleaved rounds -- and fetch their results: one :class:`DeviceRun` per model, in order. The step timings
    are the group's (shared by its runs); a failure of the whole run is every model's error.

    A connection lost on the way is reopened (the transport's bounded backoff) and the job retried once; a
    ``result.json`` the runner wrote meanwhile is fetched and used instead. A runner that stalls (no heartbeat for
    the transport's ``stall_s``) is stopped and its row says so. When the device stays unreachable (or its host key
    changed) :class:`~harness.errors.DeviceLost` propagates: the run stops, to be resumed. Whatever happens --
    interrupts included -- the job's processes on the device are stopped and its directory removed.

    A transport that measures by itself (``run_group``: the rpc transport, no runner on the board) gets the group,
    with the same reconnect-and-retry-once.

    ``device``: what runs the TVM artifacts there, ``"cpu"`` or ``"cuda"`` (the accelerator they were built for);
    peer runtimes run on the CPU."""
    if hasattr(transport, "run_group"):
        return _run_group_by_transport(transport, models=models, inputs=inputs, batch=batch, measure=measure,
                                       python=python, label=label, keep=keep, device=device)
    runs = [DeviceRun() for _ in models]
    steps: dict[str, float] = {}
    error = None
    try:
        with tempfile.TemporaryDirectory(prefix="sparsebench-job-") as tmp:
            tmp = Path(tmp)
            for attempt in (1, 2):
                workdir, cmd, lost = None, None, False
                try:
                    with _timed(steps, "connect"):
                        try:
                            transport.connect()  # ~0 s when open; a connection dropped earlier is reopened here
                        except TransportError as err:  # gone since the last job: the bounded reconnects, or
                            transport.reconnect(str(err))  # DeviceLost -- never one instant ERROR row per job
                    with _timed(steps, "prepare"):
                        workdir = transport.make_workdir(label)
                    with _timed(steps, "upload"):
                        remote_job = _upload(transport, workdir, tmp, models, inputs, batch, measure, device)
                    timeout_s = measure.timeout_s * len(models)  # timeout_s is one variant's share
                    with _timed(steps, "run"), _heartbeat(transport):
                        # TVM_USE_RUNTIME_LIB=1: the device has (and the runner may use) only the TVM runtime.
                        cmd = transport.run(board_command(python or transport.default_python(), "runner", remote_job),
                                            env={"TVM_USE_RUNTIME_LIB": "1"}, timeout_s=timeout_s, cwd=workdir)
                    if not cmd.ok:  # whatever it left running (a peer runtime's process after a crash) stops too
                        transport.kill_group(cmd.pid)
                    if cmd.timed_out:
                        error = (f"run: timed out after {timeout_s:g} s ({len(models)} variant(s) x "
                                 "[measure].timeout_s); raise [measure].timeout_s")
                        break
                    with _timed(steps, "fetch"):
                        error = _fetch(transport, workdir, tmp, runs, cmd, batch)
                    break
                except ConnectionLost as err:
                    try:
                        with _timed(steps, "connect"):
                            transport.reconnect(str(err))
                    except DeviceLost:
                        lost = True
                        raise
                    if workdir is not None and err.step in ("run", "fetch") and _has_result(transport, workdir):
                        # the command channel hung or dropped, but the runner finished: its result stands
                        transport.kill_group(err.pid)
                        with _timed(steps, "fetch"):
                            error = _fetch(transport, workdir, tmp, runs, cmd or err.result, batch)
                        break
                    transport.kill_group(err.pid)
                    if isinstance(err, Stalled) and err.step == "run":
                        error = f"run: {_message(err)}; the runner's processes there were stopped"
                        break
                    if attempt == 2:
                        error = f"{err} (again after reconnecting)"
                        break
                    continue  # reconnected: the job once more, from a fresh work directory
                except TransportError as err:
                    error = str(err)
                    break
                except (OSError, ValueError, KeyError) as err:  # a local file the job needs could not be written
                    error = f"run: runner produced no result ({err})"
                    break
                finally:
                    if workdir is not None and not keep and not lost:
                        with _timed(steps, "clean"):
                            try:
                                transport.remove(workdir)
                            except TransportError as err:  # files left on the device: say so (retried on resume)
                                error = error or str(err)
    finally:
        for run in runs:
            run.steps_s = dict(steps)
            if error and not run.error:
                run.error = error
    return runs


def _run_group_by_transport(transport, **group) -> list[DeviceRun]:
    """:meth:`run_group` of a transport that measures by itself; a lost session is reopened (the transport's
    bounded request) and the group retried once on it; DeviceLost propagates."""
    steps: dict[str, float] = {}
    error = None
    for attempt in (1, 2):
        try:
            with _timed(steps, "connect"):
                try:
                    transport.connect()
                except TransportError as err:  # gone since the last group: the bounded request again, or DeviceLost
                    transport.reconnect(str(err))
            runs = transport.run_group(**group)
            for run in runs:
                run.steps_s = {**steps, **run.steps_s}
            return runs
        except ConnectionLost as err:
            with _timed(steps, "connect"):
                transport.reconnect(str(err))  # DeviceLost: the run stops, to be resumed
            if attempt == 2:
                error = f"{err} (again after reconnecting)"
        except TransportError as err:
            error = str(err)
            break
    return [DeviceRun(steps_s=dict(steps), error=error) for _ in group["models"]]


@contextmanager
def _heartbeat(transport: Transport):
    """The runner prints a heartbeat per round: the transport's stall detector may count silence as a stall."""
    before = transport.heartbeat
    transport.heartbeat = True
    try:
        yield
    finally:
        transport.heartbeat = before


def _message(err: TransportError) -> str:
    """The error's message without its ``step:`` prefix."""
    text = str(err)
    return text[len(err.step) + 2:] if text.startswith(f"{err.step}: ") else text


def _upload(transport: Transport, workdir: str, tmp: Path, models, inputs, batch: int, measure: MeasureConfig,
            device: str = "cpu") -> str:
    """The models, the board package, the inputs and the job file into ``workdir``; returns the job file's path."""
    # numbered arrays in input order (an input name need not be a valid file name inside the .npz)
    np.savez(tmp / "inputs.npz", *[np.ascontiguousarray(a) for a in inputs.values()])
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
           "batch": batch, "device": device, "warmup_runs": measure.warmup_runs,
           "warmup_s": measure.warmup_s, "min_runs": measure.min_runs, "min_s": measure.min_s,
           "max_runs": measure.max_runs, "rounds": measure.rounds, "max_rounds": measure.max_rounds,
           "max_ci": measure.max_ci, "max_spread": measure.max_spread, "extend_s": measure.extend_s,
           "cpus": list(measure.cpus), "energy": energy}
    (tmp / "job.json").write_text(json.dumps(job))
    return transport.put(tmp / "job.json", workdir)


def _has_result(transport: Transport, workdir: str) -> bool:
    try:
        return transport.exists(f"{workdir}/result.json")
    except TransportError:
        return False


def _fetch(transport: Transport, workdir: str, tmp: Path, runs: list[DeviceRun], cmd: CommandResult | None,
           batch: int) -> str | None:
    """``result.json`` and the outputs into ``runs``; returns the group's error (None when the runner ran)."""
    try:
        transport.get(f"{workdir}/result.json", tmp / "result.json")
        result = json.loads((tmp / "result.json").read_text())
    except (OSError, ValueError) as err:
        # result.json missing or unreadable: the runner died before writing it (crash, OOM kill)
        return f"run: {crash_cause(transport, cmd, err, batch)}"
    if not result.get("ok"):
        return f"run: {result.get('error', 'runner failed')}"
    shared = {k: result.get(k) for k in ("threads", "peak_rss_mb", "rss_after_load_mb", "device_meta")}
    if isinstance(shared["device_meta"], dict):  # where the runner ran: its CPU affinity
        shared["device_meta"] = {**shared["device_meta"], "affinity": result.get("cpus")}
    try:
        for run, got in zip(runs, result["models"]):
            run.result = {**got, **shared}
            if not got.get("ok"):
                run.error = f"run: {got.get('error') or 'runner failed'}"
                continue
            transport.get(f"{workdir}/{got['outputs']}", tmp / "outputs.npy")
            run.outputs = np.load(tmp / "outputs.npy")
    except (OSError, ValueError, KeyError) as err:
        return f"run: the runner's result is incomplete ({err})"
    return None


_PEAK_RE = re.compile(r"^(?P<where>.*?) peak rss (?P<mb>\d+) MB\s*$")


def crash_cause(transport: Transport, cmd: CommandResult | None, err: BaseException, batch: int) -> str:
    """Why the runner left no result, as one clause: the signal that killed it (the OOM killer named when the
    kernel log says so), its last heartbeat (what it was doing, its peak memory) and the batch; else what it
    printed last."""
    if cmd is None:
        return f"runner produced no result ({err})"
    beat = None
    for line in reversed(cmd.stderr.splitlines()):
        beat = _PEAK_RE.match(line.strip())
        if beat:
            break
    context = (f" during {beat['where']} (peak memory {beat['mb']} MB, batch {batch})" if beat
               else f" (batch {batch})")
    sig = cmd.signal or ("SIGKILL" if cmd.exit_code == 137 else None)
    if sig:
        try:
            number = signal.Signals[sig].value
        except KeyError:
            number = "?"
        if sig == "SIGKILL":
            oom = transport.kernel_oom_note(cmd.pid)
            if oom:
                return f"runner killed by the OOM killer (out of memory){context}; kernel: {oom[-160:]}"
            return (f"runner killed by SIGKILL (signal {number}){context}; the OOM killer sends it when memory runs "
                    "out (the kernel log did not say; check dmesg on the device), or someone killed it")
        return f"runner killed by {sig} (signal {number}){context}"
    tail = cmd.tail()
    return f"runner produced no result ({err}; exit {cmd.exit_code}){context}{'; ' + tail if tail else ''}"
