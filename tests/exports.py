"""Small models exported the way people bring them, built here (no downloads): a BERT-style encoder stub with
token ids and an attention mask (ONNX written directly with ``onnx.helper``, fixed batch 1 like a default
``torch.onnx.export``), a scikit-learn MLP classifier through skl2onnx with its label and probabilities, and real
``torch.onnx.export`` exports of a torchvision-style CNN and a BERT-style encoder (torch and torchvision are test
extras; the builders live in ``harness.modelbench.exports``, which `sparsebench models` uses too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB, HIDDEN, FFN, CLASSES = 50, 32, 64, 4


def bert_stub(path: Path, *, seq: int | str = "sequence", batch: int | str = 1, seed: int = 0) -> Path:
    """input_ids, attention_mask (int64 [batch, seq]) -> Gather embedding -> FFN (MatMul/Add/Relu/MatMul/Add,
    residual) -> mean over the unmasked positions -> classifier MatMul -> logits [batch, CLASSES]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def const(name, shape, scale):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [const("embedding", (VOCAB, HIDDEN), 1.0), const("w1", (HIDDEN, FFN), 1 / np.sqrt(HIDDEN)),
             const("b1", (FFN,), 0.1), const("w2", (FFN, HIDDEN), 1 / np.sqrt(FFN)), const("b2", (HIDDEN,), 0.1),
             const("w_cls", (HIDDEN, CLASSES), 1 / np.sqrt(HIDDEN)), const("b_cls", (CLASSES,), 0.1),
             numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
             numpy_helper.from_array(np.array([1], np.int64), "seq_axis")]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["emb"], axis=0),
        helper.make_node("MatMul", ["emb", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["h1r"]),
        helper.make_node("MatMul", ["h1r", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["h2b"]),
        helper.make_node("Add", ["h2b", "emb"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "seq_axis"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "w_cls"], ["logits_mm"]),
        helper.make_node("Add", ["logits_mm", "b_cls"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "bert-stub",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def bert_eval_set(path: Path, *, n: int = 12, seq: int = 16, seed: int = 1, labels_from: Path | None = None) -> Path:
    """Token ids in range, masks with at least one position set; labels = the model's own argmax (onnxruntime)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (n, seq)).astype(np.int64)
    lengths = rng.integers(1, seq + 1, n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    arrays = {"input_ids": ids, "attention_mask": mask}
    if labels_from is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(labels_from), providers=["CPUExecutionProvider"])
        arrays["y"] = np.concatenate([session.run(None, {"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]})[0]
                                      for i in range(n)]).argmax(axis=1)
    np.savez(path, **arrays)
    return path


def sklearn_mlp(folder: Path, *, zipmap: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """An MLPClassifier (8 features, 3 classes) exported by skl2onnx with its label and probabilities outputs
    (``zipmap=False``: plain tensors ``label`` and ``probabilities``; True: skl2onnx's default ``output_label`` and a
    ``ZipMap`` of ``output_probability``), and an evaluation set ``x``/``y`` of 30 held-out rows
    (:func:`harness.modelbench.exports.sklearn_mlp`, which `sparsebench models` benchmarks too)."""
    from harness.modelbench.exports import sklearn_mlp as export

    return export(folder, zipmap=zipmap, seed=seed)


def small_cnn(folder: Path, *, exporter: str = "default") -> tuple[Path, Path]:
    """A torchvision-style CNN with random init (torchvision's ``Conv2dNormActivation``, ResNet ``BasicBlock`` with
    a strided 1x1 downsample, MobileNetV2 ``InvertedResidual`` with a depthwise conv and ReLU6, max pool, global
    average pool, Linear) exported by ``torch.onnx.export`` at [1, 3, 32, 32], with 8 random images
    (:func:`harness.modelbench.exports.small_cnn`). ``exporter``: "default" (dynamo) or "legacy"."""
    from harness.modelbench.exports import small_cnn as export

    return export(folder, exporter=exporter)


def bert_encoder(folder: Path, *, seq: int = 16, exporter: str = "default") -> tuple[Path, Path]:
    """A BERT-style encoder (token + position embeddings, 2 layers of 2-head attention with Hugging Face's additive
    mask, GELU FFN, LayerNorm; hidden 64) exported by ``torch.onnx.export`` with int64 ``input_ids`` and
    ``attention_mask`` [1, seq], with 4 evaluation rows (:func:`harness.modelbench.exports.bert_encoder`)."""
    from harness.modelbench.exports import bert_encoder as export

    return export(folder, seq=seq, exporter=exporter)


def mixed_inputs(path: Path, *, table_rows: int = 10) -> Path:
    """Three inputs of three dtypes, batch and id count dynamic: x float16 [N, 8], keep bool [N, 8], ids int32
    [N, k] -> relu(where(keep, x, 0) @ W + sum_k table[ids]) [N, 16]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 1, (table_rows, 16)).astype(np.float32), "table"),
             numpy_helper.from_array(np.zeros((), np.float32), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [
        helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Where", ["keep", "x32", "zero"], ["kept"]),
        helper.make_node("MatMul", ["kept", "w"], ["proj"]),
        helper.make_node("Gather", ["table", "ids"], ["looked_up"], axis=0),
        helper.make_node("ReduceSum", ["looked_up", "axis1"], ["bag"], keepdims=0),
        helper.make_node("Add", ["proj", "bag"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 8]),
         helper.make_tensor_value_info("keep", TensorProto.BOOL, ["N", 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", "k"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
