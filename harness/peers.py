"""Peer runtimes: the runtime a user already has, run on the same device, model, batch and timing rules as our
builds, so every report can say whether a sparse build beats the best dense runtime and not only our dense build.

Light on purpose (no onnxruntime import here): the config, the benchmark loop and the report all read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """A dense runtime run by the board's runner in place of a TVM artifact.

    ``name`` is the row's ``method`` and the middle of its variant key (``model/<name>/0@bN``); ``module`` is what
    the device's Python must import (the runtime probe asks for it); ``engine`` is the runner job's ``"engine"``;
    ``suffix`` is the file name extension the model is uploaded with.
    """

    name: str
    module: str
    engine: str
    suffix: str

    def unavailable(self, probe: dict) -> str | None:
        """Why the device cannot run this peer (from :func:`harness.device.preflight.check_runtime`'s report),
        or ``None`` when it can."""
        if probe.get(self.module):
            return None
        error = probe.get(f"{self.module}_error", "")
        return "not installed" if not error or "No module named" in error else error


#: peers by name: the one registry the config, the benchmark loop and the report consult
PEERS: dict[str, Peer] = {"onnxruntime": Peer("onnxruntime", module="onnxruntime", engine="onnxruntime",
                                              suffix=".onnx")}

#: the dense model compiled by TVM's own default pipeline (no kernels of ours; on CUDA, TVM's dlight GPU schedules):
#: a baseline row next to our builds, the dense build a sparse one must beat on a GPU. Not a peer runtime -- the
#: board's runner runs it as any TVM artifact -- but reported as one more dense runtime.
TVM_DEFAULT = "tvm-default"

#: what ``[compare].peers`` may name: the peer runtimes and TVM's default build
BASELINES: tuple[str, ...] = (*PEERS, TVM_DEFAULT)

#: the ``method`` of the other dense runtimes' rows, for the report (which never needs more than the names)
PEER_METHODS = frozenset(BASELINES)
