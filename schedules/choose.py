"""Per-layer kernel choice: by measurement on the device that runs the model, or by a stated rule.

Peers pick sparse kernels by a global rule (XNNPACK: 2/3 zeros; old TVM: a sparsity threshold). Whether a
sparse kernel pays off depends on the shape, batch, sparsity pattern and the CPU, so where the compiling machine
is the device (local target) we time every candidate for the layer and take the fastest. For a remote device we
cannot time here, and say so: the rule decides and the record says ``choice = "rule"``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from . import bsr
from .cpu import CpuInfo
from .cuda import GpuInfo
from .kernels import Candidate, candidates, label, make_kernel, nm_pattern

#: The rule takes an N:M kernel only if the weight fills at least this fraction of its n slots per group.
NM_MIN_FILL = 0.75

#: (weight [N, K], batch M, cpu) -> (candidate, info for the layer record)
Chooser = Callable[[np.ndarray, int, CpuInfo], "tuple[Candidate, dict]"]


def rule_chooser(sparse_min: float = 0.5) -> Chooser:
    """Sparse when at least ``sparse_min`` of the weight is zero, else dense; N:M weights get the N:M kernel.

    Sparse means BSR with the best-fitting block (`bsr.choose_block`). A weight with no block
    structure (1x1) that satisfies an N:M pattern, with most of its n slots per group filled, gets
    the N:M kernel whatever ``sparse_min`` says: the pattern is what it was pruned for, and the
    kernel beats dense at 50 % zeros where CSR's indices cost more than they save.
    """

    def choose(weight: np.ndarray, m: int, cpu: CpuInfo | GpuInfo) -> tuple[Candidate, dict]:
        density = bsr.density(weight)
        block = bsr.choose_block(weight) if density < 1.0 else None
        # (no N:M kernel on CUDA: such a weight takes the BSR/dense rule there)
        pattern = nm_pattern(weight) if block == (1, 1) and not isinstance(cpu, GpuInfo) else None
        if pattern is not None and density >= NM_MIN_FILL * pattern[0] / pattern[1]:
            return ("nm", pattern), {"choice": "rule", "rule": f"{pattern[0]}:{pattern[1]} structured"}
        if 1.0 - density >= sparse_min:
            return ("bsr", block), {"choice": "rule", "rule": f"zeros >= {sparse_min:g}"}
        return ("dense", None), {"choice": "rule", "rule": f"zeros < {sparse_min:g}"}

    return choose


class MeasuredChooser:
    """Times each candidate kernel for a layer on this machine and keeps the fastest.

    Timings are cached in a JSON table keyed by target, batch, the weight's bytes and the kernels' source
    (``fingerprint``), so re-building the same variant does not re-time it.
    """

    def __init__(self, target, *, cache_file: Path | None = None, fingerprint: str = "", repeat: int = 9,
                 min_repeat_ms: int = 2):
        self.target = target
        self.cache_file = Path(cache_file) if cache_file else None
        self.fingerprint = fingerprint
        self.repeat = repeat
        self.min_repeat_ms = min_repeat_ms
        self._table = self._load()

    def _load(self) -> dict:
        if self.cache_file and self.cache_file.is_file():
            try:
                return json.loads(self.cache_file.read_text())
            except ValueError:
                return {}  # a torn write: re-time rather than trust it
        return {}

    def _save(self) -> None:
        if self.cache_file:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._table, indent=0))
            tmp.replace(self.cache_file)

    def _key(self, weight: np.ndarray, m: int) -> str:
        digest = hashlib.sha256(self.fingerprint.encode())
        digest.update(str(self.target).encode())
        digest.update(f"{m}:{weight.shape}".encode())
        digest.update(np.ascontiguousarray(weight).tobytes())
        return digest.hexdigest()

    def time_us(self, candidate: Candidate, weight: np.ndarray, m: int, cpu: CpuInfo) -> float:
        """Median µs of one call of ``candidate``'s kernel on random input (TVM's time_evaluator)."""
        import tvm

        impl = make_kernel(candidate, weight, m, cpu)
        lib = tvm.compile(impl.func.with_attr("global_symbol", impl.name), target=self.target)
        dev = tvm.cpu(0)
        x = np.random.default_rng(0).standard_normal((m, weight.shape[1])).astype(np.float32)
        args = [tvm.runtime.tensor(a, dev) for a in (x, *impl.consts)]
        args.append(tvm.runtime.tensor(np.zeros((m, weight.shape[0]), np.float32), dev))
        timer = lib.jit().time_evaluator(impl.name, dev, number=1, repeat=self.repeat, min_repeat_ms=self.min_repeat_ms)
        return float(np.median(timer(*args).results)) * 1e6

    def __call__(self, weight: np.ndarray, m: int, cpu: CpuInfo | GpuInfo) -> tuple[Candidate, dict]:
        if isinstance(cpu, GpuInfo):  # the timing harness here runs CPU kernels only
            return rule_chooser()(weight, m, cpu)
        key = self._key(weight, m)
        timings = self._table.get(key)
        cached = timings is not None
        if not cached:
            timings = {label(c): self.time_us(c, weight, m, cpu) for c in candidates(weight)}
            self._table[key] = timings
            self._save()
        by_label = {label(c): c for c in candidates(weight)}
        best = min((t, name) for name, t in timings.items() if name in by_label)[1]
        return by_label[best], {"choice": "measured", "alternatives_us": timings, "cached": cached}
