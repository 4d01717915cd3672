"""Models: ONNX import and validation (:mod:`.onnx_io`) and the built-in zoo (:mod:`.zoo`)."""
