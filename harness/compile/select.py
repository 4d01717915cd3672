"""Kernel selection, its own step: time every candidate kernel of every layer on the device, keep the fastest.

    survey (host)  -> which layers the builds have: weight shape, batch, nonzero pattern, candidate kernels
    bundle (host)  -> the candidates not timed yet on this device, compiled for its target into one library
    time (device)  -> the board-side timer (``harness/board/timer.py``) times each with TVM's ``time_evaluator``
    plan (host)    -> per layer: the fastest candidate, every candidate's time, the device they came from

Shipped and run through the same transport as the model runs (local subprocess, SSH, emulation), so the times come
from the device that runs the model. Times are cached per device fingerprint (CPU model, machine, threads, TVM
version as the device reports them, plus the target and the kernels' source hash): a second run on the same board
measures nothing new. When the device cannot be measured (no transport, a failed timer) the rule decides, and the
plan says so. The compile step only reads the plan.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HarnessError
from ..paths import cache_dir
from .cache import BuildRequest, schedules_hash
from .plan import KernelPlan, LayerPlan, describe_device, fingerprint_id

#: format of the timing and survey caches (bump when what they hold changes meaning)
CACHE_FORMAT = 2  # 2: layers carry an NCHW conv's (images, pixels)
#: time_evaluator settings on the device: medians of `repeat` runs of at least `min_repeat_ms` each
REPEAT = 9
MIN_REPEAT_MS = 2


@dataclass
class Selection:
    """The outcome of one selection step: the plan over every layer, and which layers each build has."""

    plan: KernelPlan
    layers_of: dict[str, tuple[str, ...]] = field(default_factory=dict)  # BuildRequest.survey_key -> layer keys
    timed: int = 0  # candidate kernels timed on the device by this step
    reused: int = 0  # candidate times taken from the device's timing cache
    seconds: float = 0.0

    def plan_for(self, req: BuildRequest) -> KernelPlan | None:
        """The plan of one build (its layers only), or None when the rule decides for all of it."""
        keys = self.layers_of.get(req.survey_key)
        if keys is None:
            return None
        return self.plan.subset(keys)


@dataclass(frozen=True)
class _Layer:
    """A layer to choose for: its candidates as label -> (candidate, kernel_key)."""

    key: str
    shape: tuple[int, int]
    batch: int
    kernels: dict
    rule: tuple  # (label, candidate, info) of the rule, used when nothing could be measured
    conv: tuple[int, int] | None = None  # an NCHW conv's (images, pixels): its candidates are conv_nchw kernels


class _JsonCache:
    """A small JSON file under the cache directory, written atomically."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # missing, torn or corrupt: measure again rather than trust it
        return data if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else {}

    def write(self, data: dict) -> None:
        """Atomic (this writer's own temp file, fsync, rename); a cache that cannot be written is only a cache: the
        next run measures again."""
        from .cache import atomic_write

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps({**data, "format": CACHE_FORMAT}).encode())
        except OSError:
            pass


def timing_cache(fingerprint: dict) -> _JsonCache:
    return _JsonCache(cache_dir() / "kernel-timings" / f"{fingerprint_id(fingerprint)}.json")


def _survey_cache(req: BuildRequest) -> _JsonCache:
    return _JsonCache(cache_dir() / "surveys" / f"{req.survey_key}.json")


def _survey(req: BuildRequest) -> tuple[list[_Layer], dict]:
    """The layers of ``req`` (from the survey cache, else by importing the model) and, when imported here, their
    weights by layer key (needed to build kernels that still have to be timed)."""
    cached = _survey_cache(req).read()
    if cached:
        try:
            return [_Layer(x["key"], tuple(x["shape"]), x["batch"],
                           {label: (_candidate(c), k) for label, (c, k) in x["kernels"].items()},
                           (x["rule"][0], _candidate(x["rule"][1]), x["rule"][2]),
                           tuple(x["conv"]) if x.get("conv") else None) for x in cached["layers"]], {}
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            pass  # a damaged survey is a miss: survey again (and overwrite it)
    from schedules.choose import kernel_key, pattern_digest, rule_chooser
    from schedules.cuda import GpuInfo
    from schedules.kernels import candidates, cuda_candidates, label

    from .tvm_adapter import survey

    rule = rule_chooser()
    layers, weights = [], {}
    for key, weight, m, cpu, conv in survey(req):
        pattern = pattern_digest(weight)
        # a CUDA layer: ours against TVM's default schedule, timed on the GPU; an NCHW conv has dense and BSR
        # kernels (conv_nchw), which are the ones timed for it
        cands = cuda_candidates(weight) if isinstance(cpu, GpuInfo) else candidates(weight)
        if conv is not None:
            cands = [c for c in cands if c[0] in ("dense", "bsr")]
        kernels = {label(c): (c, kernel_key(c, weight, m, pattern=pattern, conv=conv)) for c in cands}
        candidate, info = rule(weight, m, cpu)
        layers.append(_Layer(key, tuple(weight.shape), m, kernels, (label(candidate), candidate, info), conv))
        weights[key] = (weight, m, cpu, conv)
    _survey_cache(req).write({"layers": [
        {"key": x.key, "shape": list(x.shape), "batch": x.batch, "rule": [x.rule[0], _jsonable(x.rule[1]), x.rule[2]],
         "kernels": {label: [_jsonable(c), k] for label, (c, k) in x.kernels.items()},
         "conv": list(x.conv) if x.conv else None} for x in layers]})
    return layers, weights


def _jsonable(candidate) -> list:
    return [candidate[0], list(candidate[1]) if candidate[1] else None]


def _candidate(data) -> tuple:
    return (data[0], tuple(data[1]) if data[1] else None)


def select_kernels(requests: Sequence[BuildRequest], *, transport, python: str, toolchain: str, timeout_s: float,
                   log: Callable[[str], None] | None = None) -> Selection:
    """Plan the kernels of ``requests`` (builds for one target) by timing their candidates on ``transport``'s device.

    Never raises for a device or timer failure: the plan then falls back to the rule and its ``note`` says why
    (the step that failed and its message).
    """
    log = log or (lambda msg: None)
    start = time.perf_counter()
    ours = [r for r in requests if r.kernels == "ours"]
    selection = Selection(KernelPlan(device=transport.device))
    if not ours:
        return selection
    surveyed: dict[str, _Layer] = {}
    weights: dict[str, tuple] = {}
    for req in ours:
        if req.survey_key in selection.layers_of:
            continue
        try:
            layers, found = _survey(req)
        except Exception:  # noqa: BLE001 - the model does not import: its build fails and says why, as a row
            continue
        selection.layers_of[req.survey_key] = tuple(x.key for x in layers)
        for layer in layers:
            surveyed.setdefault(layer.key, layer)
        weights.update(found)
    if not any(layer.kernels for layer in surveyed.values()):
        selection.plan = _plan(transport.device, {}, surveyed, {}, "", set())
        return selection

    from ..device.timing import board_fingerprint

    target = ours[0].target
    note, times, fresh = "", {}, set()
    try:
        log(f"kernel selection: fingerprinting {transport.device}")
        # a transport that times kernels itself (rpc: no shell on the board) also says what decides its timings
        board = (transport.fingerprint() if hasattr(transport, "time_kernels")
                 else board_fingerprint(transport, python, timeout_s=min(timeout_s, 300)))
        fingerprint = {**board, "target": target, "schedules": schedules_hash(), "tvm_host": _host_tvm()}
        cache = timing_cache(fingerprint)
        times = _valid_times(cache.read().get("times"))
        missing = {k: (c, layer.key) for layer in surveyed.values() for c, k in layer.kernels.values()
                   if k not in times}
        selection.reused = len({k for layer in surveyed.values() for _, k in layer.kernels.values() if k in times})
        if missing:
            # kernels whose layer came from the survey cache need its weights: import those models again
            for req in ours:
                keys = selection.layers_of.get(req.survey_key, ())
                if any(missing_layer in keys and missing_layer not in weights
                       for _, missing_layer in missing.values()):
                    _survey_cache(req).path.unlink(missing_ok=True)
                    weights.update(_survey(req)[1])
            log(f"kernel selection: timing {len(missing)} candidate kernels on {transport.device}")
            measured = _time_on_device(missing, weights, target, toolchain, transport, python, timeout_s)
            fresh = set(measured)
            times.update(measured)
            selection.timed = len(measured)
            cache.write({"fingerprint": fingerprint, "times": times})
    except (HarnessError, OSError) as err:  # TransportError is a HarnessError: the device could not be measured
        note = f"kernel selection on {transport.device} failed ({err}); the rule decided"
        fingerprint = {}
        log(note)
    selection.plan = _plan(transport.device, fingerprint, surveyed, times, note, fresh)
    selection.seconds = time.perf_counter() - start
    return selection


def _valid_times(times) -> dict:
    """The well-formed entries of a timing cache's ``times`` (``{kernel_key: {"median_us": float, ...}}``, or an
    entry without ``median_us`` for a kernel that could not be timed); a damaged one is timed again, never a crash."""
    if not isinstance(times, dict):
        return {}
    return {k: v for k, v in times.items() if isinstance(v, dict) and
            ("median_us" not in v or isinstance(v["median_us"], (int, float)) and not isinstance(v["median_us"], bool))}


def _host_tvm() -> str:
    from .tvm_adapter import tvm_version

    return tvm_version()


def _time_on_device(missing: dict, weights: dict, target: dict, toolchain_name: str, transport, python: str,
                    timeout_s: float) -> dict:
    """Build the bundle of ``missing`` kernels, time it on the device; ``{kernel_key: {"median_us", ...}}``."""
    from ..device.timing import time_kernels
    from .toolchains import find_toolchain
    from .tvm_adapter import export_bundle

    kernels, cpu = [], None
    for kkey, (candidate, layer_key) in missing.items():
        weight, m, cpu, conv = weights[layer_key]
        kernels.append((kkey, candidate, weight, m, conv))
    device = "cuda" if target.get("kind") == "cuda" else "cpu"  # where the timer runs the kernels
    with tempfile.TemporaryDirectory(prefix="sparsebench-select-") as tmp:
        toolchain = find_toolchain(toolchain_name)
        try:
            lib, npz, specs = export_bundle(kernels, cpu, target, toolchain, tmp)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the rule decides, and the plan says why
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            raise HarnessError(f"building the timing bundle: {last[:500]}") from None
        if hasattr(transport, "time_kernels"):  # the rpc transport: the remote time_evaluator, through its session
            result = transport.time_kernels(Path(lib), Path(npz), specs, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS,
                                            timeout_s=timeout_s, device=device)
        else:
            result = time_kernels(transport, python, Path(lib), Path(npz), specs, repeat=REPEAT,
                                  min_repeat_ms=MIN_REPEAT_MS, timeout_s=timeout_s, device=device)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {kkey: {**value, "measured_at": stamp} for kkey, value in result.items()}


def _plan(device: str, fingerprint: dict, layers: dict, times: dict, note: str, fresh: set) -> KernelPlan:
    """Per layer: the fastest candidate with a measured time, else the rule (saying why)."""
    measured_on = describe_device(device, fingerprint) if fingerprint else None
    out = []
    for layer in layers.values():
        timed = {label: times[k]["median_us"] for label, (c, k) in layer.kernels.items()
                 if "median_us" in times.get(k, {})}
        if timed:
            best = min(timed, key=timed.get)
            cached = not any(k in fresh for _, k in layer.kernels.values())
            out.append(LayerPlan(layer.key, layer.shape, layer.batch, best, layer.kernels[best][0], "measured",
                                 times_us=timed, measured_on=measured_on, cached=cached))
            continue
        label, candidate, info = layer.rule
        why = note or ("no candidate kernel could be timed" if layer.kernels else "no measured kernels for this target")
        out.append(LayerPlan(layer.key, layer.shape, layer.batch, label, candidate, "rule",
                             rule=f"{info.get('rule')} ({why})"))
    return KernelPlan(device=device, fingerprint=fingerprint, layers=tuple(out), note=note)
