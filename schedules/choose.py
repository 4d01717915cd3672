"""Per-layer kernel choice: from a kernel plan measured on the device that runs the model, or by a stated rule.

Peers pick sparse kernels by a global rule (XNNPACK: 2/3 zeros; old TVM: a sparsity threshold). Whether a sparse
kernel pays off depends on the shape, batch, sparsity pattern and the CPU, so the harness times every candidate
for every layer *on the device* (``harness/compile/select.py`` builds them into one bundle, the board-side timer
times them) and hands the compile step a plan. Nothing here times anything: compiling is deterministic given a
plan. Where no measurement exists the rule decides and the record says ``choice = "rule"``.

A layer is identified by :func:`layer_key`: its [N, K] shape, the batch M and the positions of its nonzeros --
what a kernel's speed depends on (values do not matter). :func:`kernel_key` names one candidate kernel for a layer
the same way, so two layers with one pattern (or two dense layers of one shape) are timed once.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Mapping

import numpy as np

from . import bsr
from .cpu import CpuInfo
from .cuda import GpuInfo
from .kernels import Candidate, candidates, label, nm_pattern

#: The rule takes an N:M kernel only if the weight fills at least this fraction of its n slots per group.
NM_MIN_FILL = 0.75
#: Where the CUDA timings that justify `CUDA_RULE` are recorded (device, driver, date, how, numbers).
CUDA_MEASUREMENTS = "schedules/cuda_measurements.json"
#: The rule on a CUDA target, where nothing was measured: TVM's default schedule, which beat every CUDA kernel of
#: ours in each workload where both were timed (tests/test_choose.py checks this against `CUDA_MEASUREMENTS`).
CUDA_RULE: Candidate = ("tvm", None)

#: (weight [N, K], batch M, cpu) -> (candidate, info for the layer record)
Chooser = Callable[[np.ndarray, int, "CpuInfo | GpuInfo | None"], "tuple[Candidate, dict]"]


def weight_digest(weight: np.ndarray) -> str:
    """Content hash of a [N, K] weight as the rewrite sees it (shape, dtype and bytes in C order): how a layer of
    the compiled module is matched to the weight's name in the source model."""
    digest = hashlib.sha256(f"{weight.shape}:{weight.dtype}".encode())
    digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def pattern_digest(weight: np.ndarray) -> str:
    """Hash of a weight's shape and nonzero positions (not its values)."""
    digest = hashlib.sha256(f"{weight.shape}".encode())
    digest.update(np.packbits(np.ascontiguousarray(weight) != 0).tobytes())
    return digest.hexdigest()


def layer_key(weight: np.ndarray, m: int, *, pattern: str | None = None, conv: tuple[int, int] | None = None) -> str:
    """What identifies a layer for kernel choice: [N, K], batch M, the nonzero pattern and, for an NCHW conv, its
    (images, pixels) -- a different kernel (`conv_nchw`) runs it than a matmul of the same M."""
    where = "" if conv is None else f":conv{conv[0]}x{conv[1]}"
    return hashlib.sha256(f"layer:{m}{where}:{pattern or pattern_digest(weight)}".encode()).hexdigest()[:32]


def kernel_key(candidate: Candidate, weight: np.ndarray, m: int, *, pattern: str | None = None,
               conv: tuple[int, int] | None = None) -> str:
    """What identifies one candidate kernel's timing: the kernel, the shape and batch (and an NCHW conv's
    (images, pixels)), and -- for sparse kernels -- the nonzero pattern (a dense kernel's time depends on the
    shape alone)."""
    what = f"{weight.shape}" if candidate[0] in ("dense", "tvm") else (pattern or pattern_digest(weight))
    where = "" if conv is None else f":conv{conv[0]}x{conv[1]}"
    return hashlib.sha256(f"kernel:{label(candidate)}:{m}{where}:{what}".encode()).hexdigest()[:32]


def rule_chooser(sparse_min: float = 0.5) -> Chooser:
    """Sparse when at least ``sparse_min`` of the weight is zero, else dense; N:M weights get the N:M kernel.

    On a CUDA target every layer gets `CUDA_RULE`, TVM's default schedule: it was measured faster
    than our CUDA kernels, dense and sparse, in each workload where both were timed (`CUDA_MEASUREMENTS`).
    Sparse means BSR with the best-fitting block (`bsr.choose_block`). A weight with no block
    structure (1x1) that satisfies an N:M pattern, with most of its n slots per group filled, gets
    the N:M kernel whatever ``sparse_min`` says: the pattern is what it was pruned for, and the
    kernel beats dense at 50 % zeros where CSR's indices cost more than they save.
    """

    def choose(weight: np.ndarray, m: int, cpu: CpuInfo | GpuInfo | None, conv=None) -> tuple[Candidate, dict]:
        if isinstance(cpu, GpuInfo):
            return CUDA_RULE, {"choice": "rule", "rule": "TVM's default schedule (faster than every CUDA kernel of "
                                                         f"ours in each workload measured: {CUDA_MEASUREMENTS})"}
        density = bsr.density(weight)
        block = bsr.choose_block(weight) if density < 1.0 else None
        pattern = nm_pattern(weight) if block == (1, 1) else None
        if pattern is not None and density >= NM_MIN_FILL * pattern[0] / pattern[1]:
            return ("nm", pattern), {"choice": "rule", "rule": f"{pattern[0]}:{pattern[1]} structured"}
        if 1.0 - density >= sparse_min:
            return ("bsr", block), {"choice": "rule", "rule": f"zeros >= {sparse_min:g}"}
        return ("dense", None), {"choice": "rule", "rule": f"zeros < {sparse_min:g}"}

    return choose


class PlanChooser:
    """Takes each layer's kernel from a plan: ``{layer_key: (candidate, info)}`` (``info`` goes into the layer's
    record: ``choice``, ``alternatives_us``, ``measured_on``, ...). A layer the plan does not cover gets the rule,
    and its record says why (``rule`` names the reason)."""

    def __init__(self, table: Mapping[str, tuple[Candidate, dict]], *, fallback: Chooser | None = None,
                 missing: str = "not in the kernel plan"):
        self.table = table
        self.fallback = fallback or rule_chooser()
        self.missing = missing

    def __call__(self, weight: np.ndarray, m: int, cpu: CpuInfo | GpuInfo | None,
                 conv: tuple[int, int] | None = None) -> tuple[Candidate, dict]:
        hit = self.table.get(layer_key(weight, m, conv=conv))
        if hit is not None:
            return hit[0], dict(hit[1])
        candidate, info = self.fallback(weight, m, cpu)
        return candidate, {**info, "rule": f"{info.get('rule')} ({self.missing})"}


class SurveyChooser:
    """Records every (weight, batch) the rewrite asks about -- the layers a plan must cover -- and answers with the
    rule so the rewrite can go on. ``layers``: ``{layer_key: (weight, m, cpu, conv)}`` in program order (``conv``:
    an NCHW conv's (images, pixels), else None)."""

    def __init__(self, fallback: Chooser | None = None):
        self.fallback = fallback or rule_chooser()
        self.layers: dict[str, tuple] = {}

    def __call__(self, weight: np.ndarray, m: int, cpu: CpuInfo | GpuInfo | None,
                 conv: tuple[int, int] | None = None) -> tuple[Candidate, dict]:
        self.layers.setdefault(layer_key(weight, m, conv=conv), (weight, m, cpu, conv))
        return self.fallback(weight, m, cpu)


__all__ = ["CUDA_MEASUREMENTS", "CUDA_RULE", "Chooser", "PlanChooser", "SurveyChooser", "candidates", "kernel_key",
           "layer_key", "pattern_digest", "rule_chooser", "weight_digest"]
