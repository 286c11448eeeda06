"""biformer-edge: BiFormer to TensorRT/Jetson, OpenVINO, Core ML and ONNX, with measured drift.

    import biformer_edge as be
    model = be.create_model("biformer_tiny", checkpoint="biformer_tiny_best.pth")
    art = be.export(model, target="jetson", precision="fp16", output="artifacts/x")
    rep = be.check_parity(art)
    sess = be.load(art)

Names are imported on first use, so ``import biformer_edge`` alone needs no torch: loading and re-checking an
artifact on a device needs only numpy and the runtime (``create_model`` and ``export`` import torch).
"""
__version__ = "0.1.0"

from .errors import UserError

_LAZY = {"export": ".api", "load": ".api", "create_model": ".models", "list_models": ".models",
         "assert_parity": ".parity", "check_parity": ".parity"}

__all__ = ["UserError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
