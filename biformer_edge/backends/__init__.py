"""One package per backend: ``tensorrt``, ``coreml``, ``openvino``, ``onnx`` (onnxruntime) and ``pytorch`` (the FP32
model itself). Each package's ``__init__`` is its descriptor (a :class:`~.base.Backend`: the runtime, the files its
export writes, its export options, install hint, availability check), importing neither torch nor a runtime;
``export.py`` writes the artifact (imports torch inside), ``session.py`` holds the torch-free Session class, and
``rules.py``, where there is one, what the runtime accepts. :data:`BACKENDS` lists them, most specific runtime first;
``biformer_edge.targets`` assembles targets and runtimes from it and loads the export and session modules by name.
"""
from .base import PRECISIONS, Backend, ExportContext, Option, Session
from .coreml import COREML
from .onnx import ONNX
from .openvino import OPENVINO
from .pytorch import PYTORCH
from .tensorrt import TENSORRT

BACKENDS: tuple[Backend, ...] = (TENSORRT, COREML, OPENVINO, ONNX, PYTORCH)

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "ExportContext", "Option", "Session"]
