"""The kernel plan: which of our kernels each layer gets, and the device measurements (or the rule) behind it.

Produced by the selection step (:mod:`.select`), consumed by the compile step (which never times anything), and
stored with every build (``build.json``) and result row. Pure data: no TVM import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

Candidate = tuple  # ("dense", None) | ("bsr", (r, c)) | ("nm", (n, m)), as in schedules.kernels


@dataclass(frozen=True)
class LayerPlan:
    """The kernel chosen for one layer (a weight pattern at one batch).

    Attributes:
        key: ``schedules.choose.layer_key``: the weight's [N, K] shape, the batch M and its nonzero positions.
        shape: [N, K] of the weight.
        batch: M, rows of the matmul (batch × positions for convolutions).
        kernel: the chosen candidate's label (``dense``, ``bsr 16x1``, ``nm 2:4``).
        candidate: the chosen candidate as ``(kind, block)``.
        choice: ``"measured"`` (fastest of the candidates timed on the device) or ``"rule"``.
        times_us: for ``"measured"``: median µs of one call of every candidate timed on the device, by label.
        rule: for ``"rule"``: the rule that decided and why no measurement was used.
        measured_on: for ``"measured"``: the device the times came from (see :meth:`KernelPlan.measured_on`).
        cached: the times were measured in an earlier run on a device with the same fingerprint.
    """

    key: str
    shape: tuple[int, int]
    batch: int
    kernel: str
    candidate: Candidate
    choice: str
    times_us: dict | None = None
    rule: str | None = None
    measured_on: str | None = None
    cached: bool = False

    def info(self) -> dict:
        """What the compile step writes into the layer's record (``schedules.rewrite.LayerRecord`` fields)."""
        if self.choice == "measured":
            return {"choice": "measured", "alternatives_us": dict(self.times_us or {}),
                    "measured_on": self.measured_on, "cached": self.cached}
        return {"choice": "rule", "rule": self.rule}

    def to_json(self) -> dict:
        data = asdict(self)
        data["candidate"] = [self.candidate[0], list(self.candidate[1]) if self.candidate[1] else None]
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "LayerPlan":
        kind, block = data["candidate"]
        return cls(**{**data, "candidate": (kind, tuple(block) if block else None), "shape": tuple(data["shape"])})


@dataclass(frozen=True)
class KernelPlan:
    """Per-layer kernel choices for one device.

    Attributes:
        device: the device as the results name it (``user@host:port``, ``local``).
        fingerprint: what decides kernel timings on that device, as its board-side code reported it (CPU model,
            machine, cores, TVM version, threads), plus the target and the kernels' source hash.
        layers: one :class:`LayerPlan` per distinct layer.
        note: why the rule decided, when the device could not be measured ("" otherwise).
    """

    device: str
    fingerprint: dict = field(default_factory=dict)
    layers: tuple[LayerPlan, ...] = ()
    note: str = ""

    @property
    def fingerprint_id(self) -> str:
        """Short hash of :attr:`fingerprint` (names the device's timing cache)."""
        return fingerprint_id(self.fingerprint)

    def table(self) -> dict:
        """``{layer_key: (candidate, info)}`` for ``schedules.choose.PlanChooser``."""
        return {layer.key: (layer.candidate, layer.info()) for layer in self.layers}

    def subset(self, keys) -> "KernelPlan":
        """The plan restricted to the layers ``keys`` (one build's layers), in that order."""
        by_key = {layer.key: layer for layer in self.layers}
        return replace(self, layers=tuple(by_key[k] for k in dict.fromkeys(keys) if k in by_key))

    def choice_digest(self) -> str:
        """Hash of the choices alone (not the times): what a compiled artifact depends on."""
        material = sorted((layer.key, layer.kernel) for layer in self.layers)
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]

    def to_json(self) -> dict:
        return {"device": self.device, "fingerprint": self.fingerprint, "note": self.note,
                "layers": [layer.to_json() for layer in self.layers]}

    @classmethod
    def from_json(cls, data: dict) -> "KernelPlan":
        return cls(device=data.get("device", ""), fingerprint=data.get("fingerprint") or {},
                   layers=tuple(LayerPlan.from_json(x) for x in data.get("layers", ())), note=data.get("note", ""))


def fingerprint_id(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def describe_device(device: str, fingerprint: dict) -> str:
    """``pi@board:22 (aarch64, Cortex-A76, 4 threads)``: how a plan's ``measured_on`` names the device."""
    parts = [fingerprint.get("machine"), fingerprint.get("cpu_model")]
    threads = fingerprint.get("tvm_num_threads") or fingerprint.get("cores")
    if threads:
        parts.append(f"{threads} threads")
    inside = ", ".join(str(p) for p in parts if p)
    return f"{device} ({inside})" if inside else device


def forced_plan(req, pick, why: str, device: str = "") -> KernelPlan:
    """A plan for ``req``'s layers (a ``BuildRequest``) where ``pick(weight)`` names each layer's candidate, recorded
    as a rule saying ``why``: for builds whose kernels are decided by what they are for, not by timing (the dense
    reference of an as-is model, the GPU check's own kernels)."""
    from schedules.kernels import label

    from .tvm_adapter import survey

    layers = []
    for key, weight, m, _, _ in survey(req):
        candidate = pick(weight)
        layers.append(LayerPlan(key, tuple(weight.shape), m, label(candidate), candidate, "rule", rule=why))
    return KernelPlan(device=device, layers=tuple(layers))
