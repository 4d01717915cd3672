"""The models `sparsebench models` measures: the built-in zoo and exports made on the fly, each an ONNX file plus an
evaluation set, built into the cache once (keyed by the builder's source and the exporter's version)."""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import HarnessError
from ..paths import cache_dir
from . import exports

#: packages the torch exports need (torch's default exporter is the dynamo one, which needs onnxscript)
TORCH = ("torch", "torchvision", "onnxscript")
SKLEARN = ("sklearn", "skl2onnx")


@dataclass(frozen=True)
class SuiteModel:
    """One model of the suite.

    Attributes:
        name: the name `--models` selects and the table shows.
        kind: ``cnn``, ``transformer`` or ``mlp`` (the CNN-only targets look at it).
        source: how it was made (``zoo``, ``torch.onnx.export (dynamo)``, ``skl2onnx``).
        description: one line for the JSON.
        requires: modules that must import to make it (missing ones skip the model, with the reason).
        make: ``make(folder) -> (onnx path, evaluation .npz path)``; None for zoo models.
        outputs: outputs to keep (the rest of the graph cut away), e.g. skl2onnx's label.
    """

    name: str
    kind: str
    source: str
    description: str
    requires: tuple[str, ...] = ()
    make: Callable[[Path], tuple[Path, Path]] | None = None
    outputs: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """Why this model cannot be made here (missing packages), or None."""
        absent = exports.missing(*self.requires)
        return f"needs {', '.join(absent)} (pip install 'sparsebench[test]')" if absent else None

    def materialize(self) -> tuple[Path, Path]:
        """(ONNX path, evaluation set path), exported into the cache on first use."""
        if self.make is None:
            from ..models import zoo

            return zoo.materialize(self.name)
        digest = hashlib.sha256(Path(exports.__file__).read_bytes())
        for module in self.requires:
            digest.update(f"{module}={package_version(module)}".encode())
        folder = cache_dir() / "modelbench" / f"{self.name}-{digest.hexdigest()[:12]}"
        done = folder / "made.txt"  # written last: its presence marks a complete export
        if done.is_file():
            onnx_name, eval_name = done.read_text().split()
            return folder / onnx_name, folder / eval_name
        onnx_path, eval_path = self.make(folder)
        done.write_text(f"{onnx_path.name} {eval_path.name}")
        return onnx_path, eval_path


def package_version(module: str) -> str | None:
    """The installed version of the distribution that provides ``module`` (None: not installed)."""
    try:
        return importlib.metadata.version({"sklearn": "scikit-learn"}.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return None


def _zoo_models() -> list[SuiteModel]:
    from ..models import zoo

    kinds = {"digits-mlp": "mlp", "ffn-768": "mlp", "digits-cnn": "cnn", "tiny-encoder": "transformer"}
    return [SuiteModel(m.name, kinds.get(m.name, "mlp"), "zoo", m.description) for m in zoo.MODELS.values()]


def suite_models() -> list[SuiteModel]:
    """Every model of the suite, zoo first."""
    dynamo = "torch.onnx.export (default exporter)"
    return _zoo_models() + [
        SuiteModel("small-cnn", "cnn", dynamo, "torchvision blocks (conv 3x3, strided, 1x1 downsample, depthwise, BN, "
                   "ReLU/ReLU6, max pool, GAP, Linear), random init, [1, 3, 32, 32]", TORCH, exports.small_cnn),
        SuiteModel("resnet18", "cnn", dynamo, "torchvision resnet18, random init, [1, 3, 224, 224]", TORCH,
                   partial(exports.torchvision_model, "resnet18")),
        SuiteModel("mobilenet_v2", "cnn", dynamo, "torchvision mobilenet_v2, random init, [1, 3, 224, 224]", TORCH,
                   partial(exports.torchvision_model, "mobilenet_v2")),
        SuiteModel("bert-encoder", "transformer", dynamo, "BERT-style encoder, 4 layers, hidden 128, 2 heads, FFN "
                   "512, seq 128, int64 input_ids + attention_mask [1, 128], random init", TORCH,
                   partial(exports.bert_encoder, seq=128, hidden=128, layers=4, heads=2)),
        SuiteModel("sklearn-mlp", "mlp", "skl2onnx", "scikit-learn MLPClassifier 8-32-3 trained here; probabilities "
                   "output", SKLEARN, exports.sklearn_mlp, outputs=("probabilities",)),
    ]


def pick(names: str | None) -> list[SuiteModel]:
    """The models named in ``names`` (comma-separated, suite order kept), or all of them."""
    models = suite_models()
    if not names:
        return models
    by_name = {m.name: m for m in models}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise HarnessError(f"unknown model(s) {', '.join(map(repr, unknown))} for --models; known: "
                           f"{', '.join(by_name)}")
    return [m for m in models if m.name in wanted]
