"""A model's graph inputs as it declares them, and the evaluation inputs that feed them.

Every graph input that is not an initializer is an input (any number of them), with its own dtype and shape; dim 0
is the batch. Evaluation inputs come from an ``.npz`` with one array per input, named by input name (``x`` is also
accepted for a single-input model; ``y`` holds the labels), or are made up, seeded, when no evaluation set is given.
Everything is checked here, before anything compiles, with errors that name the model, the input, what was
expected, what was found and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import HarnessError

#: ONNX ``TensorProto`` element types a graph input may have -> numpy dtype names
DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}
#: synthetic integer inputs are drawn from [0, DEFAULT_VOCAB) unless the config or the graph says otherwise
DEFAULT_VOCAB = 100
#: rows of synthetic evaluation inputs when no evaluation set is given
SYNTHETIC_ROWS = 32
#: the label array of an evaluation set (unless a graph input has that name)
LABELS = "y"


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, numpy dtype name and dims -- an int, or a str (the symbol, ``?`` when unnamed) for
    a dim the model leaves dynamic. Dim 0 is the batch."""

    name: str
    dtype: str
    shape: tuple

    def describe(self) -> str:
        """``[N, 16] int64``: how errors show what an input takes."""
        dims = "?" if self.shape is None else ", ".join(str(d) for d in self.shape)
        return f"[{dims}] {self.dtype}"

    def to_json(self) -> list:
        return [self.name, list(self.shape), self.dtype]

    @classmethod
    def from_json(cls, data) -> "InputSpec":
        return cls(str(data[0]), str(data[2]), tuple(data[1]))


def declared_inputs(model, model_name: str) -> tuple[InputSpec, ...]:
    """The graph inputs of ``model`` (an ``onnx.ModelProto``) that are not initializers, in graph order. A dim of
    unknown rank is ``None`` as the whole shape (the config must give it)."""
    inits = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise HarnessError(f"model {model_name}: input {value.name!r} is not a tensor "
                               f"({value.type.WhichOneof('value')}); sparsebench feeds tensors only")
        dtype = DTYPES.get(ttype.elem_type)
        if dtype is None:
            import onnx

            found = onnx.TensorProto.DataType.Name(ttype.elem_type)
            raise HarnessError(f"model {model_name}: input {value.name!r} has element type {found}; supported: "
                               f"{', '.join(sorted(set(DTYPES.values())))} -- re-export it with one of them")
        shape = None
        if ttype.HasField("shape"):
            # an unnamed dynamic dim: "N" for the batch, "?" elsewhere
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or ("?" if i else "N"))
                          for i, d in enumerate(ttype.shape.dim))
        if shape == ():
            raise HarnessError(f"model {model_name}: input {value.name!r} is a scalar; sparsebench needs a batch "
                               "dimension first -- export the model with a batched input")
        specs.append(InputSpec(value.name, dtype, shape))
    if not specs:
        raise HarnessError(f"model {model_name}: the graph has no inputs (every input is an initializer); "
                           "export it with its inputs as graph inputs")
    return tuple(specs)


def apply_shapes(specs: tuple[InputSpec, ...], shapes: dict, model_name: str) -> tuple[InputSpec, ...]:
    """Fix the dims the config gives (``[[models]] shapes = {input_ids = ["N", 128]}``): same rank as the model's,
    a dim the model fixes must not change, dim 0 may stay a symbol (the batch then comes from ``batch``)."""
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(shapes) - set(by_name))
    if unknown:
        raise HarnessError(f"model {model_name}: shapes names input(s) {', '.join(map(repr, unknown))} the model "
                           f"does not have; its inputs: {', '.join(by_name)}")
    out = []
    for spec in specs:
        given = shapes.get(spec.name)
        if given is None:
            out.append(spec)
            continue
        given = tuple(given)
        fix = f"shapes = {{{spec.name} = {_toml_list(_merged(spec.shape, given))}}}"
        if spec.shape is not None and len(given) != len(spec.shape):
            raise HarnessError(f"model {model_name}: shapes gives input {spec.name!r} {len(given)} dims "
                               f"{_toml_list(given)}, the model declares {len(spec.shape)}: {spec.describe()}")
        for i, dim in enumerate(given):
            if isinstance(dim, str) and i > 0:
                raise HarnessError(f"model {model_name}: shapes gives input {spec.name!r} dim {i} as {dim!r}; only "
                                   "the batch (dim 0) may stay a symbol -- give the size as a number")
            declared = spec.shape[i] if spec.shape is not None else None
            if isinstance(declared, int) and isinstance(dim, int) and declared != dim:
                raise HarnessError(f"model {model_name}: shapes gives input {spec.name!r} dim {i} = {dim}, but the "
                                   f"model fixes it to {declared} ({spec.describe()}); use {fix}")
        merged = tuple(d if isinstance(d, int) or spec.shape is None else spec.shape[i] for i, d in enumerate(given))
        out.append(replace(spec, shape=merged))
    return tuple(out)


def _merged(declared, given) -> tuple:
    if declared is None or len(declared) != len(given):
        return given
    return tuple(d if isinstance(d, int) else g for d, g in zip(declared, given))


def _toml_list(dims) -> str:
    return "[" + ", ".join(f'"{d}"' if isinstance(d, str) else str(d) for d in dims) + "]"


def check_batch_dims(specs: tuple[InputSpec, ...], model_name: str) -> None:
    """Every input needs a known shape, and its dims other than the batch must be sized by now (one error naming
    every dynamic dim, with the ``shapes`` line that sizes them all)."""
    for spec in specs:
        if spec.shape is None:
            raise HarnessError(f"model {model_name}: input {spec.name!r} declares no shape; give it: "
                               f"shapes = {{{spec.name} = [\"N\", ...]}} in [[models]]")
    dynamic = [(spec, i, dim) for spec in specs for i, dim in enumerate(spec.shape) if i and not isinstance(dim, int)]
    if dynamic:
        which = ", ".join(f"input {spec.name!r} dim {i} ({dim!r})" for spec, i, dim in dynamic)
        example = ", ".join(f"{spec.name} = {_example_dims(spec)}"
                            for spec in dict.fromkeys(spec for spec, _, _ in dynamic))
        raise HarnessError(
            f"model {model_name}: {which} {'is' if len(dynamic) == 1 else 'are'} dynamic and nothing sizes "
            f"{'it' if len(dynamic) == 1 else 'them'}; give the sizes in [[models]], e.g. shapes = {{{example}}}, "
            "or give an evaluation set with arrays of those sizes, or export the model with fixed sizes there")


def _example_dims(spec: InputSpec) -> str:
    """The input's dims with 128 standing in for each dynamic one (a sequence length, typically)."""
    return _toml_list([spec.shape[0]] + [d if isinstance(d, int) else 128 for d in spec.shape[1:]])


def static_shapes(specs: tuple[InputSpec, ...], batch: int, model_name: str) -> tuple[InputSpec, ...]:
    """``specs`` at ``batch``: refuses a batch an input's fixed dim 0 cannot take."""
    out = []
    for spec in specs:
        first = spec.shape[0]
        if isinstance(first, int) and first != batch:
            raise HarnessError(
                f"model {model_name}: input {spec.name!r} has a fixed batch of {first}, cannot run batch {batch}; "
                f"use batch = [{first}] or export the model with a dynamic batch dimension"
            )
        out.append(replace(spec, shape=(batch, *spec.shape[1:])))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# evaluation inputs


def read_eval_set(path: Path, specs: tuple[InputSpec, ...], model_name: str
                  ) -> tuple[dict[str, np.ndarray], np.ndarray | None, tuple[InputSpec, ...]]:
    """The arrays of ``path`` for ``specs`` (checked: rank, sizes, dtype; one row count), the labels, and ``specs``
    with the dynamic non-batch dims sized by the arrays."""
    if not path.is_file():
        raise HarnessError(f"model {model_name}: evaluation set {path} does not exist; give eval = \"data.npz\" "
                           "with one array per graph input (and optional y labels)")
    names = {s.name for s in specs}
    try:
        with np.load(path, allow_pickle=False) as data:
            files = list(data.files)
            arrays = {}
            for spec in specs:
                key = spec.name if spec.name in files else ("x" if len(specs) == 1 and "x" in files else None)
                if key is None:
                    example = ", ".join(f"{s.name}=..." for s in specs)
                    raise HarnessError(
                        f"model {model_name}: evaluation set {path} has no array {spec.name!r} for input {spec.name!r} "
                        f"(has: {', '.join(files) or 'nothing'}); save one array per graph input, named by input "
                        f"name: numpy.savez(\"{path.name}\", {example}, y=labels)")
                arrays[spec.name] = np.asarray(data[key])
            labels = np.asarray(data[LABELS]) if LABELS in files and LABELS not in names else None
    except HarnessError:
        raise
    except Exception as err:
        raise HarnessError(f"model {model_name}: evaluation set {path} is not a readable .npz ({err}); save it with "
                           "numpy.savez") from None
    sized = []
    for spec in specs:
        array = arrays[spec.name]
        arrays[spec.name], spec = _check_array(array, spec, path, model_name)
        sized.append(spec)
    counts = {name: len(a) for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise HarnessError(f"model {model_name}: evaluation set {path} has different row counts per input "
                           f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); give every input the same rows")
    n = next(iter(counts.values()))
    if n == 0:
        raise HarnessError(f"model {model_name}: evaluation set {path} has no rows; give at least one")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != n:
            raise HarnessError(f"model {model_name}: evaluation set {path}: {n} input rows but labels y of shape "
                               f"{list(labels.shape)}; give one integer label per row")
        labels = labels.astype(np.int64)
    return arrays, labels, tuple(sized)


def _check_array(array: np.ndarray, spec: InputSpec, path: Path, model_name: str) -> tuple[np.ndarray, InputSpec]:
    """``array`` cast to the input's dtype (within its kind: float to float, int to int when the values fit), and
    ``spec`` with its dynamic non-batch dims taken from the array."""
    if spec.shape is None and array.ndim:  # the model declares no shape: the evaluation set gives it
        spec = replace(spec, shape=("N", *array.shape[1:]))
    where = f"model {model_name}: input {spec.name!r} expects {spec.describe()}"
    found = f"[{', '.join([f'N={len(array)}', *map(str, array.shape[1:])])}] {array.dtype}" if array.ndim \
        else f"a scalar {array.dtype}"
    if array.ndim != len(spec.shape) or any(isinstance(d, int) and d != a
                                            for d, a in zip(spec.shape[1:], array.shape[1:])):
        raise HarnessError(f"{where}, the evaluation set {path.name} has {found}; save rows of the input's shape "
                           "(dim 0 counts the rows)")
    want = np.dtype(spec.dtype)
    kind_ok = (want.kind == "f" and array.dtype.kind == "f") or (want.kind in "iu" and array.dtype.kind in "iu") \
        or (want.kind == "b" and array.dtype.kind == "b")
    if not kind_ok:
        raise HarnessError(f"{where}, the evaluation set {path.name} has {found}; save it as {spec.dtype} "
                           f"(array.astype(numpy.{spec.dtype}){' after scaling' if want.kind == 'f' else ''})")
    if want.kind in "iu" and array.size and array.dtype != want:
        info = np.iinfo(want)
        if array.min() < info.min or array.max() > info.max:
            raise HarnessError(f"{where}, the evaluation set {path.name} has values in [{array.min()}, "
                               f"{array.max()}] that do not fit {spec.dtype}")
    sized = replace(spec, shape=(spec.shape[0], *array.shape[1:]))
    return np.ascontiguousarray(array.astype(want, copy=False)), sized


def index_ranges(model) -> dict[str, int]:
    """For each graph input used directly as the indices of a ``Gather`` from a constant table (an embedding):
    the table's size along the gathered axis, so made-up ids stay in range."""
    tables = {init.name: tuple(init.dims) for init in model.graph.initializer}
    ranges: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = tables[node.input[0]]
            if dims and -len(dims) <= axis < len(dims):
                rows = int(dims[axis])
                ranges[node.input[1]] = min(rows, ranges.get(node.input[1], rows))
    return ranges


def synthetic_inputs(specs: tuple[InputSpec, ...], *, vocab: dict[str, int] | None = None,
                     ranges: dict[str, int] | None = None, n: int = SYNTHETIC_ROWS, seed: int = 0
                     ) -> dict[str, np.ndarray]:
    """Seeded inputs for a model given without an evaluation set (quality is then fidelity to dense): floats
    N(0, 1); integers in [0, V) with V from ``vocab`` (by input name, ``"*"`` for every integer input), else the
    size of the embedding table the input indexes (``ranges``), else :data:`DEFAULT_VOCAB`; bools as random bits."""
    vocab, ranges = vocab or {}, ranges or {}
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape = (n, *spec.shape[1:])
        kind = np.dtype(spec.dtype).kind
        if kind == "f":
            array = rng.normal(0, 1, shape)
        elif kind == "b":
            array = rng.integers(0, 2, shape).astype(bool)
        else:
            high = vocab.get(spec.name) or vocab.get("*") or ranges.get(spec.name) or DEFAULT_VOCAB
            array = rng.integers(0, min(high, np.iinfo(spec.dtype).max), shape)
        out[spec.name] = np.ascontiguousarray(array.astype(spec.dtype))
    return out


def check_shared_dims(model, specs: tuple[InputSpec, ...], model_name: str) -> None:
    """Inputs whose declared dims share a symbol (``sequence`` in both ``input_ids`` and ``attention_mask``) must
    get the same size."""
    inits = {init.name for init in model.graph.initializer}
    seen: dict[str, tuple[str, int]] = {}
    sized = {s.name: s for s in specs}
    for value in model.graph.input:
        if value.name in inits or value.name not in sized or not value.type.tensor_type.HasField("shape"):
            continue
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            if i == 0 or not d.dim_param or i >= len(sized[value.name].shape):
                continue
            size = sized[value.name].shape[i]
            other = seen.setdefault(d.dim_param, (value.name, size))
            if other[1] != size:
                raise HarnessError(f"model {model_name}: dim {d.dim_param!r} is {other[1]} for input {other[0]!r} "
                                   f"but {size} for input {value.name!r}; give both the same size")
