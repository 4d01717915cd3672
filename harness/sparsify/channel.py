"""Channel (structured) pruning: whole output channels / hidden units removed, leaving a smaller *dense* model.

The honest alternative to sparse kernels: a unit with the smallest L2 weight norm is removed from its layer (a row
of the [N, K] weight view, the matching bias entry and per-channel constants on the way) and from the next layer
(the matching input column, or input channel of a conv). What runs afterwards is an ordinary dense model with fewer
parameters, so any runtime gains from it.

A *chain* is a producer layer (Gemm, MatMul with a 2-D weight, Conv with ``group = 1``) whose output reaches exactly
one consumer layer of those kinds (as its data input) through per-channel operations only: a constant bias or scale
(``Add``/``Mul``/``Sub``/``Div`` with a constant broadcast along the channel), ``BatchNormalization``, elementwise
activations, pooling, depthwise convs (one filter per channel: their filters go with the channels and their
``group`` follows), and ``Flatten`` (or ``Reshape`` to ``[N, -1]``) after a global pool. Anything else (a tensor
used twice, any other ``Reshape``, a grouped conv, a residual ``Add``) cannot be cut safely: that layer is left as it
is and its record says why. The model's inputs and outputs keep their shapes (the last layer never loses outputs).

Level semantics: ``channel`` at level ``s`` keeps a number of units per chain (one fraction of every chain's units)
chosen so that the parameter count (weights) of the layers it touches is as close as possible to ``(1 - s)`` of their
original count -- "channel 0.9" has the parameter count of "block 0.9". The fraction reached is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import check_sparsity
from .prune import LayerSparsity, Variant, _weight_view, node_op, prunable_layers, write_model

#: unary elementwise operations a channel passes through unchanged
_ELEMENTWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus",
                "Identity", "Gelu", "Clip", "PRelu", "Dropout", "Neg", "Abs"}
#: channel-preserving pooling (NCHW)
_POOLS = {"MaxPool", "AveragePool", "LpPool"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_BINARY = {"Add", "Mul", "Sub", "Div"}


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _out_axis(node) -> int:
    """Axis of the ONNX weight that indexes the layer's outputs."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return 1  # MatMul: [K, N]


def _in_axis(node) -> int:
    """Axis of the ONNX weight that indexes the layer's inputs (a conv's input channels)."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if _attr(node, "transB", 0) else 0
    return 0


@dataclass
class Chain:
    """One producer -> consumer pair whose connecting units can be removed."""

    producer: str  # weight initializer names
    consumer: str
    units: int
    # (initializer, axis) of per-channel constants to cut with the producer's outputs (its bias, BN, scales)
    constants: list[tuple[str, int]] = field(default_factory=list)
    # depthwise convs on the way (one filter per channel): their weights and biases are cut with the channels and
    # their ``group`` follows the channel count; their weights count among the touched parameters
    depthwise: list[str] = field(default_factory=list)
    keep: np.ndarray | None = None


def _layer_ok(node, inits, init_uses) -> str | None:
    """Why ``node``'s weight cannot take part in a chain, or None."""
    weight = inits[node.input[1]]
    if init_uses.get(node.input[1], 0) != 1:
        return "its weight is shared with another node"
    if node.op_type == "Conv" and (_attr(node, "group", 1) or 1) != 1:
        return "grouped/depthwise conv (its channels are tied to its input's)"
    if node.op_type == "MatMul" and len(weight.dims) != 2:
        return "MatMul with a weight that is not 2-D"
    if node.op_type == "Gemm" and (_attr(node, "transA", 0) or 0):
        return "Gemm with transA"
    return None


def _per_channel(init, axis_from_end: int, rank: int, units: int) -> bool | None:
    """True when constant ``init`` holds one value per channel (axis ``axis_from_end`` of a rank-``rank`` tensor),
    False for a scalar (left alone), None when it broadcasts otherwise (the chain is unsafe)."""
    dims = list(init.dims)
    if int(np.prod(dims)) == 1:
        return False
    padded = [1] * (rank - len(dims)) + dims if rank >= len(dims) else None
    if padded is None:
        return None
    want = [1] * rank
    want[rank + axis_from_end] = units
    return True if padded == want else None


def _is_depthwise(node, inits, init_uses, units: int) -> bool:
    """A conv with one filter per channel (``group`` = channels, weight [C, 1, kh, kw]) on ``units`` channels, whose
    weight and bias are its own: a channel goes through it alone, so it can be cut with the channel."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    dims = list(inits[node.input[1]].dims)
    bias_ok = len(node.input) < 3 or not node.input[2] or (
        node.input[2] in inits and list(inits[node.input[2]].dims) == [units] and init_uses.get(node.input[2]) == 1)
    return (_attr(node, "group", 1) == units and len(dims) >= 3 and dims[0] == units and dims[1] == 1
            and init_uses.get(node.input[1]) == 1 and bias_ok)


def find_chains(model) -> tuple[list[Chain], dict[str, str]]:
    """(chains whose units can be removed, per weight: why it is not a producer). Graph order."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list] = {}
    init_uses: dict[str, int] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, idx))
            if name in inits:
                init_uses[name] = init_uses.get(name, 0) + 1
    by_node = {id(node): w for node, w in prunable_layers(model)}
    chains, why = [], {}
    for node, weight in prunable_layers(model):
        bad = _layer_ok(node, inits, init_uses)
        if bad:
            why[weight] = bad
            continue
        units = int(inits[weight].dims[_out_axis(node)])
        conv = node.op_type == "Conv"
        rank = 4 if conv else None  # a Gemm/MatMul output: features on the last axis
        constants: list[tuple[str, int]] = []
        if len(node.input) > 2 and node.input[2]:
            bias = inits.get(node.input[2])
            if bias is None or list(bias.dims) != [units] or init_uses.get(node.input[2], 0) != 1:
                why[weight] = "its bias is not a constant of one value per output"
                continue
            constants.append((node.input[2], 0))
        tensor, collapsed, found, reason, depthwise = node.output[0], False, None, None, []
        while True:
            if tensor in outputs:
                reason = "its output is a model output"
                break
            uses = consumers.get(tensor, [])
            if len(uses) != 1:
                reason = f"its output feeds {len(uses)} nodes" if uses else "its output is unused"
                break
            nxt, idx = uses[0]
            if _is_depthwise(nxt, inits, init_uses, units) and conv and not collapsed and idx == 0:
                constants.append((nxt.input[1], 0))
                if len(nxt.input) > 2 and nxt.input[2]:
                    constants.append((nxt.input[2], 0))
                depthwise.append(nxt.input[1])
                tensor = nxt.output[0]
                continue
            if id(nxt) in by_node and idx == 0:
                bad = _layer_ok(nxt, inits, init_uses)
                if bad:
                    reason = f"the next layer ({nxt.name or nxt.op_type}): {bad}"
                elif nxt.op_type == "Conv" and not conv:
                    reason = "a fully-connected output feeds a conv"
                elif nxt.op_type != "Conv" and conv and not collapsed:
                    reason = "a conv's feature map feeds a fully-connected layer without a global pool"
                elif int(inits[nxt.input[1]].dims[_in_axis(nxt)]) != units:
                    reason = "the next layer's inputs do not match this layer's outputs one to one"
                else:
                    found = nxt
                break
            op = nxt.op_type
            if op in _ELEMENTWISE and idx == 0 and all(not n or (n in inits and int(np.prod(inits[n].dims)) == 1)
                                                       for n in nxt.input[1:]):
                tensor = nxt.output[0]
                continue
            if op in _BINARY and len(nxt.input) == 2 and nxt.input[1 - idx] in inits and (op in ("Add", "Mul")
                                                                                          or idx == 0):
                const = nxt.input[1 - idx]
                axis = -1 if not conv or collapsed and rank == 2 else -3
                kind = _per_channel(inits[const], axis, rank or max(len(inits[const].dims), 1), units)
                if kind is None or (kind and init_uses.get(const, 0) != 1):
                    reason = f"{op} with a constant that is not per channel"
                    break
                if kind:
                    constants.append((const, len(inits[const].dims) + axis))
                tensor = nxt.output[0]
                continue
            if op == "BatchNormalization" and conv and not collapsed and idx == 0 \
                    and all(n in inits and list(inits[n].dims) == [units] and init_uses.get(n, 0) == 1
                            for n in nxt.input[1:5]):
                constants.extend((n, 0) for n in nxt.input[1:5])
                tensor = nxt.output[0]
                continue
            if op in _POOLS and conv and not collapsed:
                tensor = nxt.output[0]
                continue
            if op in _GLOBAL_POOLS and conv and not collapsed:
                collapsed, tensor = True, nxt.output[0]
                continue
            if op == "Flatten" and conv and collapsed and (_attr(nxt, "axis", 1) == 1):
                rank, tensor = 2, nxt.output[0]
                continue
            if op == "Reshape" and conv and collapsed and rank == 4 and idx == 0 and nxt.input[1] in inits:
                from onnx import numpy_helper

                shape = numpy_helper.to_array(inits[nxt.input[1]]).tolist()
                if len(shape) == 2 and shape[1] == -1 and shape[0] != -1:  # [N, C, 1, 1] -> [N, -1]: one per channel
                    rank, tensor = 2, nxt.output[0]
                    continue
            reason = f"its output goes through {op}, which channels cannot be cut through"
            break
        if found is None:
            why[weight] = reason or "no next layer"
            continue
        chains.append(Chain(weight, found.input[1], units, constants, depthwise))
    return chains, why


def _sizes(model, chains: list[Chain], keeps: list[int]) -> tuple[int, int]:
    """(weights after, weights before) over the layers the chains touch, for ``keeps`` units per chain."""
    inits = {i.name: i for i in model.graph.initializer}
    scale: dict[str, float] = {}
    for chain, keep in zip(chains, keeps):
        for name in (chain.producer, chain.consumer, *chain.depthwise):
            scale[name] = scale.get(name, 1.0) * keep / chain.units
    before = sum(int(np.prod(inits[n].dims)) for n in scale)
    after = sum(int(round(int(np.prod(inits[n].dims)) * s)) for n, s in scale.items())
    return after, before


def choose_keeps(model, chains: list[Chain], level: float) -> tuple[list[int], int, int]:
    """Units to keep per chain (one fraction for all chains, at least one unit each) whose touched-layer weight count
    is closest to ``(1 - level)`` of the original: (keeps, weights after, weights before)."""
    best = None
    for frac in np.linspace(0.0, 1.0, 4001):
        keeps = [max(1, int(round(frac * c.units))) for c in chains]
        after, before = _sizes(model, chains, keeps)
        gap = abs(after - (1.0 - level) * before)
        if best is None or gap < best[0]:
            best = (gap, keeps, after, before)
    return best[1], best[2], best[3]


def channel_prune_model(model, level: float, *, prune_first: bool = True):
    """Cut ``model`` (an ``onnx.ModelProto``, changed in place) at ``level``: (chains used, why-not per weight,
    weights after, weights before)."""
    from onnx import numpy_helper

    chains, why = find_chains(model)
    first = prunable_layers(model)[0][1] if prunable_layers(model) else None
    if not prune_first and first is not None:
        kept = [c for c in chains if c.producer != first]
        if len(kept) != len(chains):
            why[first] = "first layer (prune_first = false)"
        chains = kept
    if not chains:
        return chains, why, 0, 0
    keeps, after, before = choose_keeps(model, chains, level)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {w: node for node, w in prunable_layers(model)}
    arrays = {name: numpy_helper.to_array(inits[name]) for name in inits}
    for chain, keep in zip(chains, keeps):
        prod = nodes[chain.producer]
        view, _ = _weight_view(prod, chain.producer, arrays[chain.producer])
        norms = np.sqrt((view.astype(np.float64) ** 2).sum(axis=1))
        # the `keep` largest norms, ties to the earlier unit; kept in their original order
        order = np.argsort(-norms, kind="stable")
        chain.keep = np.sort(order[:keep])
    # cut every array after all units are chosen (a layer in two chains is chosen on its original weights)
    for chain in chains:
        prod, cons = nodes[chain.producer], nodes[chain.consumer]
        arrays[chain.producer] = np.take(arrays[chain.producer], chain.keep, axis=_out_axis(prod))
        arrays[chain.consumer] = np.take(arrays[chain.consumer], chain.keep, axis=_in_axis(cons))
        for name, axis in chain.constants:
            arrays[name] = np.take(arrays[name], chain.keep, axis=axis)
    touched = {n for c in chains for n in (c.producer, c.consumer, *(k for k, _ in c.constants))}
    by_weight = {node.input[1]: node for node in model.graph.node if node.op_type == "Conv" and len(node.input) > 1}
    for chain in chains:
        for weight in chain.depthwise:
            for a in by_weight[weight].attribute:
                if a.name == "group":
                    a.i = len(chain.keep)
    for name in touched:
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arrays[name]), name))
    # intermediate shapes changed: drop the stale ones (the checker and shape inference recompute them)
    del model.graph.value_info[:]
    return chains, why, after, before


def make_channel_variant(model_name: str, onnx_path: Path, level: float, out_dir: Path, *,
                         prune_first: bool = True) -> Variant:
    """The channel-pruned ONNX model for ``level`` (cached by content), described layer by layer.

    Every prunable layer of the original gets a record on its original [N, K] view: ``sparsity_actual`` is the
    fraction of its weights removed (so the model-level figure is comparable with a sparse variant's zeros) and
    ``detail`` says what was done (units kept, the new shape) or why the layer was left alone.
    """
    import onnx
    from onnx import numpy_helper

    level = check_sparsity(level)
    model = onnx.load(str(onnx_path))
    layers = prunable_layers(model)
    originals = {w: (node, numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == w)))
                 for node, w in layers}
    chains, why, after, before = channel_prune_model(model, level, prune_first=prune_first)
    onnx.checker.check_model(model)
    new = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out_of = {c.producer: c for c in chains}
    in_of = {c.consumer: c for c in chains}
    through = {w: c for c in chains for w in c.depthwise}
    records = []
    for node, w in layers:
        array = originals[w][1]
        view, _ = _weight_view(node, w, array)
        n, k = int(view.shape[0]), int(view.shape[1])
        new_view, _ = _weight_view(node, w, new[w])
        touched = w in out_of or w in in_of or w in through
        removed = 1.0 - new_view.size / view.size
        parts = []
        if w in out_of:
            parts.append(f"{len(out_of[w].keep)}/{out_of[w].units} outputs kept")
        if w in in_of:
            parts.append(f"{len(in_of[w].keep)}/{in_of[w].units} inputs kept")
        if w in through:
            parts.append(f"depthwise: {len(through[w].keep)}/{through[w].units} channels kept with "
                         f"{through[w].producer}'s outputs")
        if touched:
            detail = "channel: " + ", ".join(parts) + f"; now [{new_view.shape[0]}, {new_view.shape[1]}]"
            if w not in out_of and w not in through and w in why:
                detail += f"; outputs not cut: {why[w]}"
        else:
            detail = f"channel: left as it is: {why.get(w, 'not in a chain')}"
        records.append(LayerSparsity(
            layer=node.name or w, weight=w, shape=(n, k),
            sparsity_target=level if touched else 0.0,
            sparsity_actual=float(removed) if touched else float(np.count_nonzero(view == 0) / view.size),
            pruned=touched, node_op=node_op(node, array), detail=detail,
        ))
    if not chains:
        note = (f"{model_name}: channel {level:g}: no layer's outputs can be removed safely "
                f"({'; '.join(f'{k}: {v}' for k, v in why.items())}); no channel row is measured")
    else:
        note = (f"{model_name}: channel {level:g}: {len(chains)} chain(s) cut; the layers they touch keep "
                f"{after}/{before} weights ({after / before:.3f} of them, asked {1 - level:.3f})")
    path, sha = write_model(model, model_name, out_dir)
    return Variant(model=model_name, method="channel", sparsity_target=level, block=None, onnx_path=path,
                   sha256=sha, layers=tuple(records), notes=(note,),
                   params=(after, before) if chains else None)
