"""ONNX: the TorchScript exporter at a fixed opset (17 by default), onnxsim and onnx.checker (:mod:`.export`, which also
reads the INT8 facts of a Q/DQ graph), and the onnxruntime Session (:mod:`.session`, torch-free).

Node names carry the module scope (``/model/.../attn/router/TopK``): every op of a BRA router is named
``.../router/...``, the name quantization tools exclude the router island by. This module is the descriptor
:data:`ONNX`: it imports no runtime.
"""
from __future__ import annotations

from ...contract import ONNX_FILE
from ..base import Backend, CPUOptions

ONNX = Backend(
    "onnxruntime", "onnx", package="onnxruntime", install_hint="pip install 'biformer-edge[onnx]'", file=ONNX_FILE,
    session="session.OnnxSession", aliases=("ort", "onnx"), files=(ONNX_FILE,), options=CPUOptions,
    export_packages=("onnx", "onnxsim"))
