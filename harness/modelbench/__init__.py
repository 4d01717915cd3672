"""The model benchmark behind `sparsebench models`: whole models -- the built-in zoo and exports made here the way
people make them (torchvision CNNs and a BERT-style encoder through ``torch.onnx.export``, a scikit-learn MLP
through skl2onnx) -- compiled dense and 90 % block-sparse by our pipeline, checked and timed against onnxruntime.

One module per job: `exports` (making the models; torch and scikit-learn optional), `models` (the suite's models
and their cache), `timing` (interleaved A/B rounds), `suite` (prepare, build, check and time each model),
`checks` and `table` (reading a document back). Nothing here imports TVM directly: builds go through
`harness.compile.tvm_adapter`, runs through the board runner's model wrappers.
"""

from __future__ import annotations

from .checks import target_checks
from .models import SuiteModel, pick, suite_models
from .suite import FULL, QUICK, SUITE_FORMAT, Plan, model_suite
from .table import format_table

__all__ = ["FULL", "QUICK", "SUITE_FORMAT", "Plan", "SuiteModel", "format_table", "model_suite", "pick",
           "suite_models", "target_checks"]
