"""Reference outputs of an ONNX model, computed without TVM (onnxruntime when installed, else onnx's own
numpy reference evaluator). They check that the compiled artifact computes the model it claims to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..board.runner import as_batches


def reference_outputs(onnx_path: Path, inputs: dict[str, np.ndarray], batch: int) -> tuple[np.ndarray, str]:
    """(the model's first output for every evaluation row, name of the evaluator used).

    ``inputs``: one array per graph input, by name. Evaluated ``batch`` rows a call, chunked and padded exactly as
    the device runner does (:func:`harness.board.runner.as_batches`), padded rows dropped: a model exported with a
    fixed batch (batch 1, ``torch.onnx.export``'s default) refuses any other row count.
    """
    names = list(inputs)
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        first = session.get_outputs()[0].name
        run, evaluator = (lambda feed: session.run([first], feed)[0]), f"onnxruntime {ort.__version__}"
    else:
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(onnx_path))
        first = model.graph.output[0].name
        ref = ReferenceEvaluator(model)
        run, evaluator = (lambda feed: ref.run([first], feed)[0]), f"onnx.reference {onnx.__version__}"
    outputs = [np.asarray(run(dict(zip(names, chunks))))[:real]
               for chunks, real in as_batches(list(inputs.values()), batch)]
    return np.concatenate(outputs), evaluator
