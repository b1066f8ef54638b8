"""Models in formats other languages load: ONNX (:mod:`streamlearn.export.onnx`)."""
