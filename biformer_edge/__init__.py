"""biformer-edge: BiFormer to TensorRT/Jetson, OpenVINO, Core ML and ONNX, with measured drift.

    import biformer_edge as be
    model = be.create_model("biformer_tiny", checkpoint="biformer_tiny_best.pth")
    art = be.export(model, target="jetson", precision="fp16", output="artifacts/x")
    rep = be.check_parity(art)
    sess = be.load(art)
"""
__version__ = "0.1.0"

from .api import export, load
from .errors import UserError
from .models import create_model, list_models
from .parity import assert_parity, check_parity

__all__ = ["UserError", "assert_parity", "check_parity", "create_model", "export", "list_models", "load",
           "__version__"]
