"""Fold an ONNX graph's shape arithmetic at static input shapes, before TVM imports it.

Exports from torch (legacy ``torch.onnx.export`` of HF transformers, for one) compute masks and reshapes from
``Shape`` of their inputs: ``Shape -> Gather -> Concat -> ConstantOfShape -> Where -> Expand``. TVM's ONNX
importer fails on some of these chains ("ConstantOfShape ... broadcast_to expects ..."), and we always compile at
static shapes, so the chains are constants: `fold_static` replaces ``Shape`` of a statically shaped tensor by its
value and evaluates every node whose inputs are all constants (``onnx.reference``, one node at a time), until
nothing changes. Weights are never touched: a node reading an initializer of rank >= 2 is not folded (layers are
joined to their pruning records by the weight initializer's name), nor is one whose output would be large.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Outputs with more elements than this stay computed at run time: a folded constant is stored in the model (and
# the compiled library), and shape arithmetic never needs more.
MAX_FOLDED_ELEMENTS = 1 << 16
# Operators whose value is not a function of their inputs.
_NOT_FOLDABLE = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                           "Bernoulli", "If", "Loop", "Scan"})


def fold_static(model, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str] | None = None):
    """A copy of `model` (``onnx.ModelProto``) with its graph inputs fixed to ``shapes`` (name -> dims) and its
    shape arithmetic folded to initializers (named after the outputs they replace). ``dtypes`` (name -> numpy
    dtype name) is checked against the graph's declared input types. Original initializers keep their names."""
    import onnx

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    _fix_inputs(folded.graph, shapes, dtypes or {})
    weights = {init.name for init in folded.graph.initializer if len(init.dims) >= 2}
    while _fold_once(folded, weights):
        pass
    return folded


def _fix_inputs(graph, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str]) -> None:
    from onnx import helper

    for value in graph.input:
        if value.name not in shapes:
            continue
        declared = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if value.name in dtypes and np.dtype(dtypes[value.name]) != declared:
            raise ValueError(f"input {value.name!r} is {declared} in the model, not {dtypes[value.name]}")
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[value.name]:
            dims.add().dim_value = int(size)


def _fold_once(model, weights: set[str]) -> bool:
    """Fold every node that can be folded now; whether any was."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except onnx.shape_inference.InferenceError:  # shapes unknown: fold only what needs none
        inferred = model
    static = {value.name: _static_dims(value) for value in (*inferred.graph.value_info, *inferred.graph.input,
                                                             *inferred.graph.output)}
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    keep, added = [], []
    for node in graph.node:
        outputs = _evaluate(node, values, static, weights, model.opset_import)
        if outputs is None:
            keep.append(node)
            continue
        for name, array in zip(node.output, outputs):
            values[name] = array
            added.append(numpy_helper.from_array(np.asarray(array), name))
    if not added:
        return False
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(added)
    _drop_unused(graph, weights)
    return True


def _static_dims(value) -> list[int] | None:
    shape = value.type.tensor_type.shape
    if not value.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    return None if any(d is None for d in dims) else dims


def _evaluate(node, values: dict, static: dict, weights: set[str], opsets) -> list[np.ndarray] | None:
    """The node's outputs when they are constants worth storing, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _NOT_FOLDABLE:
        return None
    if node.op_type == "Shape":
        dims = values[node.input[0]].shape if node.input[0] in values else static.get(node.input[0])
        if dims is None:
            return None
        attrs = {a.name: a.i for a in node.attribute}
        rank = len(dims)
        start, end = (max(0, min(rank, x + rank if x < 0 else x))
                      for x in (attrs.get("start", 0), attrs.get("end", rank)))
        return [np.array(list(dims)[start:end], dtype=np.int64)]
    inputs = [name for name in node.input if name]
    if any(name in weights or name not in values for name in inputs):
        return None
    from onnx.reference import ReferenceEvaluator

    feeds = {name: values[name] for name in inputs}
    try:
        outputs = ReferenceEvaluator(_single_node_model(node, feeds, opsets)).run(None, feeds)
    # an operator (or attribute) the reference implementation cannot run stays in the graph, computed at run time
    except Exception:  # noqa: BLE001 - onnx.reference raises anything from NotImplementedError to KeyError
        return None
    if any(np.asarray(o).size > MAX_FOLDED_ELEMENTS for o in outputs):
        return None
    return [np.asarray(o) for o in outputs]


def _single_node_model(node, feeds: Mapping[str, np.ndarray], opsets):
    """`node` alone as a model of the source model's opsets (an operator's meaning depends on the opset)."""
    from onnx import helper

    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
              for name, array in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return helper.make_model(graph, opset_imports=list(opsets))


def _drop_unused(graph, weights: set[str]) -> None:
    """Remove initializers nothing reads any more (folded shape constants); weights always stay."""
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    keep = [init for init in graph.initializer if init.name in used or init.name in weights]
    del graph.initializer[:]
    graph.initializer.extend(keep)
