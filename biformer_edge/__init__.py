"""biformer-edge: BiFormer to TensorRT/Jetson, OpenVINO, Core ML and ONNX, with measured drift."""
__version__ = "0.1.0"

from .errors import UserError
from .models import create_model, list_models

__all__ = ["UserError", "create_model", "list_models", "__version__"]
