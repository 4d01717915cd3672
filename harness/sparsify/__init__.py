"""Pruning methods that turn a dense ONNX model into sparse variants, reporting the sparsity actually reached."""

from .prune import LayerSparsity, Variant, make_variant, prunable_layers, prune_matrix

__all__ = ["LayerSparsity", "Variant", "make_variant", "prunable_layers", "prune_matrix"]
