"""The compile room: ONNX variant + target -> exported artifact. All TVM compiler calls live in :mod:`.tvm_adapter`."""

from .cache import ArtifactCache, BuildRequest, BuildResult

__all__ = ["ArtifactCache", "BuildRequest", "BuildResult"]
