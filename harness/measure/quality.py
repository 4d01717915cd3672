"""Quality of a variant's outputs: accuracy against labels, fidelity to the dense variant, correctness against
a reference evaluation of the same (pruned) model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quality:
    """``None`` means not measurable (no labels, no dense outputs, no reference)."""

    accuracy: float | None  # top-1 accuracy against labels, fraction
    top1_agreement: float | None  # fraction of inputs whose argmax equals the dense variant's
    max_abs_err: float | None  # max |y - y_dense| over the evaluation set (output units)
    ref_max_abs_err: float | None  # max |y - y_reference| for the same pruned model (compile correctness)
    ref_scale: float | None  # max |y_reference|, the scale the reference tolerance is relative to


def _top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1).argmax(axis=1)


def quality_figures(outputs: np.ndarray, *, labels: np.ndarray | None = None, dense: np.ndarray | None = None,
                    reference: np.ndarray | None = None) -> Quality:
    """Compare device ``outputs`` [n, ...] with labels, the dense variant's outputs and the reference outputs."""
    outputs = np.asarray(outputs, dtype=np.float64)
    accuracy = float((_top1(outputs) == labels).mean()) if labels is not None else None
    agreement = max_err = None
    if dense is not None and dense.shape == outputs.shape:
        agreement = float((_top1(outputs) == _top1(dense)).mean())
        max_err = float(np.abs(outputs - dense).max())
    ref_err = ref_scale = None
    if reference is not None and reference.shape == outputs.shape:
        ref_err = float(np.abs(outputs - reference).max())
        ref_scale = float(np.abs(reference).max())
    return Quality(accuracy, agreement, max_err, ref_err, ref_scale)
