"""The records a benchmark produces, defined once.

:class:`ResultRow` is one row of the store's ``results`` table: its fields *are* the table's columns, so the SQL
schema (:meth:`ResultRow.columns`), the CSV columns (a declared subset of its field names) and the report all read
this one definition. Scalars are plain columns; nested records are JSON columns named ``<field>_json``:

- :class:`LayerRecord`: one weight layer, pruning and kernel choice, joined by weight name (:func:`join_layers`).
- :class:`EnergyRecord`: what the board's power sensor measured (the runner's energy JSON).
- :class:`DeviceMeta`: what the device was like while it ran (collected on the device by the runner).

:class:`LatencyStats` (from the measure step) and :class:`BuildRecord` (from the compile step) are the records
handed to a row; their columns are copied in by :meth:`ResultRow.with_latency` / :meth:`ResultRow.with_build`.

Records parsed from JSON (``from_json``) tolerate missing keys (``None``) and keep unknown keys in ``extra``:
a board may run an older or newer runner, and old stored rows lack newer keys.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from typing import Any, get_args, get_origin, get_type_hints

if typing.TYPE_CHECKING:
    from .sparsify import LayerSparsity

VERDICTS = ("VALID", "INVALID", "ERROR")


def _base(hint: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed) of an annotation like ``float | None``."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(get_args(hint))
    return hint, False


def _load(hint: Any, value: Any) -> Any:
    """A JSON value as the annotated type: records via ``from_json``, lists as tuples where a tuple is declared."""
    base, _ = _base(hint)
    if value is None:
        return None
    if isinstance(base, type) and hasattr(base, "from_json"):
        return base.from_json(value)
    if get_origin(base) is tuple and isinstance(value, (list, tuple)):
        args = get_args(base)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        return tuple(_load(item, v) for v in value) if item is not None else tuple(value)
    return value


def _dump(value: Any) -> Any:
    """A field value as JSON-ready data."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


class _JsonRecord:
    """``from_json`` / ``to_json`` for a frozen dataclass whose fields all have defaults and which has ``extra``."""

    extra: dict

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None):
        data = data or {}
        hints = _hints(cls)
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: _load(hints[k], v) for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_json(self) -> dict:
        out = {f.name: _dump(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


# --- latency and build: the records the measure and compile steps hand to a row --------------------------------

def _column(name: str) -> dict:
    return {"column": name}


@dataclass(frozen=True)
class LatencyStats:
    """Summary of individually timed iterations. Times in milliseconds; CVs unitless (std / mean).

    Percentiles, mean, std, min and max use every sample. ``cv`` is computed without the outliers (above
    max(Q3 + 3·IQR, 2·p50)) and ``n_outliers`` counts them: on a shared or virtual machine a handful of 100x
    stalls among thousands of runs would otherwise dominate the std and hide how steady the rest is; the verdict
    checks the outlier count separately. ``cv_all`` is the plain CV over every sample.

    Each field's ``column`` metadata names the :class:`ResultRow` column it is stored in.
    """

    n: int = field(metadata=_column("n_iter"))
    """Timed iterations (samples)."""
    p50_ms: float = field(metadata=_column("latency_p50_ms"))
    """Median latency, ms."""
    p90_ms: float = field(metadata=_column("latency_p90_ms"))
    """90th percentile latency, ms."""
    p99_ms: float = field(metadata=_column("latency_p99_ms"))
    """99th percentile latency, ms."""
    mean_ms: float = field(metadata=_column("latency_mean_ms"))
    """Mean latency, ms."""
    std_ms: float = field(metadata=_column("latency_std_ms"))
    """Sample standard deviation (ddof=1), ms."""
    min_ms: float = field(metadata=_column("latency_min_ms"))
    """Fastest iteration, ms."""
    max_ms: float = field(metadata=_column("latency_max_ms"))
    """Slowest iteration, ms."""
    cv: float = field(metadata=_column("latency_cv"))
    """std / mean without outliers, unitless."""
    cv_all: float = field(metadata=_column("latency_cv_all"))
    """std / mean over every sample, unitless."""
    n_outliers: int = field(metadata=_column("n_outliers"))
    """Samples above max(Q3 + 3·IQR, 2·p50): interruptions, not the model."""
    p50_ci_low_ms: float | None = field(default=None, metadata=_column("latency_p50_ci_low_ms"))
    """Lower end of the 95 % distribution-free (order-statistic) confidence interval of the median, ms."""
    p50_ci_high_ms: float | None = field(default=None, metadata=_column("latency_p50_ci_high_ms"))
    """Upper end of that interval of the median, ms."""
    p90_ci_low_ms: float | None = field(default=None, metadata=_column("latency_p90_ci_low_ms"))
    """95 % interval of the 90th percentile, lower end, ms (``None`` with too few samples)."""
    p90_ci_high_ms: float | None = field(default=None, metadata=_column("latency_p90_ci_high_ms"))
    """95 % interval of the 90th percentile, upper end, ms."""
    p99_ci_low_ms: float | None = field(default=None, metadata=_column("latency_p99_ci_low_ms"))
    """95 % interval of the 99th percentile, lower end, ms (``None`` below ~300 samples)."""
    p99_ci_high_ms: float | None = field(default=None, metadata=_column("latency_p99_ci_high_ms"))
    """95 % interval of the 99th percentile, upper end, ms."""
    round_p50_ms: tuple[float, ...] | None = field(default=None, metadata=_column("round_p50_ms"))
    """Median of each timing round, ms, in the order taken (each round warmed up afresh)."""
    round_spread: float | None = field(default=None, metadata=_column("round_spread"))
    """Standard deviation of the agreeing rounds' medians relative to the median (0.02 = a round typically within
    ±2 %): the main evidence that the number reproduces; ``None`` with one round."""
    rounds_disturbed: tuple[int, ...] | None = field(default=None, metadata=_column("rounds_disturbed"))
    """Rounds (0-based, in the order taken) whose median lay outside the agreeing rounds' ±max_spread: a load or
    clock change hit them; their samples are stored but not in the statistics. ``None`` without rounds."""

    @property
    def p50_ci(self) -> tuple[float, float] | None:
        """(low, high) of the median's 95 % interval, ms; ``None`` when unknown."""
        if self.p50_ci_low_ms is None or self.p50_ci_high_ms is None:
            return None
        return self.p50_ci_low_ms, self.p50_ci_high_ms

    def to_dict(self) -> dict:
        return asdict(self)

    def columns(self) -> dict[str, float | int]:
        """The stats as :class:`ResultRow` column values."""
        return {f.metadata["column"]: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class BuildRecord:
    """What the compile step tells a row about its artifact. Field names are :class:`ResultRow` columns."""

    artifact_key: str | None = None
    """Content address of the artifact (model, shape, target, kernels, schedule sources, TVM, toolchain)."""
    artifact_bytes: int | None = None
    """Size of the exported library, bytes."""
    compile_s: float | None = None
    """Wall time of the compile, s (of the first compile when the artifact came from the cache)."""
    tvm_version: str | None = None
    """TVM version that compiled it."""
    toolchain: str | None = None
    """The linker (and CUDA device-code mode) that built it, as in the build key."""

    @classmethod
    def from_result(cls, built) -> BuildRecord:
        """From a :class:`harness.compile.cache.BuildResult`."""
        return cls(artifact_key=built.key, artifact_bytes=built.artifact_bytes, compile_s=built.compile_s,
                   tvm_version=built.tvm_version or None, toolchain=built.toolchain or None)


# --- JSON records ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnergyRecord(_JsonRecord):
    """Energy measured on the board by the runner's power sensor (``sensors.measure_energy``).

    Numbers are ``None`` unless ``status`` is ``"ok"``. The top-level figures are raw; ``calibration`` holds the
    calibration used and the calibrated versions of ``energy_per_inference_mj``,
    ``energy_above_idle_per_inference_mj``, ``idle_w`` and ``active_w``.
    """

    status: str = "unavailable: the runner's energy record has no status"
    """``"ok"``, ``"unavailable: <reason>"`` (no sensor, or it failed) or ``"invalid: <reason>"`` (window too short)."""
    method: str | None = None
    """How the power was read (the sensor backend)."""
    rails: tuple[str, ...] | None = None
    """Rails the sensor reports."""
    total_rail: str | None = None
    """The rail (or sum) taken as the board's total power."""
    calibration: dict | None = None
    """``scale``, ``offset_w``, ``source`` and the calibrated figures; ``None`` when uncalibrated."""
    energy_per_inference_mj: float | None = None
    """Active energy / iterations, mJ."""
    energy_above_idle_per_inference_mj: float | None = None
    """(active W − idle W) × window / iterations, mJ."""
    idle_w: float | None = None
    """Mean power over the idle stretch, W."""
    active_w: float | None = None
    """Mean power over the active window, W."""
    power_cv: float | None = None
    """std / mean of the power readings in the window, unitless."""
    rails_active_w: dict[str, float] | None = None
    """Mean power per rail in the window, W."""
    idle_s: float | None = None
    """The idle stretch integrated, s."""
    window_s: float | None = None
    """The active stretch integrated, s."""
    iterations: int | None = None
    """Inferences inside the window."""
    idle_samples: int | None = None
    """Sensor readings inside the idle stretch."""
    samples: int | None = None
    """Sensor readings inside the window."""
    rate_hz: float | None = None
    """Achieved reading rate, Hz."""
    requested_rate_hz: float | None = None
    """Requested reading rate, Hz."""
    sensor_update_s: float | None = None
    """How often the sensor's value changes, s."""
    sensor_update_source: str | None = None
    """``"declared"`` by the sensor or ``"observed"`` in the idle readings."""
    sensor_detail: dict | None = None
    """Backend-specific description of the sensor (paths, device names)."""
    extra: dict = field(default_factory=dict)
    """Keys this harness does not know (a newer runner), kept as they came."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def per_inference_mj(self) -> float | None:
        """Energy per inference (mJ, total board power) when measured, else ``None``: unavailable is never 0."""
        return self.energy_per_inference_mj if self.ok else None


@dataclass(frozen=True)
class DeviceMeta(_JsonRecord):
    """What the device was like while it ran, collected there by the runner (``runner.device_metadata``).

    A value the device does not expose is ``None``, never guessed.
    """

    hostname: str | None = None
    cpu_model: str | None = None
    machine: str | None = None
    """``platform.machine()``: x86_64, aarch64, ..."""
    cpu_count: int | None = None
    """Logical CPUs."""
    cpu_affinity: int | None = None
    """Cores the runner may run on (affinity mask)."""
    tvm_num_threads: str | None = None
    """``TVM_NUM_THREADS`` as set, or ``None``."""
    governor: str | None = None
    """cpufreq governors in use, comma-separated."""
    cur_freq_khz: int | None = None
    """cpu0 frequency at collection, kHz."""
    max_freq_khz: int | None = None
    """cpu0 maximum frequency, kHz."""
    temperatures_c: dict[str, float] | None = None
    """Thermal zone -> temperature, °C."""
    loadavg: tuple[float, ...] | None = None
    """1, 5 and 15 minute load averages."""
    os: str | None = None
    kernel: str | None = None
    python: str | None = None
    numpy: str | None = None
    tvm: str | None = None
    """TVM (runtime) version on the device."""
    onnxruntime: str | None = None
    """onnxruntime version on the device, for a peer row (``None`` for rows the TVM runtime ran)."""
    tvm_runtime_only: bool | None = None
    """Whether the runner loaded the TVM runtime library only (as on a board)."""
    runner_version: int | None = None
    board: str | None = None
    """The board's name in the farm file, for a row of a farm run (``None`` otherwise)."""
    extra: dict = field(default_factory=dict)
    """Keys this harness does not know, kept as they came."""


@dataclass(frozen=True)
class LayerRecord(_JsonRecord):
    """One weight layer of a variant: what pruning did to it and which kernel the compiler gave it."""

    layer: str | None = None
    """ONNX node name (or the weight's name when the node has none)."""
    weight: str | None = None
    """Name of the weight initializer: the key joining pruning and compiler records (``None`` in old rows)."""
    shape: tuple[int, ...] | None = None
    """[N, K]: output features, input features (a conv's [O, I·kh·kw])."""
    sparsity_target: float | None = None
    """Fraction of zeros asked for (0 when the layer was not pruned)."""
    sparsity_actual: float | None = None
    """Fraction of zeros reached."""
    pruned: bool | None = None
    """False for first/last layers excluded by the config."""
    kernel: str = "default"
    """``dense``, ``bsr``, ``nm`` (ours) or ``default`` (left to TVM)."""
    block: tuple[int, ...] | None = None
    """[r, c] for ``bsr``, [n, m] for ``nm``, else ``None``."""
    choice: str | None = None
    """How the kernel was picked: ``measured``, ``rule`` or ``none`` (default kernel)."""
    alternatives_us: dict[str, float] | None = None
    """For ``measured``: median µs of one call of every candidate kernel, timed on the device."""
    measured_on: str | None = None
    """For ``measured``: the device the times came from, with its fingerprint (machine, CPU, threads)."""
    rule: str | None = None
    """For ``rule``: the rule that decided, and why no measurement was used."""
    op: str | None = None
    """The compiler's name for the operation it scheduled (``matmul``, ``conv1x1``, ``conv3x3``, ...)."""
    node_op: str | None = None
    """The layer's ONNX operator as the model has it (``Gemm``, ``MatMul``, ``Conv 3×3 /2``, ...)."""
    epilogue: str | None = None
    """What was fused into the kernel's store: ``bias``, ``relu``, ``bias+relu`` or ``None``."""
    density: float | None = None
    """Fraction of nonzero weight elements the compiler saw."""
    nnz_blocks: int | None = None
    """Stored nonzero blocks (``bsr``) or value slots (``nm``)."""
    weight_bytes: int | None = None
    """Bytes of the stored weight in the chosen format."""
    extra: dict = field(default_factory=dict)
    """Other compiler keys (``batch``, ``candidates_us``, ...), kept as they came."""


#: Compiler record keys not copied into a LayerRecord: positional or duplicated by the pruning side.
_COMPILER_SKIP = ("layer", "shape", "weight")


def join_layers(pruned: Sequence[LayerSparsity], compiled: Iterable[Mapping[str, Any]]) -> tuple[LayerRecord, ...]:
    """One :class:`LayerRecord` per pruning layer (in its order), with the compiler record of the same weight.

    The key is the weight initializer name (``LayerSparsity.weight`` = the compiler record's ``"weight"``), never
    the position: a layer without a compiler record keeps kernel ``default`` with ``choice="none"`` (left to
    TVM), never another layer's kernel. A weight shared by several nodes gets its compiler records in the
    compiler's own layer order; compiler records whose weight is unknown (``None``) or unmatched are dropped.
    """
    by_weight: dict[str, list[Mapping[str, Any]]] = {}
    for record in sorted(compiled, key=lambda r: (r.get("layer") is None, r.get("layer") or 0)):
        if record.get("weight") is not None:
            by_weight.setdefault(record["weight"], []).append(record)
    known = {f.name for f in fields(LayerRecord)} - {"extra", *_COMPILER_SKIP}
    hints = _hints(LayerRecord)
    used: dict[str, int] = {}
    out = []
    for layer in pruned:
        nth = used.get(layer.weight, 0)
        used[layer.weight] = nth + 1
        matches = by_weight.get(layer.weight, [])
        choice = matches[nth] if nth < len(matches) else {"kernel": "default", "choice": "none"}
        compiler = {k: _load(hints[k], v) for k, v in choice.items() if k in known}
        extra = {k: v for k, v in choice.items() if k not in known and k not in _COMPILER_SKIP}
        out.append(LayerRecord(layer=layer.layer, weight=layer.weight, shape=tuple(layer.shape),
                               sparsity_target=layer.sparsity_target, sparsity_actual=layer.sparsity_actual,
                               pruned=layer.pruned, node_op=getattr(layer, "node_op", None), **compiler,
                               extra=extra))
    return tuple(out)


# --- the result row ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """One SQL column of ``results``, derived from a :class:`ResultRow` field."""

    name: str
    field: str
    sql_type: str  # TEXT | INTEGER | REAL
    not_null: bool
    json: bool  # stored as JSON text


_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", bool: "INTEGER"}


@dataclass(frozen=True, kw_only=True)
class ResultRow:
    """One result: a variant of a model at one batch size on one device, measured or an ERROR naming the stage.

    Every field except ``id`` is a column of the ``results`` table (see :meth:`columns`). ``None`` means
    unavailable, never zero. Sparsity, accuracy, agreement and CVs are fractions in [0, 1].
    """

    id: int | None = field(default=None, metadata={"column": False})
    """The store's row id (``None`` until stored)."""
    run_id: str
    """The run this row belongs to (``runs.run_id``)."""
    variant_key: str
    """``model/method/level@bBATCH``."""
    device: str
    """Where it ran: the transport's device name (``localhost``, ``user@host:port``)."""
    model: str
    model_sha256: str | None = None
    """SHA-256 of the original ONNX model."""
    variant_sha256: str | None = None
    """SHA-256 of the pruned variant's ONNX."""
    method: str
    """Pruning method: ``dense``, ``unstructured``, ``block`` or ``nm``."""
    sparsity_target: float
    """Fraction of zero weights asked for."""
    sparsity_actual: float | None = None
    """Fraction of zero weights reached over the pruned layers' weights."""
    block: str
    """``16x1`` (block), ``2:4`` (N:M) or ``""``."""
    batch: int
    """Input batch size."""
    target: str
    """Target profile name (``targets/*.toml``)."""
    target_json: dict
    """The TVM target it was compiled for."""
    transport: str
    """``local``, ``ssh``, ..."""
    accelerator: str | None = None
    """What ran the model on the device: ``cpu`` or ``cuda`` (schema 7; ``None`` in older rows, which ran on the
    CPU)."""
    latency_p50_ms: float | None = None
    """Median latency, ms."""
    latency_p90_ms: float | None = None
    """90th percentile latency, ms."""
    latency_p99_ms: float | None = None
    """99th percentile latency, ms."""
    latency_p50_ci_low_ms: float | None = None
    """Median's 95 % order-statistic confidence interval, lower end, ms (schema 4)."""
    latency_p50_ci_high_ms: float | None = None
    """Median's 95 % confidence interval, upper end, ms."""
    latency_p90_ci_low_ms: float | None = None
    """p90's 95 % confidence interval, lower end, ms."""
    latency_p90_ci_high_ms: float | None = None
    """p90's 95 % confidence interval, upper end, ms."""
    latency_p99_ci_low_ms: float | None = None
    """p99's 95 % confidence interval, lower end, ms (empty with too few samples)."""
    latency_p99_ci_high_ms: float | None = None
    """p99's 95 % confidence interval, upper end, ms."""
    round_p50_ms: tuple[float, ...] | None = None
    """Median of each timing round, ms (schema 4)."""
    round_spread: float | None = None
    """Standard deviation of the agreeing rounds' medians relative to the median (schema 4)."""
    rounds_disturbed: tuple[int, ...] | None = None
    """Rounds left out of the statistics: their medians disagreed with the majority of rounds (schema 5)."""
    clock_range_khz: tuple[int, ...] | None = None
    """Lowest and highest CPU clock read before and after every timing round, kHz (``None`` where the device has no
    cpufreq, e.g. most VMs) (schema 4)."""
    model_time_p50_ms: float | None = None
    """Model time by TVM's C++ timer (``time_evaluator``: repeats of >= 1 ms of back-to-back calls, ms per call),
    median over the repeats; without the Python/FFI cost of one call that ``latency_*`` includes. ``None`` for a
    peer runtime's row (schema 4)."""
    model_time_ci_low_ms: float | None = None
    """95 % order-statistic interval of that median, lower end, ms."""
    model_time_ci_high_ms: float | None = None
    """95 % interval of that median, upper end, ms."""
    model_time_repeats: int | None = None
    """Repeats the C++ timer took."""
    latency_mean_ms: float | None = None
    """Mean latency, ms."""
    latency_std_ms: float | None = None
    """Latency standard deviation, ms."""
    latency_min_ms: float | None = None
    """Fastest iteration, ms."""
    latency_max_ms: float | None = None
    """Slowest iteration, ms."""
    latency_cv: float | None = None
    """std / mean without outliers (above max(Q3 + 3·IQR, 2·p50))."""
    latency_cv_all: float | None = None
    """std / mean over every sample."""
    n_outliers: int | None = None
    """Samples counted as interruptions."""
    n_iter: int | None = None
    """Timed iterations."""
    warmup_runs: int | None = None
    """Untimed iterations before timing."""
    accuracy: float | None = None
    """Top-1 accuracy against labels (models with labels only)."""
    top1_agreement: float | None = None
    """Fraction of inputs whose argmax equals the dense variant's."""
    max_abs_err: float | None = None
    """max |y − y_dense| over the evaluation set, output units."""
    ref_max_abs_err: float | None = None
    """max |y − y_reference| for the same pruned model (compile correctness), output units."""
    accuracy_oneshot: float | None = None
    """For a fine-tuned variant (``[sparsify.finetune]``): top-1 accuracy of the same method and level pruned
    one-shot, without recovery, on the same evaluation set (numpy); ``accuracy`` is the recovered variant's
    (schema 8; ``None`` for a variant not fine-tuned)."""
    finetune_s: float | None = None
    """Seconds of training the recovery took (on the harness's host, numpy), ``None`` when not fine-tuned."""
    recovery: dict | None = None
    """How the variant was recovered: schedule, settings, pruning steps, training and evaluation samples, the
    accuracies before and after (schema 8)."""
    energy_mj: float | None = None
    """Energy per inference, mJ (total board power); ``None`` unless ``energy_status`` is ``ok``."""
    energy_status: str | None = None
    """``ok`` / ``unavailable: why`` / ``invalid: why``."""
    energy: EnergyRecord | None = None
    """The full energy record."""
    artifact_key: str | None = None
    """Content address of the compiled artifact."""
    artifact_bytes: int | None = None
    """Size of the compiled artifact, bytes."""
    compile_s: float | None = None
    """Compile wall time, s."""
    peak_rss_mb: float | None = None
    """Peak resident memory of the runner on the device, MB."""
    verdict: str
    """``VALID`` | ``INVALID`` | ``ERROR``."""
    reasons: tuple[str, ...] = ()
    """Why the row is INVALID (each says what to do), plus notes."""
    error: str | None = None
    """For ERROR rows: ``<stage>: <message>``."""
    layers: tuple[LayerRecord, ...] = ()
    """Per weight layer: shape, target/actual sparsity, kernel chosen."""
    device_meta: DeviceMeta | None = None
    """Collected on the device by the runner."""
    overhead: dict | None = None
    """Harness step timings (``<step>_s``, s: upload, run, fetch, ...) and ``compile_cached``."""
    tvm_version: str | None = None
    """TVM version that compiled the artifact."""
    toolchain: str | None = None
    """The linker (and CUDA mode) that built the artifact (schema 2; ``None`` in older rows)."""
    measured_at: str = ""
    """When the row was stored (``%Y-%m-%dT%H:%M:%S%z``); the store fills it in when empty."""

    # --- the table -------------------------------------------------------------------------------------------

    @classmethod
    def columns(cls) -> tuple[Column, ...]:
        """The ``results`` columns, in field order: name, SQL type and NOT NULL from the field's annotation.

        ``str``/``int``/``float``/``bool`` map to TEXT/INTEGER/REAL/INTEGER; anything else (records, tuples,
        dicts) is JSON text in a column named ``<field>_json`` (``target_json`` keeps its name). ``X | None``
        is nullable.
        """
        return _columns(cls)

    def to_db(self) -> dict[str, Any]:
        """Column name -> SQLite value (JSON columns as text)."""
        out = {}
        for col in self.columns():
            value = getattr(self, col.field)
            out[col.name] = json.dumps(_dump(value)) if col.json and value is not None else value
        return out

    @classmethod
    def from_db(cls, record: Mapping[str, Any]) -> ResultRow:
        """A row from its columns (``sqlite3.Row`` or dict); ``id`` when present. JSON ``null`` reads as ``None``."""
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for col in cls.columns():
            value = record[col.name]
            values[col.field] = _load(hints[col.field], json.loads(value)) if col.json and value is not None else value
        keys = record.keys()
        return cls(id=record["id"] if "id" in keys else None, **values)

    # --- records handed over by the steps ----------------------------------------------------------------------

    def with_build(self, build: BuildRecord) -> ResultRow:
        return replace(self, **asdict(build))

    @property
    def build(self) -> BuildRecord:
        return BuildRecord(**{f.name: getattr(self, f.name) for f in fields(BuildRecord)})

    def with_latency(self, stats: LatencyStats) -> ResultRow:
        return replace(self, **stats.columns())

    @property
    def p50_ci(self) -> tuple[float, float] | None:
        """(low, high) of the median's 95 % interval, ms; ``None`` when not measured or stored before schema 4."""
        if self.latency_p50_ci_low_ms is None or self.latency_p50_ci_high_ms is None:
            return None
        return self.latency_p50_ci_low_ms, self.latency_p50_ci_high_ms

    @property
    def model_time_ci(self) -> tuple[float, float] | None:
        """(low, high) of the C++ model time's 95 % interval, ms; ``None`` when unknown."""
        if self.model_time_ci_low_ms is None or self.model_time_ci_high_ms is None:
            return None
        return self.model_time_ci_low_ms, self.model_time_ci_high_ms

    @property
    def latency(self) -> LatencyStats | None:
        """The latency statistics, ``None`` when the row was not measured."""
        if self.latency_p50_ms is None:
            return None
        return LatencyStats(**{f.name: getattr(self, f.metadata["column"]) for f in fields(LatencyStats)})

    def with_energy(self, energy: EnergyRecord) -> ResultRow:
        """The energy record and the two columns derived from it (status, mJ per inference when ok)."""
        return replace(self, energy=energy, energy_status=energy.status, energy_mj=energy.per_inference_mj)


@cache
def _columns(cls: type) -> tuple[Column, ...]:
    hints = _hints(cls)
    out = []
    for f in fields(cls):
        if f.metadata.get("column") is False:
            continue
        base, optional = _base(hints[f.name])
        sql = _SQL_TYPES.get(base)
        json_col = sql is None
        name = f.name if not json_col or f.name.endswith("_json") else f"{f.name}_json"
        out.append(Column(name, f.name, sql or "TEXT", not optional, json_col))
    return tuple(out)
