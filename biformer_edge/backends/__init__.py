"""One module per runtime: ``onnx`` (onnxruntime), ``tensorrt``, ``openvino``, ``coreml``; each has ``export`` and a
Session class. Which target uses which module, and which runtime can run here, is ``biformer_edge.targets``'s to say.
Importing this package imports neither torch nor any runtime."""
from .base import ExportContext, QuantSettings, RunResult, Session

__all__ = ["ExportContext", "QuantSettings", "RunResult", "Session"]
