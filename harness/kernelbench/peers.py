"""What a user would run instead of our kernels, each on its cheapest path: numpy (preallocated output),
onnxruntime (a one-node MatMul model, IO binding), scipy CSR, and TVM's default Relax build of the same matmul.

Each peer comes ready to time: a call without arguments and the bytes of the weight as that peer stores it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Peer(NamedTuple):
    """A baseline bound to one weight and input: `call()` computes x @ W^T; `nbytes` = bytes of its weight."""

    call: Callable[[], object]
    nbytes: int


def numpy_matmul(weight: np.ndarray, x: np.ndarray) -> Peer:
    """numpy's matmul against W^T (contiguous) into a preallocated output."""
    wt = np.ascontiguousarray(weight.T)
    out = np.empty((x.shape[0], weight.shape[0]), np.float32)
    return Peer(lambda: np.matmul(x, wt, out=out), weight.nbytes)


def onnxruntime_matmul(weight: np.ndarray, x: np.ndarray, threads: int) -> Peer:
    """onnxruntime on a one-node MatMul x[m, K] @ W^T (W^T an initializer), intra-op threads = `threads`, through
    IO binding (the input bound once, the output allocated on the first run and reused)."""
    session = _ort_session(weight, x.shape[0], threads)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu")
    session.run_with_iobinding(binding)  # allocates the output once; later runs reuse it
    return Peer(lambda: session.run_with_iobinding(binding), weight.nbytes)


def _ort_session(weight: np.ndarray, m: int, threads: int):
    """An onnxruntime session of one MatMul node x[m, K] @ W^T (W^T as an initializer), intra-op threads = cores."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n, k = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wt"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T), "wt")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def scipy_csr(weight: np.ndarray, x: np.ndarray) -> Peer:
    """scipy's CSR matrix times x^T (contiguous); bytes = data + indices + indptr."""
    import scipy.sparse

    csr = scipy.sparse.csr_matrix(weight)
    xt = np.ascontiguousarray(x.T)
    return Peer(lambda: csr @ xt, csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes)


def tvm_default(weight: np.ndarray, x: np.ndarray, target):
    """TVM's default Relax build of x @ W^T (a `schedules.build.BoundCall`: time it with `Clock.tvm`)."""
    from schedules.build import default_matmul_call

    return default_matmul_call(weight, x, target)
