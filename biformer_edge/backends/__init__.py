"""One module per runtime: ``onnx`` (onnxruntime), ``tensorrt``, ``openvino``, ``coreml``, ``pytorch`` (the FP32 model
itself); each has a Session class, and those that write an artifact an ``export``. Which target uses which module,
and which runtime can run here, is ``biformer_edge.targets``'s to say. Importing this package imports neither torch
nor any runtime."""
from .base import ExportContext, Session

__all__ = ["ExportContext", "Session"]
