"""Benchmark configs (TOML) and device profiles (``targets/*.toml``) as frozen dataclasses.

Everything is validated here, once, with errors that name the bad value and the fix; the rest of the harness trusts
these objects.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import HarnessError
from .paths import DEFAULT_DB, TARGETS_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

METHODS = ("unstructured", "block", "nm", "channel", "as-is")
DEFAULT_LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class Method:
    """A pruning method on the [N, K] weight: ``unstructured``; ``block`` with an r×c block (rows × cols);
    ``nm``: N:M structured, at most n nonzeros in every group of m consecutive inputs (``block`` = (n, m));
    ``channel``: whole output channels / hidden units removed (a smaller dense model, ``sparsify/channel.py``);
    ``as-is``: the model's own weights, not pruned further (its sparsity and pattern measured, ``sparsify/asis.py``)."""

    name: str
    block: tuple[int, int] = (1, 1)

    @property
    def label(self) -> str:
        """``unstructured``, ``block:16x1`` or ``nm:2:4`` -- the spelling used in configs."""
        if self.name == "block":
            return f"block:{self.block[0]}x{self.block[1]}"
        if self.name == "nm":
            return f"nm:{self.block[0]}:{self.block[1]}"
        return self.name

    @property
    def block_str(self) -> str:
        """``16x1`` for block pruning, ``2:4`` for N:M, ``""`` otherwise (the ``block`` CSV column)."""
        if self.name == "block":
            return f"{self.block[0]}x{self.block[1]}"
        if self.name == "nm":
            return f"{self.block[0]}:{self.block[1]}"
        return ""

    @property
    def fixed_level(self) -> float | None:
        """N:M fixes its own sparsity (1 − n/m); other methods take the configured levels."""
        return 1.0 - self.block[0] / self.block[1] if self.name == "nm" else None


@dataclass(frozen=True)
class TorchSpec:
    """A PyTorch model of a config (``torch = "package.module:build"``): its entry points, imported when the models
    are loaded (``harness/models/torch_model.py``), from ``folder`` (the config's) or the environment."""

    build: str  # "package.module:function" returning the torch.nn.Module
    data: str | None = None  # "package.module:function" returning (train_loader, eval_loader) of (x, y) batches
    example_input: tuple[int, ...] | None = None  # the input's shape to export at; None: the first eval batch's
    folder: Path = Path(".")  # put on sys.path while the entry points are imported and called


@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: a zoo name, an ONNX path with an optional ``.npz`` evaluation set, or a PyTorch module
    (``torch``: exported to ONNX when loaded, its eval loader the evaluation set)."""

    name: str
    path: Path | None = None  # None -> built-in zoo model
    eval_path: Path | None = None
    batches: tuple[int, ...] = (1,)
    prune_first: bool | None = None  # None: [sparsify].prune_first
    prune_last: bool | None = None  # None: [sparsify].prune_last
    # graph outputs (or tensors inside the graph) to keep, in order; the graph is cut to them. () = all outputs.
    # Quality figures (accuracy, agreement, max error) use the first.
    outputs: tuple[str, ...] = ()
    # input name -> dims, fixing dims the model leaves dynamic; dim 0 (the batch) an int or a symbol such as "N"
    shapes: tuple[tuple[str, tuple[int | str, ...]], ...] = ()
    # integer input name ("*": every integer input) -> V: made-up ids are drawn from [0, V) (no evaluation set only)
    vocab: tuple[tuple[str, int], ...] = ()
    # this model's own sparsity levels and methods (None: [sparsify].levels / methods), e.g. a small CNN at [0, 0.5]
    levels: tuple[float, ...] | None = None
    methods: tuple[Method, ...] | None = None
    # the dense model an already-pruned one (method "as-is") is compared with; None: none given
    dense_path: Path | None = None
    finetune: bool | None = None  # False: this model's variants are not fine-tuned ([sparsify.finetune] or not)
    # the model's own fine-tuning settings over [sparsify.finetune]'s (``finetune = {epochs = 20, lr = 0.003}``)
    finetune_settings: tuple[tuple[str, Any], ...] = ()
    torch: TorchSpec | None = None  # a PyTorch model (path is None then)


@dataclass(frozen=True)
class MeasureConfig:
    """How the device-side runner times a variant (seconds are wall-clock on the device)."""

    warmup_runs: int = 5
    warmup_s: float = 0.2
    min_runs: int = 30
    min_s: float = 0.5
    max_runs: int = 100_000
    # the row's timing budget (min_runs, min_s) is split over `rounds` rounds, each with its own warm-up, the variants
    # of one model and batch taking turns; a row whose median CI half-width or round spread is above its bound gets
    # more rounds (up to max_rounds, for at most extend_s seconds per model and batch) before it is INVALID
    rounds: int = 3
    max_rounds: int = 9
    max_ci: float = 0.03  # half-width of the median's 95 % CI, relative to the median
    max_spread: float = 0.03  # standard deviation of the rounds' medians, relative to the median
    extend_s: float = 30.0
    # CPUs the runner is pinned to on the device, e.g. "2-3" or "0,2" (empty: wherever the OS puts it); the thread
    # pools follow (one thread per CPU unless TVM_NUM_THREADS says otherwise)
    cpus: tuple[int, ...] = ()
    max_clock_change: float = 0.05  # a row whose CPU clocks moved more than this (max-min over max) is INVALID
    max_cv: float = 0.10  # reported (``latency_cv``), no longer a gate: the CI and the round spread are
    max_outliers: float = 0.02  # fraction of outlier iterations (> max(Q3 + 3 IQR, 2 p50)) making it INVALID
    min_valid_runs: int = 10  # fewer timed iterations than this -> INVALID
    ref_rtol: float = 1e-4  # compiled outputs vs the reference evaluation of the same model, relative to max |ref|
    timeout_s: float = 900.0  # one variant's whole run on the device
    energy_idle_s: float = 2.0  # idle window before the energy window (baseline power), when a sensor exists
    energy_window_s: float = 3.0  # model run back to back while power is sampled
    energy_rate_hz: float = 50.0  # sampling rate asked for (capped at the sensor's)
    sensor_root: str = "/"  # where the device's /sys is (a container mount, or a fake tree in tests)
    # an external power meter: argv of a command run on the device that prints the power in watts; when set it is
    # the energy sensor (the board's own sensors are not used)
    meter_command: tuple[str, ...] = ()


FINETUNE_SCHEDULES = ("gradual", "oneshot")


@dataclass(frozen=True)
class FinetuneConfig:
    """``[sparsify.finetune]``: recover the accuracy of every sparse variant by training (models the zoo can train).

    ``gradual``: Zhu & Gupta's cubic schedule from 0 to the variant's sparsity over ``steps`` pruning steps between
    the fractions ``start`` and ``end`` of the training, masks recomputed with the variant's method at each step and
    held fixed between them; ``oneshot``: pruned once, then fine-tuned with the mask fixed."""

    epochs: int = 6
    lr: float = 2e-3
    schedule: str = "gradual"
    start: float = 0.0
    end: float = 0.5
    steps: int = 8
    batch: int = 64
    seed: int = 0

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class SparsifyConfig:
    """Which variants to make: every method at every level (level 0 is the single dense baseline)."""

    levels: tuple[float, ...] = DEFAULT_LEVELS
    methods: tuple[Method, ...] = (Method("unstructured"), Method("block", (16, 1)))
    prune_first: bool = True
    prune_last: bool = False
    finetune: FinetuneConfig | None = None  # None: one-shot pruning, no recovery


#: ``[run] accelerator`` / ``--accelerator``: the role of the profile's target that compiles and runs the models
ACCELERATORS = ("cpu", "cuda")


@dataclass(frozen=True)
class CompareConfig:
    """Dense runtimes measured next to our builds (``[compare]``): names from :data:`harness.peers.BASELINES` (the
    peer runtimes, and ``tvm-default``: the dense model through TVM's own default pipeline). A peer the device cannot
    import is skipped with a note, never an error; ``peers = []`` turns the comparison off. A CUDA run always adds
    ``tvm-default`` (TVM's dlight GPU schedules: the dense build to beat on a GPU)."""

    peers: tuple[str, ...] = ("onnxruntime",)


@dataclass(frozen=True)
class RunConfig:
    """A whole benchmark: models x variants x batches on one target."""

    name: str
    target: str
    models: tuple[ModelSpec, ...]
    sparsify: SparsifyConfig = field(default_factory=SparsifyConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    db: Path = DEFAULT_DB
    source: str = ""  # the TOML text (stored with the run)
    accelerator: str = "cpu"  # which of the profile's targets runs the models: "cpu" or "cuda" (ACCELERATORS)


@dataclass(frozen=True)
class TargetProfile:
    """A device profile from ``targets/<name>.toml``: how to compile for it and how to reach it."""

    name: str
    description: str
    tvm_target: dict  # resolved TVM target dict (``mcpu = "from-cpuinfo"`` already replaced)
    transport: str = "local"
    python: str = ""  # interpreter on the device; "" = the transport's default (local: the harness's own)
    path: Path | None = None
    # every target of the board by role: {"cpu": tvm_target} plus e.g. {"cuda": {... "host": tvm_target}}
    tvm_targets: dict = field(default_factory=dict)
    # roles the profile names but this machine cannot resolve, and why (``arch = "from-nvidia-smi"`` without a GPU)
    unresolved: dict = field(default_factory=dict)
    toolchain: str = "native"  # how artifacts are linked: one of TOOLCHAINS
    port: int = 22  # default ssh port (Termux's sshd: 8022); the device URL and ~/.ssh/config win
    remote_root: str = "~/.cache/sparsebench"  # per-run work directories go below this on the device
    energy: tuple[str, ...] = ()  # power sensor kinds the board has, in order of preference (ENERGY_SENSORS)
    needs: tuple[str, ...] = ()  # what the device needs installed (text; `sparsebench doctor` checks it)
    prepare: tuple[str, ...] = ()  # commands to run on the device before measuring (clocks, governor)
    notes: str = ""
    # the link's fault handling (transports/ssh.py); None: the transport's defaults
    reconnect_attempts: int | None = None  # reconnects before the device counts as lost (default 3)
    reconnect_backoff_s: float | None = None  # first wait between them, doubling (default 1 s)
    stall_s: float | None = None  # no heartbeat from the runner for this long is a stall (default 60 s)
    keepalive_s: float | None = None  # SSH keepalive interval (default 5 s)


#: the [device] keys of a profile for the link's fault handling, with their lowest allowed value
LINK_SETTINGS = {"reconnect_attempts": 0, "reconnect_backoff_s": 0.0, "stall_s": 1.0, "keepalive_s": 1.0}


#: cross toolchains a profile may name: the host compiler, GNU/zig for aarch64 Linux, the Android NDK
TOOLCHAINS = ("native", "aarch64-linux-gnu", "aarch64-linux-android")
#: power sensor kinds, spelled as the ``method`` of the sensor backends in ``harness/board/sensors/`` (a test keeps
#: them equal): Jetson INA3221 (hwmon on JetPack 5+, IIO on JetPack 4), tegrastats, the Pi 5 PMIC via vcgencmd, a
#: phone's battery fuel gauge, Intel RAPL, an external meter (boards without an on-board sensor)
ENERGY_SENSORS = ("jetson-ina3221-hwmon", "jetson-ina3221-iio", "jetson-tegrastats", "rpi5-pmic", "android-battery",
                  "linux-rapl", "external-meter")


# ---------------------------------------------------------------------------------------------------------------
# parsing helpers


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise HarnessError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def check_sparsity(level: Any, where: str = "sparsity") -> float:
    """A sparsity level must be a number in [0, 1): 1.0 would remove every weight."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= float(level) < 1.0:
        raise HarnessError(f"{where}: sparsity {level!r} is outside [0, 1); use a fraction of zeros such as 0.9")
    return float(level)


_BLOCK_RE = re.compile(r"^block:(\d+)x(\d+)$")
_NM_RE = re.compile(r"^nm:(\d+):(\d+)$")


def parse_method(text: str, where: str = "sparsify.methods") -> Method:
    """``unstructured``, ``block:RxC``, ``nm:N:M``, ``channel`` or ``as-is``."""
    if text in ("unstructured", "channel", "as-is"):
        return Method(text)
    match = _BLOCK_RE.match(text)
    if match:
        r, c = int(match.group(1)), int(match.group(2))
        if r < 1 or c < 1:
            raise HarnessError(f"{where}: block shape {text!r} needs positive sizes, e.g. block:16x1")
        return Method("block", (r, c))
    match = _NM_RE.match(text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise HarnessError(f"{where}: N:M pattern {text!r} needs 0 < N < M, e.g. nm:2:4")
        return Method("nm", (n, m))
    raise HarnessError(
        f"{where}: unknown method {text!r}; known: unstructured, block:RxC (e.g. block:16x1), nm:N:M (e.g. nm:2:4), "
        "channel, as-is"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: a model name is an identifier, never a path: it names files in the cache (variants, cut models, artifacts)
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
#: the largest batch a config may ask for (the device's memory bounds it further, checked in preflight)
MAX_BATCH = 65536


def check_model_name(name: Any, where: str = "model") -> str:
    """A model name: letters, digits, ``-``, ``_`` and ``.``, not starting with ``.`` -- never a path (``/``,
    ``..``), since it names files in the cache."""
    if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name) or ".." in name:
        raise HarnessError(f"{where}: model name {name!r} is not an identifier; use letters, digits, '-', '_' and "
                           f"'.' (not first, no '..', no '/'), e.g. name = \"my-model\"")
    return name


def _table(data: dict, key: str, where: str, example: str) -> dict:
    """``data[key]`` as a TOML table ({} when absent); anything else is one error naming the key."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise HarnessError(f"{where} must be a table, e.g. {example}; got {value!r}")
    return value


def _string(table: dict, key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise HarnessError(f"{where}.{key} must be a non-empty string, e.g. {key} = {default!r}; got {value!r}")
    return value


def _bool(table: dict, key: str, where: str, default: bool | None) -> bool | None:
    value = table.get(key, default)
    if value is not default and not isinstance(value, bool):
        raise HarnessError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _number(key: str, value: Any, *, integer: bool, low: float, low_open: bool = False,
            high: float | None = None) -> float | int:
    """A [measure] number: an int where ``integer``, at least ``low`` (above it where ``low_open``), at most
    ``high``; one error naming the key and the range otherwise."""
    kind = "a whole number" if integer else "a number"
    ok = _is_int(value) if integer else (isinstance(value, (int, float)) and not isinstance(value, bool))
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        if high is not None:
            bound += f" and <= {high:g}"
        raise HarnessError(f"[measure].{key} must be {kind} {bound}, got {value!r}")
    return value


#: [measure] numbers: key -> (integer, lower bound, lower bound excluded, upper bound)
_MEASURE_NUMBERS = {
    "warmup_runs": (True, 0, False, None), "warmup_s": (False, 0, False, None),
    "min_runs": (True, 1, False, None), "min_s": (False, 0, False, None), "max_runs": (True, 1, False, None),
    "rounds": (True, 1, False, None), "max_rounds": (True, 1, False, None),
    "max_ci": (False, 0, True, None), "max_spread": (False, 0, True, None), "extend_s": (False, 0, False, None),
    "max_clock_change": (False, 0, True, None), "max_cv": (False, 0, True, None),
    "max_outliers": (False, 0, False, 1), "min_valid_runs": (True, 0, False, None),
    "ref_rtol": (False, 0, True, None), "timeout_s": (False, 0, True, None),
    "energy_idle_s": (False, 0, False, None), "energy_window_s": (False, 0, False, None),
    "energy_rate_hz": (False, 0, True, None),
}


def _parse_io(table: dict, where: str) -> dict:
    """``outputs``, ``shapes`` and ``vocab`` of a [[models]] table, checked (whether the names exist is checked when
    the model is loaded)."""
    out: dict[str, Any] = {}
    if "outputs" in table:
        outputs = table["outputs"]
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) and o for o in outputs):
            raise HarnessError(f"{where}: outputs must be a non-empty list of output names, e.g. "
                               f"outputs = [\"probabilities\"], got {outputs!r}")
        if len(set(outputs)) != len(outputs):
            raise HarnessError(f"{where}: outputs {outputs!r} names an output twice; name each once")
        out["outputs"] = tuple(outputs)
    if "shapes" in table:
        shapes = table["shapes"]
        example = "shapes = {input_ids = [\"N\", 128]}"
        if not isinstance(shapes, dict) or not shapes:
            raise HarnessError(f"{where}: shapes must be a table of input name -> dims, e.g. {example}, "
                               f"got {shapes!r}")
        for name, dims in shapes.items():
            ok = isinstance(dims, list) and dims and (_is_int(dims[0]) and dims[0] >= 1 or
                                                      isinstance(dims[0], str) and dims[0]) \
                and all(_is_int(d) and d >= 1 for d in dims[1:])
            if not ok:
                raise HarnessError(f"{where}: shapes.{name} must list the input's dims: positive sizes, the first "
                                   f"(the batch) a size or a symbol such as \"N\", e.g. {example}; got {dims!r}")
        out["shapes"] = tuple((name, tuple(dims)) for name, dims in shapes.items())
    if "vocab" in table:
        vocab = table["vocab"]
        example = "vocab = 30522 or vocab = {input_ids = 30522, attention_mask = 2}"
        table_form = vocab if isinstance(vocab, dict) else {"*": vocab}
        if not table_form or not all(_is_int(v) and v >= 1 for v in table_form.values()):
            raise HarnessError(f"{where}: vocab must be a positive integer (made-up integer inputs are drawn from "
                               f"[0, vocab)) or a table of them by input name, e.g. {example}; got {vocab!r}")
        out["vocab"] = tuple(table_form.items())
    return out


def _parse_model(table: Any, base: Path, index: int) -> ModelSpec:
    if not isinstance(table, dict):
        raise HarnessError(f"models[{index}] must be a table ([[models]] with name = ... and path = ...), "
                           f"got {table!r}")
    where = f"models[{index}]" + (f" ({table['name']})" if isinstance(table.get("name"), str) else "")
    _check_keys(table, {"name", "path", "eval", "batch", "prune_first", "prune_last", "outputs", "shapes", "vocab",
                        "levels", "methods", "dense", "finetune", "torch", "data", "example_input"}, where)
    prune = {k: table[k] for k in ("prune_first", "prune_last", "finetune") if k in table}
    if isinstance(prune.get("finetune"), dict):  # finetune = {epochs = 20, ...}: on, with these settings
        settings = prune["finetune"]
        values = _finetune_values(settings, f"{where}: finetune")
        prune["finetune"] = _bool(settings, "enabled", f"{where}: finetune", True)
        prune["finetune_settings"] = tuple(sorted(values.items()))
    for key, value in prune.items():
        if key != "finetune_settings" and not isinstance(value, bool):
            why = " or a table of settings, e.g. finetune = {epochs = 20}" if key == "finetune" else ""
            raise HarnessError(f"{where}: {key} must be true or false{why}, got {value!r}")
    extra = {**prune, **_parse_io(table, where)}
    if "levels" in table:
        extra["levels"] = _parse_levels(table["levels"], f"{where}: levels")
    if "methods" in table:
        extra["methods"] = _parse_methods(table["methods"], f"{where}: methods")
    batches = table.get("batch", [1])
    if isinstance(batches, int):
        batches = [batches]
    if not isinstance(batches, list) or not batches or not all(_is_int(b) and b >= 1 for b in batches):
        raise HarnessError(f"{where}: batch must be a positive integer or a list of them, got {batches!r}")
    too_big = [b for b in batches if b > MAX_BATCH]
    if too_big:
        raise HarnessError(f"{where}: batch {too_big[0]} is above the limit of {MAX_BATCH}; use a smaller batch")
    for key in ("name", "path", "eval", "dense"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise HarnessError(f"{where}: {key} must be a non-empty string, got {table[key]!r}")
    if "dense" in table:
        extra["dense_path"] = (base / table["dense"]).resolve()
    if "torch" in table or "data" in table or "example_input" in table:
        return _parse_torch_model(table, base, where, tuple(batches), extra)
    path = table.get("path")
    if path is None:
        from .models import zoo

        name = table.get("name")
        if name is None:
            raise HarnessError(f"{where}: give name = \"<built-in model>\" (known: {', '.join(zoo.MODELS)}) or "
                               "path = \"model.onnx\"")
        if name not in zoo.MODELS:
            raise HarnessError(
                f"{where}: unknown built-in model {name!r}; known: {', '.join(zoo.MODELS)} "
                "(or give path = \"model.onnx\")"
            )
        return ModelSpec(name=name, batches=tuple(batches), **extra)
    onnx_path = (base / path).resolve()
    eval_path = table.get("eval")
    name = table.get("name")
    if name is None and not _MODEL_NAME_RE.fullmatch(onnx_path.stem):
        raise HarnessError(f"{where}: the file name {onnx_path.name!r} is not a usable model name; give one with "
                           f"name = \"my-model\" (letters, digits, '-', '_', '.')")
    return ModelSpec(
        name=check_model_name(name or onnx_path.stem, where),
        path=onnx_path,
        eval_path=(base / eval_path).resolve() if eval_path else None,
        batches=tuple(batches),
        **extra,
    )


#: a torch entry point: ``package.module:function`` (the function may be an attribute path, ``module:Class.make``)
_ENTRY_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
TORCH_INSTALL = "pip install 'sparsebench[torch]'"


def _parse_torch_model(table: dict, base: Path, where: str, batches: tuple[int, ...], extra: dict) -> ModelSpec:
    """``torch = "pkg.mod:build"`` (+ ``data = "pkg.mod:loaders"``, ``example_input = [1, 64]``): checked as text
    here; the entry points are imported and called when the models are loaded, before anything is compiled."""
    import importlib.util

    if "torch" not in table:
        key = "data" if "data" in table else "example_input"
        raise HarnessError(f"{where}: {key} = ... belongs to a PyTorch model; add torch = \"package.module:build\" "
                           f"(a function returning the torch.nn.Module), or give an ONNX model with path = ... and "
                           f"eval = \"eval.npz\"")
    for key in ("path", "eval"):
        if key in table:
            raise HarnessError(f"{where}: torch = ... and {key} = ... both give the model; keep torch (it is exported "
                               f"to ONNX here, its eval loader the evaluation set) or path/eval, not both")
    for key, what in (("torch", "returning the torch.nn.Module"),
                      ("data", "returning (train_loader, eval_loader) of (x, y) batches")):
        if key in table and (not isinstance(table[key], str) or not _ENTRY_RE.fullmatch(table[key])):
            example = "build" if key == "torch" else "loaders"
            raise HarnessError(f"{where}: {key} must name a function as \"package.module:function\" ({what}), "
                               f"e.g. {key} = \"mynet.model:{example}\"; got {table[key]!r}")
    example = table.get("example_input")
    if example is not None and (not isinstance(example, list) or len(example) < 2
                                or not all(_is_int(d) and d >= 1 for d in example)):
        raise HarnessError(f"{where}: example_input must be the input's shape, batch first, e.g. example_input = "
                           f"[1, 64]; got {example!r}")
    if "data" not in table and example is None:
        raise HarnessError(f"{where}: torch = ... without data = ... needs example_input = [1, ...] (the input's "
                           f"shape) to export it; or add data = \"package.module:loaders\"")
    if importlib.util.find_spec("torch") is None:
        raise HarnessError(f"{where}: torch = ... needs PyTorch, which is not installed here; {TORCH_INSTALL}")
    name = table.get("name") or table["torch"].partition(":")[0].rsplit(".", 1)[-1]
    spec = TorchSpec(build=table["torch"], data=table.get("data"),
                     example_input=tuple(example) if example is not None else None, folder=base)
    return ModelSpec(name=check_model_name(name, where), batches=batches, torch=spec, **extra)


def _parse_levels(value: Any, where: str) -> tuple[float, ...]:
    """A non-empty list of sparsity levels in [0, 1), sorted, each once."""
    if not isinstance(value, list) or not value:
        raise HarnessError(f"{where} must be a non-empty list of sparsity levels, e.g. [0, 0.9], got {value!r}")
    return tuple(sorted({check_sparsity(v, where) for v in value}))


def _parse_methods(value: Any, where: str) -> tuple[Method, ...]:
    """A list of pruning methods (``"unstructured"``, ``"block:16x1"``, ``"nm:2:4"``); empty: the dense model only."""
    if not isinstance(value, list):
        raise HarnessError(f"{where} must be a list, e.g. [\"unstructured\", \"block:16x1\"] ([] for the dense "
                           f"model only), got {value!r}")
    return tuple(parse_method(m) for m in value)


def model_finetune(sparsify: SparsifyConfig, spec: ModelSpec) -> FinetuneConfig | None:
    """How ``spec``'s sparse variants are fine-tuned: ``[sparsify.finetune]`` with the model's own settings over it
    (``finetune = {epochs = 20}``), unless the model says ``finetune = false``; a model's ``finetune = true`` (or
    table) without ``[sparsify.finetune]`` starts from the default settings."""
    if spec.finetune is False:
        return None
    base = sparsify.finetune
    if base is None:
        if spec.finetune is None:
            return None
        base = FinetuneConfig()
    return replace(base, **dict(spec.finetune_settings)) if spec.finetune_settings else base


def _check_finetune(sparsify: SparsifyConfig, specs: tuple[ModelSpec, ...]) -> None:
    """Fine-tuning asked for a model sparsebench cannot train: one line naming it and the fix, before anything is
    compiled; a model's settings that put the schedule's end before its start, likewise."""
    from .sparsify.finetune import training_path

    for index, spec in enumerate(specs):
        cfg = model_finetune(sparsify, spec)
        if cfg is None:
            continue
        why = training_path(spec.name, spec.path, spec.torch)
        if why:
            asked = "[sparsify.finetune] is on" if spec.finetune is None else "finetune is on"
            raise HarnessError(f"models[{index}] ({spec.name}): {asked} but {spec.name} cannot be fine-tuned: {why}; "
                               f"set finetune = false in its [[models]] table (its variants stay one-shot) or "
                               f"remove [sparsify.finetune]")
        _check_window(cfg, f"models[{index}] ({spec.name}): finetune")


def _check_window(cfg: FinetuneConfig, where: str) -> None:
    if cfg.end < cfg.start:
        raise HarnessError(f"{where}: end ({cfg.end:g}) is before start ({cfg.start:g}); both are fractions of the "
                           "training, e.g. start = 0.0, end = 0.5")


def _finetune_values(table: dict, where: str) -> dict[str, Any]:
    """The settings of a finetune table (all but ``enabled``), each checked: one error naming the key and a valid
    value."""
    _check_keys(table, {"enabled", *FinetuneConfig.__dataclass_fields__}, where)
    values: dict[str, Any] = {}
    for key, (integer, low, high, example) in _FINETUNE_NUMBERS.items():
        if key not in table:
            continue
        value = table[key]
        ok = _is_int(value) if integer else isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (value >= low if key in ("epochs", "start", "end", "seed") else value > low) and \
            (high is None or value <= high)
        if not ok:
            kind = "a whole number" if integer else "a number"
            bound = f">= {low:g}" if key in ("epochs", "start", "end", "seed") else f"> {low:g}"
            bound += f" and <= {high:g}" if high is not None else ""
            raise HarnessError(f"{where}.{key} must be {kind} {bound}, e.g. {key} = {example}; got {value!r}")
        values[key] = value
    if "schedule" in table:
        schedule = table["schedule"]
        if schedule not in FINETUNE_SCHEDULES:
            raise HarnessError(f"{where}.schedule must be one of {', '.join(map(repr, FINETUNE_SCHEDULES))}, e.g. "
                               f"schedule = \"gradual\"; got {schedule!r}")
        values["schedule"] = schedule
    return values


def _parse_finetune(table: Any) -> FinetuneConfig | None:
    """``[sparsify.finetune]``: its presence turns recovery on (``enabled = false`` keeps the table but turns it
    off); every key checked, one error naming the key and a valid value."""
    where = "[sparsify.finetune]"
    if table is None:
        return None
    if not isinstance(table, dict):
        raise HarnessError(f"{where} must be a table, e.g. [sparsify.finetune] epochs = 6; got {table!r}")
    values = _finetune_values(table, where)
    if not _bool(table, "enabled", where, True):
        return None
    cfg = FinetuneConfig(**values)
    _check_window(cfg, where)
    return cfg


#: [sparsify.finetune] numbers: key -> (integer, lower bound, upper bound, example); epochs/start/end/seed may equal
#: the lower bound, the others must exceed it
_FINETUNE_NUMBERS = {
    "epochs": (True, 0, 1000, 6), "lr": (False, 0, 1, 0.002), "start": (False, 0, 1, 0.0), "end": (False, 0, 1, 0.5),
    "steps": (True, 0, 10000, 8), "batch": (True, 0, 65536, 64), "seed": (True, 0, None, 0),
}


def _parse_compare(table: Any) -> CompareConfig:
    """``[compare] peers = ["onnxruntime"]``: every name a known peer, each once."""
    from .peers import BASELINES

    if not isinstance(table, dict):
        raise HarnessError(f"[compare] must be a table, e.g. [compare] peers = [\"onnxruntime\"], got {table!r}")
    _check_keys(table, {"peers"}, "[compare]")
    if "peers" not in table:
        return CompareConfig()
    peers = table["peers"]
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        raise HarnessError(f"[compare].peers must be a list of runtime names, e.g. [\"onnxruntime\"] (or [] for "
                           f"none), got {peers!r}")
    unknown = [p for p in peers if p not in BASELINES]
    if unknown:
        raise HarnessError(f"[compare].peers: unknown peer {unknown[0]!r}; known: {', '.join(BASELINES)}")
    return CompareConfig(peers=tuple(dict.fromkeys(peers)))


def parse_config(data: dict, *, base: Path = Path("."), source: str = "") -> RunConfig:
    """Validate a config dict (the parsed TOML) into a :class:`RunConfig`."""
    _check_keys(data, {"run", "measure", "sparsify", "models", "compare"}, "config")
    run = _table(data, "run", "[run]", '[run] name = "mine"')
    _check_keys(run, {"name", "target", "db", "accelerator"}, "[run]")
    target = _string(run, "target", "[run]", "local")
    accelerator = _string(run, "accelerator", "[run]", "cpu")
    if accelerator not in ACCELERATORS:
        raise HarnessError(f"[run].accelerator: unknown accelerator {accelerator!r}; known: {', '.join(ACCELERATORS)}")
    known_targets()  # fail early with the list when the targets folder is broken
    if target not in known_targets():
        raise HarnessError(f"unknown target {target!r}; known: {', '.join(known_targets())} (profiles in {TARGETS_DIR})")
    name = _string(run, "name", "[run]", "run")
    db = _string(run, "db", "[run]", str(DEFAULT_DB))

    sp = _table(data, "sparsify", "[sparsify]", "[sparsify] levels = [0, 0.9]")
    _check_keys(sp, {"levels", "methods", "prune_first", "prune_last", "finetune"}, "[sparsify]")
    sparsify = SparsifyConfig(
        levels=_parse_levels(sp.get("levels", list(DEFAULT_LEVELS)), "[sparsify].levels"),
        methods=_parse_methods(sp.get("methods", ["unstructured", "block:16x1"]), "[sparsify].methods"),
        prune_first=_bool(sp, "prune_first", "[sparsify]", True),
        prune_last=_bool(sp, "prune_last", "[sparsify]", False),
        finetune=_parse_finetune(sp.get("finetune")),
    )

    ms = _table(data, "measure", "[measure]", "[measure] min_runs = 30")
    _check_keys(ms, set(MeasureConfig.__dataclass_fields__), "[measure]")
    for key, value in ms.items():
        if key == "cpus":
            ms = {**ms, "cpus": parse_cpus(value)}
        elif key == "sensor_root":
            if not isinstance(value, str) or not value.startswith("/"):
                raise HarnessError(f"[measure].sensor_root must be an absolute path on the device, got {value!r}")
        elif key == "meter_command":
            if not value or not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise HarnessError(f"[measure].meter_command must be a command as a list of strings, e.g. "
                                   f"[\"python3\", \"/home/pi/read_meter.py\"], got {value!r}")
            ms = {**ms, "meter_command": tuple(value)}
        else:
            integer, low, low_open, high = _MEASURE_NUMBERS[key]
            _number(key, value, integer=integer, low=low, low_open=low_open, high=high)
    measure = MeasureConfig(**ms)
    if measure.max_rounds < measure.rounds:
        raise HarnessError(f"[measure].max_rounds ({measure.max_rounds}) is below rounds ({measure.rounds}); "
                           "max_rounds caps the extension of an unsettled measurement, so make it >= rounds")

    compare = _parse_compare(data.get("compare", {}))

    models = data.get("models", [])
    if isinstance(models, dict):
        raise HarnessError("models must be an array of tables: write [[models]] (two brackets), not [models]")
    if not isinstance(models, list):
        raise HarnessError(f"models must be an array of tables ([[models]] name = \"digits-mlp\"), got {models!r}")
    if not models:
        raise HarnessError("config has no [[models]]; add one, e.g. [[models]] name = \"digits-mlp\"")
    specs = tuple(_parse_model(m, base, i) for i, m in enumerate(models))
    for spec in specs:
        if spec.dense_path is not None and not any(
                m.name == "as-is" for m in (sparsify.methods if spec.methods is None else spec.methods)):
            raise HarnessError(f"model {spec.name}: dense = ... names the dense reference of an already-pruned model, "
                               f"used with methods = [\"as-is\"]; add \"as-is\" to its methods or drop dense")
    _check_finetune(sparsify, specs)
    return RunConfig(
        name=name,
        target=target,
        models=specs,
        sparsify=sparsify,
        measure=measure,
        compare=compare,
        db=Path(db),
        source=source,
        accelerator=accelerator,
    )


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a benchmark config file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise HarnessError(f"cannot read config {path}: {err.strerror}; check the path") from None
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HarnessError(f"config {path}: not a UTF-8 text file (byte {err.start}); give the benchmark config "
                           f"(TOML), e.g. a copy of harness/configs/demo.toml") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"config {path} is not valid TOML: {err}; fix that line") from None
    return parse_config(data, base=path.resolve().parent, source=text)


# ---------------------------------------------------------------------------------------------------------------
# device profiles


def parse_cpus(value: Any) -> tuple[int, ...]:
    """``"2-3"`` / ``"0,2,4-5"`` / ``[0, 2]`` -> the CPU numbers, sorted; one clear error otherwise."""
    fix = 'give CPU numbers like "2-3", "0,2" or [0, 2]'
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return tuple(sorted(set(value)))
    if not isinstance(value, str):
        raise HarnessError(f"[measure].cpus: {value!r} is not a CPU list; {fix}")
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in value.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise HarnessError(f"[measure].cpus: {part!r} in {value!r} is not a CPU or a range; {fix}")
        cpus.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return tuple(sorted(cpus))


def known_targets() -> list[str]:
    """Names of the profiles in ``targets/`` (file stems)."""
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def cpuinfo_flags(text: str | None = None) -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (x86 ``flags`` or ARM ``Features``)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


# x86-64 micro-architecture levels (the psABI's v2/v3/v4), each with the cpuinfo flags it needs. LLVM accepts the
# level names as -mcpu; we add mattr explicitly so the vector width is visible to our schedules.
_X86_LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "fma", "f16c", "movbe"}),
    ("x86-64-v2", {"sse4_1", "sse4_2", "ssse3", "popcnt"}),
)
_X86_MATTR = (("sse4.2", "sse4_2"), ("avx", "avx"), ("avx2", "avx2"), ("fma", "fma"), ("f16c", "f16c"),
              ("avx512f", "avx512f"), ("avx512bw", "avx512bw"), ("avx512dq", "avx512dq"), ("avx512vl", "avx512vl"))


def x86_target_from_flags(flags: set[str]) -> dict:
    """An explicit x86-64 llvm target for the CPU whose cpuinfo ``flags`` are given.

    LLVM's own host detection is not trusted: inside VMs it has reported CPUs whose features the VM does not
    expose. Plain ``"llvm"`` would mean baseline SSE2 (no AVX), a 2-3x slower dense baseline.
    """
    mcpu = "x86-64"
    for name, needed in _X86_LEVELS:
        if needed <= flags:
            mcpu = name
            break
    mattr = [f"+{llvm}" for llvm, flag in _X86_MATTR if flag in flags]
    target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}
    if mattr:
        target["mattr"] = mattr
    return target


def _resolve_tvm_target(raw: dict, where: str) -> dict:
    if not isinstance(raw, dict) or "kind" not in raw:
        raise HarnessError(f"{where}: [tvm].target must be a table with a 'kind', e.g. {{kind = \"llvm\"}}")
    target = dict(raw)
    if target.get("mcpu") == "from-cpuinfo":
        import os

        derived = x86_target_from_flags(cpuinfo_flags())
        target.update({k: v for k, v in derived.items() if k not in ("kind",)})
        target.setdefault("num-cores", os.cpu_count() or 1)
    return target


def load_target(name: str) -> TargetProfile:
    """Load ``targets/<name>.toml``; unknown names list the known ones."""
    path = TARGETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise HarnessError(f"unknown target {name!r}; known: {', '.join(known_targets())} (profiles in {TARGETS_DIR})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"target profile {path} is not valid TOML: {err}") from None
    where = f"target profile {path.name}"
    _check_keys(data, {"name", "description", "notes", "device", "tvm", "build", "energy"}, where)
    device = data.get("device", {})
    _check_keys(device, {"transport", "python", "port", "remote_root", "needs", "prepare", *LINK_SETTINGS},
                f"{where} [device]")
    link = {}
    for key, lowest in LINK_SETTINGS.items():
        value = device.get(key)
        if value is None:
            continue
        integral = key == "reconnect_attempts"
        kinds = (int,) if integral else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < lowest:
            raise HarnessError(f"{where} [device]: {key} must be {'an integer' if integral else 'a number'} "
                               f">= {lowest}, got {value!r}")
        link[key] = value
    from .transports import TRANSPORTS

    transport = device.get("transport", "local")
    if transport not in TRANSPORTS:
        raise HarnessError(f"{where}: unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")
    port = device.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise HarnessError(f"{where} [device]: port must be an integer in 1-65535, got {port!r}")
    tvm = data.get("tvm", {})
    _check_keys(tvm, {"target", "cuda"}, f"{where} [tvm]")
    cpu = _resolve_tvm_target(tvm.get("target"), where)
    _check_llvm_target(cpu, f"{where} [tvm].target")
    targets, unresolved = {"cpu": cpu}, {}
    if "cuda" in tvm:
        cuda = _cuda_target(tvm["cuda"], cpu, f"{where} [tvm].cuda")
        if cuda["arch"] == FROM_NVIDIA_SMI:
            unresolved["cuda"] = ("nvidia-smi reports no GPU on this machine, so the CUDA architecture is unknown; "
                                  f"install the NVIDIA driver, or write arch = \"sm_XX\" in a copy of {path}")
        else:
            targets["cuda"] = cuda
    build = data.get("build", {})
    _check_keys(build, {"toolchain"}, f"{where} [build]")
    toolchain = build.get("toolchain", "native")
    if toolchain not in TOOLCHAINS:
        raise HarnessError(f"{where} [build]: unknown toolchain {toolchain!r}; known: {', '.join(TOOLCHAINS)}")
    if toolchain != "native" and not str(cpu.get("mtriple", "")).startswith(toolchain):
        raise HarnessError(f"{where}: toolchain {toolchain!r} does not build for mtriple {cpu.get('mtriple')!r}; "
                           f"use mtriple = \"{toolchain}\" or another toolchain")
    energy = data.get("energy", {})
    _check_keys(energy, {"sensors"}, f"{where} [energy]")
    sensors = _strings(energy.get("sensors", []), f"{where} [energy].sensors")
    unknown = [s for s in sensors if s not in ENERGY_SENSORS]
    if unknown:
        raise HarnessError(f"{where} [energy]: unknown sensor kind(s) {', '.join(unknown)}; "
                           f"known: {', '.join(ENERGY_SENSORS)}")
    for key in ("python", "remote_root", "description", "notes"):
        value = (device if key in ("python", "remote_root") else data).get(key, "")
        if not isinstance(value, str):
            raise HarnessError(f"{where}: {key} must be a string, got {value!r}")
    return TargetProfile(
        name=data.get("name", name),
        description=data.get("description", ""),
        tvm_target=cpu,
        transport=transport,
        python=device.get("python", ""),
        path=path,
        tvm_targets=targets,
        unresolved=unresolved,
        toolchain=toolchain,
        port=port,
        remote_root=device.get("remote_root") or "~/.cache/sparsebench",
        energy=sensors,
        needs=_strings(device.get("needs", []), f"{where} [device].needs"),
        prepare=_strings(device.get("prepare", []), f"{where} [device].prepare"),
        notes=data.get("notes", "").strip(),
        **link,
    )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HarnessError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def _check_llvm_target(target: dict, where: str) -> None:
    """The pitfalls of DEVICE_FACTS as errors: explicit triple, aarch64 spelling, flag lists, core count."""
    if target.get("kind") != "llvm":
        raise HarnessError(f"{where}: the CPU target needs kind = \"llvm\", got {target.get('kind')!r} "
                           "(a GPU goes in [tvm].cuda)")
    triple = target.get("mtriple")
    if not isinstance(triple, str) or not triple:
        raise HarnessError(f"{where}: give an explicit mtriple, e.g. \"aarch64-linux-gnu\" (plain llvm reports the "
                           "compiler's own triple)")
    if triple.startswith("arm64-"):
        raise HarnessError(f"{where}: mtriple {triple!r}: TVM does not treat arm64-* as aarch64; "
                           f"write {'aarch64-' + triple[len('arm64-'):]!r}")
    mattr = target.get("mattr", [])
    if not isinstance(mattr, list) or not all(isinstance(a, str) and a[:1] in "+-" and len(a) > 1 for a in mattr):
        raise HarnessError(f"{where}: mattr must be a list like [\"+neon\", \"-sve\"], got {mattr!r}")
    cores = target.get("num-cores", 1)
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise HarnessError(f"{where}: num-cores must be a positive integer, got {cores!r}")


def _cuda_target(raw: Any, host: dict, where: str) -> dict:
    """A CUDA target with the board's CPU target as its host (TVM's shipped Jetson tags get the host wrong)."""
    if not isinstance(raw, dict):
        raise HarnessError(f"{where} must be a table, e.g. {{kind = \"cuda\", arch = \"sm_87\"}}")
    _check_keys(raw, {"kind", "arch", "max_threads_per_block", "max_shared_memory_per_block"}, where)
    if raw.get("kind", "cuda") != "cuda":
        raise HarnessError(f"{where}: kind must be \"cuda\", got {raw.get('kind')!r}")
    arch = raw.get("arch", "")
    if arch == FROM_NVIDIA_SMI:
        arch = nvidia_smi_arch() or arch  # no GPU here: left unresolved, and a CUDA run says so (bench.py)
    elif not re.fullmatch(r"sm_\d{2,3}[a-z]?", str(arch)):
        raise HarnessError(f"{where}: arch must name the GPU's compute capability, e.g. \"sm_87\" (Orin), or be "
                           f"\"{FROM_NVIDIA_SMI}\" (this machine's GPU 0), got {raw.get('arch')!r}")
    return {**raw, "kind": "cuda", "arch": arch, "host": dict(host)}


#: ``[tvm].cuda.arch`` of a profile for this machine: the compute capability nvidia-smi reports for GPU 0
FROM_NVIDIA_SMI = "from-nvidia-smi"


def nvidia_smi_arch() -> str | None:
    """``sm_XY`` of this machine's GPU 0 as ``nvidia-smi`` reports it, or None (no nvidia-smi, no GPU, no answer)."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"\s*(\d+)\.(\d+)", out)
    return f"sm_{match.group(1)}{match.group(2)}" if match else None
