"""Build small MLP-style ONNX graphs from numpy weights (used by the zoo and by tests)."""

from __future__ import annotations

import numpy as np


def mlp_onnx(layers: list[tuple[np.ndarray, np.ndarray]], *, activation: str = "Relu", name: str = "mlp",
             input_name: str = "x", output_name: str = "y") -> "onnx.ModelProto":
    """A chain of ``Gemm(transB=1)`` layers with ``activation`` between them and a symbolic batch dimension ``N``.

    ``layers`` holds ``(W [N_out, K_in], b [N_out])`` pairs in order. Gemm with transB is what PyTorch's exporter
    writes for ``nn.Linear``, so the zoo exercises the same import path as user models.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    cur = input_name
    for i, (w, b) in enumerate(layers):
        w = np.ascontiguousarray(w, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        out = output_name if i == len(layers) - 1 else f"fc{i}_out"
        nodes.append(helper.make_node("Gemm", [cur, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}", transB=1))
        cur = out
        if i != len(layers) - 1:
            nodes.append(helper.make_node(activation, [cur], [f"act{i}_out"], name=f"act{i}"))
            cur = f"act{i}_out"
    k_in = layers[0][0].shape[1]
    n_out = layers[-1][0].shape[0]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", k_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", n_out])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sparsebench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
