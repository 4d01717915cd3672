"""Load and check ONNX models and their evaluation sets, with errors that name the file and the fix."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HarnessError


@dataclass(frozen=True)
class LoadedModel:
    """A checked ONNX model on disk plus what the pipeline needs to know about it."""

    name: str
    path: Path
    sha256: str
    input_name: str
    input_shape: tuple  # dims; a str for a symbolic dim (the batch), an int otherwise
    eval_x: np.ndarray  # evaluation inputs, float32, [n, ...]
    eval_y: np.ndarray | None  # int labels or None (then quality = fidelity to the dense variant)

    def shape_for_batch(self, batch: int) -> list[int]:
        """The static input shape at ``batch``; refuses a batch the model's fixed first dim cannot take."""
        first = self.input_shape[0]
        if isinstance(first, int) and first != batch:
            raise HarnessError(
                f"model {self.name}: input {self.input_name!r} has a fixed batch of {first}, cannot run batch {batch}; "
                f"use batch = [{first}] or export the model with a symbolic batch dimension"
            )
        rest = list(self.input_shape[1:])
        if any(not isinstance(d, int) for d in rest):
            raise HarnessError(
                f"model {self.name}: input {self.input_name!r} has symbolic non-batch dims {self.input_shape}; "
                "export it with static shapes except the batch"
            )
        return [batch, *rest]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_onnx(path: Path) -> "onnx.ModelProto":
    """Parse and check an ONNX file; a missing, truncated or invalid file is one clear :class:`HarnessError`."""
    import onnx

    if not path.is_file():
        raise HarnessError(f"ONNX model {path} does not exist; check the path in the config")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ... for broken files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HarnessError(
            f"ONNX model {path} is corrupt or not an ONNX file ({first}); re-export it (e.g. torch.onnx.export) "
            "and check it with onnx.checker.check_model"
        ) from None
    if len(model.graph.node) == 0:
        raise HarnessError(f"ONNX model {path} has no nodes; re-export it")
    return model


def graph_input(model) -> tuple[str, tuple]:
    """The single non-initializer graph input: (name, dims with symbolic dims as str)."""
    inits = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise HarnessError(
            f"model has {len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}); sparsebench supports "
            "models with exactly one input tensor"
        )
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
        for d in inputs[0].type.tensor_type.shape.dim
    )
    return inputs[0].name, dims


def load_eval_set(path: Path, input_shape: tuple, model_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``x`` (and optional ``y`` labels) from an ``.npz``; check ``x`` matches the model's input."""
    if not path.is_file():
        raise HarnessError(f"evaluation set {path} does not exist; give eval = \"data.npz\" with arrays x (and y)")
    try:
        with np.load(path) as data:
            if "x" not in data:
                raise HarnessError(f"evaluation set {path} has no array 'x' (has: {', '.join(data.files)})")
            x = np.asarray(data["x"], dtype=np.float32)
            y = np.asarray(data["y"]).astype(np.int64) if "y" in data else None
    except HarnessError:
        raise
    except Exception as err:
        raise HarnessError(f"evaluation set {path} is not a readable .npz ({err}); save it with numpy.savez") from None
    if tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise HarnessError(
            f"evaluation set {path}: x has sample shape {list(x.shape[1:])} but model {model_name} expects "
            f"{list(input_shape[1:])}"
        )
    if y is not None and len(y) != len(x):
        raise HarnessError(f"evaluation set {path}: {len(x)} inputs but {len(y)} labels")
    return x, y


def synthetic_eval_set(input_shape: tuple, n: int = 32, seed: int = 0) -> np.ndarray:
    """Seeded N(0, 1) inputs for a model given without an evaluation set (quality = fidelity to dense)."""
    return np.random.default_rng(seed).normal(0, 1, (n, *input_shape[1:])).astype(np.float32)


def load_model(name: str, path: Path, eval_path: Path | None) -> LoadedModel:
    """Load, check and describe a model and its evaluation set."""
    model = read_onnx(path)
    input_name, input_shape = graph_input(model)
    if eval_path is not None:
        x, y = load_eval_set(eval_path, input_shape, name)
    else:
        x, y = synthetic_eval_set(input_shape), None
    return LoadedModel(name, path, file_sha256(path), input_name, input_shape, x, y)
