"""The onnxruntime runtime: a Session over model.onnx (CUDA provider first where present). Imports no torch."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ...contract import ONNX_FILE, RunResult
from ...errors import UserError
from ..base import Session
from . import ONNX


def ort_session_options(threads: int | None = None, config: dict | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    for key, value in (config or {}).items():  # e.g. {"session.intra_op.allow_spinning": "0"}
        opts.add_session_config_entry(key, value)
    return opts


class OnnxSession(Session):
    backend = "onnxruntime"

    def __init__(self, artifact: str | Path, manifest: dict | None = None, threads: int | None = None,
                 providers: list[str] | None = None, config: dict | None = None):
        path = Path(artifact) / ONNX_FILE if Path(artifact).is_dir() else Path(artifact)
        if importlib.util.find_spec("onnxruntime") is None:
            raise UserError(f"onnxruntime is not installed: {ONNX.install_hint}")
        import onnxruntime as ort
        ort.set_default_logger_severity(3)
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
        self.sess = ort.InferenceSession(str(path), ort_session_options(threads, config), providers=providers)
        self.device = "cuda" if self.sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input = self.sess.get_inputs()[0]
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.input_dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32

    def run(self, x: np.ndarray):
        values = self.sess.run(self.output_names, {self.input.name: np.asarray(x, dtype=self.input_dtype)})
        return RunResult.from_outputs(self.output_names, values)
