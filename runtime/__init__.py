"""Inference runtime: ONNX / ONNX Runtime / TensorRT export and one `Classifier` over every back end.

Never imports `compressor`: a serving image needs no training stack.
"""
from runtime.backends import Backend, BackendUnavailable
from runtime.classifier import Classifier, ModelDirError

__all__ = ["Backend", "BackendUnavailable", "Classifier", "ModelDirError"]
