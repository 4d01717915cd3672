"""Reference outputs of an ONNX model, computed without TVM (onnxruntime when installed, else onnx's own
numpy reference evaluator). They check that the compiled artifact computes the model it claims to."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def reference_outputs(onnx_path: Path, input_name: str, x: np.ndarray) -> tuple[np.ndarray, str]:
    """(first output for all of ``x``, name of the evaluator used)."""
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {input_name: x})[0]), f"onnxruntime {ort.__version__}"
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(onnx_path)))
    return np.asarray(evaluator.run(None, {input_name: x})[0]), f"onnx.reference {onnx.__version__}"
