"""A board reached through TVM's own RPC tracker: ``rpc://TRACKER_HOST:PORT/KEY``.

The board runs ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``; the tracker hands each of its
servers to one client at a time, which makes the tracker the board lease (``exclusive``). There is no shell on the
board: nothing is shipped and no command runs there. A group of variants is measured from this host through the
session -- upload the artifact, load it in the Relax VM on the remote CPU, time ``invoke_stateful`` with the
remote ``time_evaluator`` (TVM's C++ timer, on the board), fetch the outputs -- in the runner's interleaved rounds.

What the timing measures: each sample is one call of the model timed on the board by TVM's C++ timer
(``time_evaluator`` with ``number=1``; the VM's inputs were set once, so no copy and no network is inside the
timed call). Limits: no per-iteration host clock, no CPU clocks, affinity, memory peak or energy (the server
reports none), and the server's TVM version is not known (a mismatched runtime shows as artifacts that fail to
load).
"""

from __future__ import annotations

import gc
import math
import re
import socket
import statistics
import struct
import threading
import time
from pathlib import Path

from ..errors import DeviceLost, HarnessError
from .base import ConnectionLost, Transport, TransportError

_URL = re.compile(r"^rpc://(?P<host>\[[^\]/]+\]|[^\[\]:/@\s]+):(?P<port>\d+)/(?P<key>[A-Za-z0-9][A-Za-z0-9_.:-]*)$")
#: the energy record of every rpc row: the server has no sensor access
ENERGY = {"status": "unavailable: rpc transport"}
PEER_ERROR = "peers need a shell on the board; not over rpc"
#: words in a TVM error that mean the session itself broke (not the model)
_LOST = ("socket", "connection", "closed", "broken pipe", "rpcsession", "eof", "reset by peer", "rpc session")


def parse_url(url: str) -> tuple[str, int, str]:
    """``rpc://HOST:PORT/KEY`` -> (host, port, key); one HarnessError with the form otherwise."""
    match = _URL.match(url.strip())
    if not match:
        raise HarnessError(f"device {url!r} is not an rpc URL; write rpc://TRACKER_HOST:PORT/KEY (KEY: the "
                           "rpc_server's --key), e.g. rpc://127.0.0.1:9190/rpi5")
    return match["host"].strip("[]"), int(match["port"]), match["key"]


class RpcTransport(Transport):
    """A session with one server of the tracker's ``KEY`` pool, held from :meth:`connect` to :meth:`close`."""

    name = "rpc"
    exclusive = True  # the tracker's allocation is the board lease

    def __init__(self, url: str, *, run_name: str = "", request_timeout_s: float = 60.0, **ignored):
        self.host, self.port, self.key = parse_url(url)
        self.run_name = run_name
        self.request_timeout_s = float(request_timeout_s)
        self.session = None
        self.uploads = 0  # files uploaded so far (each gets a fresh name)

    # -- the session ----------------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return f"rpc://{self.host}:{self.port}/{self.key}"

    @property
    def tracker(self) -> str:
        return f"{self.host}:{self.port}"

    def _query_hint(self) -> str:
        return f"python -m tvm.exec.query_rpc_tracker --host {self.host} --port {self.port} lists them"

    def summary(self, timeout_s: float = 5.0) -> dict:
        """The tracker's summary; TransportError("connect", ...) when the tracker cannot be reached."""
        from tvm.rpc import base

        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        except OSError as err:
            raise TransportError("connect", f"tracker {self.tracker} unreachable ({err.strerror or err}); start it "
                                            f"with python -m tvm.exec.rpc_tracker --host {self.host} --port "
                                            f"{self.port}, or fix the address in {self.device}") from None
        try:
            sock.settimeout(timeout_s)
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
            if magic != base.RPC_TRACKER_MAGIC:
                raise OSError("it does not answer as a TVM RPC tracker")
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            value = base.recvjson(sock)
            if value[0] != base.TrackerCode.SUCCESS:
                raise OSError(f"summary refused: {value!r}")
            return value[1]
        except (OSError, ValueError, RuntimeError, IndexError) as err:
            raise TransportError("connect", f"tracker {self.tracker} did not answer ({err}); check that "
                                            f"{self.tracker} runs python -m tvm.exec.rpc_tracker") from None
        finally:
            sock.close()

    def _counts(self, summary: dict) -> tuple[int, int, int, list[str]]:
        """(servers registered for our key, free ones, requests waiting, every key registered)."""
        keys = [str(s.get("key", "")).partition(":")[2] for s in summary.get("server_info", [])]
        queue = summary.get("queue_info", {}).get(self.key, {})
        return keys.count(self.key), int(queue.get("free", 0)), int(queue.get("pending", 0)), sorted(set(keys))

    def _request(self, timeout_s: float, *, wait_registered: bool) -> None:
        """A session with a free server of our key within ``timeout_s``; TransportError("connect", ...) else."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                registered, free, pending, keys = self._counts(self.summary(min(5.0, max(timeout_s, 1.0))))
            except TransportError:  # a reconnect rides out a tracker restarting within the timeout
                if not wait_registered or time.monotonic() >= deadline:
                    raise
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            if registered:
                break
            if not wait_registered or time.monotonic() >= deadline:
                raise TransportError("connect", f"no server with key {self.key} registered on tracker {self.tracker} "
                                                f"(keys: {', '.join(keys) or 'none'}); start one on the board with "
                                                f"python -m tvm.exec.rpc_server --tracker {self.tracker} --key "
                                                f"{self.key}")
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        from tvm.rpc.client import TrackerSession

        box: dict = {}
        lock = threading.Lock()

        def request():
            try:
                tracker = TrackerSession((self.host, self.port))
                box["tracker"] = tracker
                sess = tracker.request(self.key, priority=1, session_timeout=0, max_retry=1)
            except Exception as err:  # noqa: BLE001 - reported by the caller
                box["error"] = err
                return
            with lock:
                if box.get("abandoned"):
                    return  # too late: the session is dropped, the server goes back to the tracker
                box["session"] = sess
            try:
                tracker.close()
            except OSError:
                pass

        thread = threading.Thread(target=request, name=f"rpc-request-{self.key}", daemon=True)
        thread.start()
        thread.join(max(0.1, deadline - time.monotonic()))
        with lock:
            if "session" in box:
                self.session = box["session"]
                return
            box["abandoned"] = True
        tracker = box.get("tracker")
        if tracker is not None and tracker._sock is not None:  # unblock the waiting request; the tracker drops it
            try:
                tracker._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if "error" in box:
            why = str(box["error"]).splitlines()[0][:300] if str(box["error"]) else type(box["error"]).__name__
            raise TransportError("connect", f"the tracker {self.tracker} gave no working server with key {self.key} "
                                            f"({why}); {self._query_hint()}")
        try:
            registered, free, pending, _ = self._counts(self.summary(2.0))
            state = f"{registered} registered, {free} free, {pending} request(s) waiting"
        except TransportError:
            state = "the tracker stopped answering"
        raise TransportError("connect", f"no free board with key {self.key} on tracker {self.tracker} within "
                                        f"{timeout_s:g} s ({state}); {self._query_hint()}")

    def connect(self) -> None:
        """Request a session from the tracker (TVM's own; no broker of ours) unless one is held."""
        if self.session is not None:
            return
        start = time.perf_counter()
        try:
            self._request(self.request_timeout_s, wait_registered=False)
        finally:
            self.connect_s += time.perf_counter() - start

    def reconnect(self, why: str = "") -> None:
        """Drop the session and request a fresh one (any server of the key), waiting up to the request timeout
        for one to register or come free; DeviceLost naming the tracker, the key and what happened otherwise."""
        self.close()
        start = time.perf_counter()
        try:
            self._request(self.request_timeout_s, wait_registered=True)
        except TransportError as err:
            lost = f"lost ({why}); " if why else ""
            raise DeviceLost(f"device {self.device} {lost}no new session within {self.request_timeout_s:g} s "
                             f"({str(err).removeprefix('connect: ')})") from None
        finally:
            self.connect_s += time.perf_counter() - start

    def close(self) -> None:
        """Hand the server back to the tracker (the session ends when its last reference goes)."""
        if self.session is not None:
            self.session = None
            gc.collect()

    # -- what the board can tell ----------------------------------------------------------------------------------

    def _remote_call(self, name: str):
        try:
            return self.session.get_function(name)()
        except Exception:  # noqa: BLE001 - a server without that function (a runtime-only TVM) says nothing
            return None

    def probe(self) -> dict:
        """What the server tells about the board: ``machine`` (from its LLVM triple, when the server has TVM's
        compiler), ``threads`` (its runtime's thread pool). ``tvm`` is None: an rpc server does not report its
        TVM version (a mismatched runtime shows as artifacts that fail to load)."""
        self.connect()
        triple = self._remote_call("target.llvm_get_system_triple")
        threads = self._remote_call("runtime.NumThreads")
        registered = None
        try:
            registered = self._counts(self.summary(2.0))[0]
        except TransportError:
            pass
        return {"rpc": f"{self.host}:{self.port}/{self.key}", "tvm": None, "machine": str(triple).split("-")[0]
                if triple else None, "triple": str(triple) if triple else None,
                "threads": int(threads) if threads is not None else None, "servers": registered,
                "tvm_note": "the rpc server does not report its TVM version"}

    def device_meta(self) -> dict:
        """The rows' device metadata: what is honestly known over the session."""
        probe = self.probe()
        meta = {"machine": probe["machine"], "rpc_tracker": self.tracker, "rpc_key": self.key,
                "tvm_threads": probe["threads"], "timer": "tvm time_evaluator (rpc)"}
        return {k: v for k, v in meta.items() if v is not None}

    # -- a group of variants ---------------------------------------------------------------------------------

    def run_group(self, *, models, inputs, batch: int, measure, python: str = "", label: str = "job",
                  keep: bool = False, device: str = "cpu") -> list:
        """The contract of :func:`harness.device.session.run_group_on_device`, through the session: one
        :class:`DeviceRun` per model. A session that breaks raises :class:`ConnectionLost`; a group that runs past
        ``measure.timeout_s`` per variant gives up the session (the next group requests a fresh one)."""
        from ..device.session import DeviceRun

        self.connect()
        runs = [DeviceRun() for _ in models]
        steps: dict[str, float] = {}
        box: dict = {}

        def work():
            try:
                _measure_group(self, models, inputs, batch, measure, runs, steps, label, device)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = err

        timeout_s = measure.timeout_s * len(models)
        thread = threading.Thread(target=work, name=f"rpc-group-{label}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            self.session = None  # abandoned to the stuck call; the next group requests a fresh session
            error = (f"run: timed out after {timeout_s:g} s ({len(models)} variant(s) x [measure].timeout_s) on "
                     f"{self.device}; raise [measure].timeout_s")
            for run in runs:
                run.error = run.error or error
                run.result = None
        elif "error" in box:
            err = box["error"]
            if isinstance(err, (TransportError, KeyboardInterrupt)):
                raise err
            if _session_broke(err):
                self.session = None
                raise ConnectionLost("run", f"the rpc session with {self.device} broke "
                                            f"({_short(err)})") from None
            for run in runs:
                run.error = run.error or f"run: {_short(err)}"
        for run in runs:
            run.steps_s = dict(steps)
        return runs

    def time_kernels(self, library: Path, arrays: Path, specs: list[dict], *, repeat: int, min_repeat_ms: int,
                     timeout_s: float, device: str = "cpu") -> dict[str, dict]:
        """Kernel selection's timer over the session (as ``harness/board/timer.py`` does on a board): every
        kernel of ``library`` timed with the remote ``time_evaluator`` on the remote ``device`` ("cpu", or "cuda"
        for a CUDA target's bundle); ``{id: {"median_us", "results_us"} | {"error"}}``."""
        import numpy as np
        import tvm

        self.connect()
        dev = self._timing_device(device)
        try:
            self.uploads += 1
            name = f"{self.uploads}-kernels.so"
            self.session.upload(str(library), name)
            lib = self.session.load_module(name)
        except Exception as err:  # noqa: BLE001
            if _session_broke(err):
                self.session = None
            raise TransportError("select", f"the kernel bundle did not load on {self.device} ({_short(err)})") \
                from None
        with np.load(arrays) as npz:
            host = {name: npz[name] for name in npz.files}
        tensors: dict = {}
        times: dict = {}
        deadline = time.monotonic() + timeout_s
        for spec in specs:
            if time.monotonic() > deadline:
                times[spec["id"]] = {"error": f"not timed: the timer ran past {timeout_s:g} s"}
                continue
            try:
                args = []
                for name in spec["args"]:
                    if name not in tensors:
                        tensors[name] = tvm.runtime.tensor(np.ascontiguousarray(host[name]), dev)
                    args.append(tensors[name])
                shape, dtype = spec["out"]
                args.append(tvm.runtime.tensor(np.zeros(shape, dtype=dtype), dev))
                timer = lib.time_evaluator(spec["func"], dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
                results_us = [float(s) * 1e6 for s in timer(*args).results]
                times[spec["id"]] = {"median_us": statistics.median(results_us), "results_us": results_us}
            except Exception as err:  # noqa: BLE001 - one kernel's failure is its own entry
                if _session_broke(err):
                    self.session = None
                    raise TransportError("select", f"the rpc session with {self.device} broke while timing "
                                                   f"kernels ({_short(err)})") from None
                times[spec["id"]] = {"error": f"{type(err).__name__}: {_short(err)}"}
        try:
            self.session.remove(name)
        except Exception:  # noqa: BLE001 - the server's session folder goes with the session
            pass
        return times

    def _timing_device(self, device: str):
        """The session's ``device`` 0, checked to be there: a server without it fails the timing in one line."""
        dev = self.session.device(device, 0)
        try:
            present, why = bool(dev.exist), ""
        except Exception as err:  # noqa: BLE001 - "Device API cuda is not enabled": a TVM runtime without CUDA
            if _session_broke(err):
                self.session = None
                raise TransportError("select", f"the rpc session with {self.device} broke ({_short(err)})") from None
            present, why = False, f" ({_short(err)})"
        if not present:
            raise TransportError("select", f"the kernel timer on {self.device} failed: no {device.upper()} "
                                           f"device{why}")
        return dev

    def fingerprint(self) -> dict:
        """What decides kernel timings on the board, as far as the session tells (kernel selection's cache key)."""
        probe = self.probe()
        return {"rpc": f"{self.host}:{self.port}/{self.key}", "machine": probe["machine"], "cpu_model": None,
                "cores": None, "tvm": None, "tvm_num_threads": probe["threads"]}

    # -- no shell on the board ------------------------------------------------------------------------------

    def _no_shell(self, step: str):
        raise TransportError(step, f"the rpc transport cannot run commands or keep files on {self.device} (a TVM "
                                   "rpc_server has no shell); use an ssh:// device for that")

    def make_workdir(self, label: str) -> str:
        self._no_shell("prepare")

    def mkdir(self, remote_dir: str, name: str) -> str:
        self._no_shell("prepare")

    def put(self, local: Path, remote_dir: str, name: str | None = None) -> str:
        self._no_shell("upload")

    def get(self, remote: str, local: Path) -> Path:
        self._no_shell("fetch")

    def run(self, command, *, env=None, timeout_s=None, cwd=None):
        self._no_shell("run")

    def remove(self, remote_dir: str) -> None:
        self._no_shell("clean")

    def default_python(self) -> str:
        return ""


def _short(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # TVM errors carry a traceback; the last line is the message
    return (lines[-1] if lines else type(err).__name__)[:300]


def _session_broke(err: BaseException) -> bool:
    """Whether a TVM error says the session (socket, server process) broke, not the model."""
    text = f"{type(err).__name__} {err}".lower()
    return isinstance(err, (OSError, ConnectionError)) or any(word in text for word in _LOST)


# -- the measurement, on the host's side of the session ------------------------------------------------------------


class _Variant:
    """One model of the group: its VM on the remote CPU with the first batch set as its input."""

    def __init__(self, index: int):
        self.index = index
        self.vm = None
        self.error: str | None = None
        self.round_samples: list[list[int]] = []
        self.rounds: list[dict] = []
        self.warmup_runs = 0
        self.phases_s = {"load": 0.0, "warmup": 0.0, "measure": 0.0, "energy": 0.0, "eval": 0.0}
        self.model_time_ms = None
        self.model_time_error = None


def _measure_group(transport: RpcTransport, models, inputs: dict, batch: int, measure, runs, steps,
                   label: str, device: str = "cpu") -> None:
    """Upload, load, time in interleaved rounds, evaluate; fills ``runs`` and ``steps``. Per-model failures are
    that model's error; a broken session propagates (the caller turns it into ConnectionLost)."""
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from ..board.rounds import median, unsettled
    from ..board.runner import as_batches

    remote = transport.session
    dev = remote.device(device, 0)  # "cpu" or "cuda": the accelerator the artifacts were built for
    arrays = [np.ascontiguousarray(a) for a in inputs.values()]
    first_chunk = next(as_batches(arrays, batch))[0]
    variants = [_Variant(i) for i in range(len(models))]

    def fail(variant: _Variant, err: BaseException, where: str = "") -> None:
        if _session_broke(err):
            raise err
        variant.error = f"{where}{type(err).__name__}: {_short(err)}"

    start = time.perf_counter()
    for variant, (artifact, peer) in zip(variants, models):
        if peer is not None:
            variant.error = PEER_ERROR
            continue
        t0 = time.perf_counter()
        # a name never used in the session: the server's dlopen would hand back a library loaded under the same path
        transport.uploads += 1
        name = f"{transport.uploads}-{label}-model{variant.index}{Path(str(artifact)).suffix or '.so'}"
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        try:
            remote.upload(str(artifact), name)
            variant.vm = VirtualMachine(remote.load_module(name), dev)
            variant.vm.set_input("main", *[tvm.runtime.tensor(c, dev) for c in first_chunk])
        except Exception as err:  # noqa: BLE001
            fail(variant, err, "load: ")
        try:
            remote.remove(name)
        except Exception:  # noqa: BLE001 - the server's session folder goes with the session
            pass
        variant.phases_s["load"] = time.perf_counter() - t0
    steps["upload"] = time.perf_counter() - start

    n_rounds = max(1, int(measure.rounds))
    rules = {"warmup_runs": int(measure.warmup_runs), "warmup_s": float(measure.warmup_s),
             "min_runs": -(-int(measure.min_runs) // n_rounds), "min_s": float(measure.min_s) / n_rounds,
             "max_runs": max(1, int(measure.max_runs) // n_rounds)}
    live = lambda: [v for v in variants if v.error is None]  # noqa: E731

    def take_round(variant: _Variant, keep: bool = True) -> None:
        start_ns = time.perf_counter_ns()
        try:
            t0 = time.perf_counter()
            # warm-up: both a run count and a duration (TVM's timer grows `number` to reach min_repeat_ms)
            warm = variant.vm.time_evaluator("invoke_stateful", dev, number=max(1, rules["warmup_runs"]), repeat=1,
                                             min_repeat_ms=int(math.ceil(rules["warmup_s"] * 1000)))("main")
            per_call = max(float(warm.mean), 1e-9)
            warm_n = 1 + max(rules["warmup_runs"], int(rules["warmup_s"] / per_call))
            t1 = time.perf_counter()
            repeats = min(rules["max_runs"], max(rules["min_runs"], int(math.ceil(rules["min_s"] / per_call))))
            timed = variant.vm.time_evaluator("invoke_stateful", dev, number=1, repeat=max(1, repeats))("main")
            samples = [int(round(float(s) * 1e9)) for s in timed.results]
            t2 = time.perf_counter()
        except Exception as err:  # noqa: BLE001
            fail(variant, err)
            return
        variant.phases_s["warmup"] += t1 - t0
        variant.phases_s["measure"] += t2 - t1
        if not keep:
            return
        variant.warmup_runs += warm_n
        variant.round_samples.append(samples)
        variant.rounds.append({"n": len(samples), "p50_ns": median(samples), "warmup_runs": warm_n,
                               "measure_s": t2 - t1, "start_ns": start_ns, "freq_khz": None})

    def is_unsettled(variant: _Variant) -> bool:
        return bool(unsettled(variant.round_samples, max_ci=measure.max_ci, max_spread=measure.max_spread,
                              min_rounds=n_rounds))

    start = time.perf_counter()
    for variant in live():  # a settling round, discarded (as the runner does)
        take_round(variant, keep=False)
    for _ in range(n_rounds):
        for variant in live():
            take_round(variant)
    extend_until = time.perf_counter() + float(measure.extend_s)
    max_rounds = max(n_rounds, int(measure.max_rounds))
    while time.perf_counter() < extend_until:
        if not any(len(v.rounds) < max_rounds and is_unsettled(v) for v in live()):
            break
        for variant in live():
            if len(variant.rounds) < max_rounds:
                take_round(variant)
    for variant in live():  # the model time by the C++ timer, as the runner reports it
        try:
            timer = variant.vm.time_evaluator("invoke_stateful", dev, number=1, repeat=15, min_repeat_ms=1)
            variant.model_time_ms = [float(t) * 1e3 for t in timer("main").results]
        except Exception as err:  # noqa: BLE001
            if _session_broke(err):
                raise
            variant.model_time_error = f"{type(err).__name__}: {_short(err)}"
    steps["run"] = time.perf_counter() - start

    start = time.perf_counter()
    outputs = {}
    for variant in live():
        t0 = time.perf_counter()
        try:
            parts = []
            for chunks, real in as_batches(arrays, batch):
                variant.vm.set_input("main", *[tvm.runtime.tensor(c, dev) for c in chunks])
                variant.vm.invoke_stateful("main")
                parts.append(np.asarray(_first_output(variant.vm.get_outputs("main")))[:real])
            outputs[variant.index] = np.concatenate(parts)
        except Exception as err:  # noqa: BLE001
            fail(variant, err, "evaluate: ")
        variant.phases_s["eval"] = time.perf_counter() - t0
        variant.vm = None  # free the artifact on the board before the next one evaluates
    steps["fetch"] = time.perf_counter() - start

    meta = transport.device_meta()
    for variant, run in zip(variants, runs):
        run.result = {"ok": variant.error is None, "error": variant.error, "engine": "tvm",
                      "latencies_ns": [s for r in variant.round_samples for s in r], "rounds": variant.rounds,
                      "unsettled": [list(b) for b in unsettled(variant.round_samples, max_ci=measure.max_ci,
                                                               max_spread=measure.max_spread, min_rounds=n_rounds)]
                      if variant.error is None else [],
                      "warmup_runs": variant.warmup_runs, "phases_s": variant.phases_s, "energy": dict(ENERGY),
                      "model_time_ms": variant.model_time_ms, "model_time_error": variant.model_time_error,
                      "peak_rss_mb": None, "rss_after_load_mb": None, "threads": meta.get("tvm_threads"),
                      "device_meta": meta}
        if variant.error is not None:
            run.error = variant.error if variant.error.startswith("run: ") else f"run: {variant.error}"
        else:
            run.outputs = outputs[variant.index]


def _first_output(out):
    """The first tensor of a VM result (a Tensor, or an Array/tuple of them), as numpy."""
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()
