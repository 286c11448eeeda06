"""Runtimes behind one Session interface. Each module imports its runtime lazily, so a missing optional runtime
only matters when that backend is used (and then gives a one-line UserError)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import UserError
from .base import RunResult, Session, TorchSession, run_torch  # noqa: F401

# target -> module that exports it
TARGET_BACKENDS = {"jetson": "tensorrt", "tensorrt": "tensorrt", "openvino": "openvino", "coreml": "coreml",
                   "onnx": "onnx"}
# session name -> (module, class, file it runs, runtime import name)
SESSIONS = {
    "onnxruntime": ("onnx", "OnnxSession", "model.onnx", "onnxruntime"),
    "tensorrt": ("tensorrt", "TensorRTSession", "model.engine", "tensorrt"),
    "openvino": ("openvino", "OpenVINOSession", "model.xml", "openvino"),
    "coreml": ("coreml", "CoreMLSession", "model.mlpackage", "coremltools"),
}


def backend_module(target: str):
    return importlib.import_module(f"{__name__}.{TARGET_BACKENDS[target]}")


def runtime_unavailable(name: str) -> str | None:
    """Why session ``name`` cannot run on this machine at all (whatever the artifact), or None."""
    runtime = SESSIONS[name][3]
    if name == "coreml" and sys.platform != "darwin":
        return "Core ML runs only on macOS (the program was checked structurally here)"
    if importlib.util.find_spec(runtime) is None:
        return f"{runtime} is not installed"
    if name == "tensorrt":
        import torch
        if not torch.cuda.is_available():
            return "no CUDA GPU"
    return None


def unavailable_reason(name: str, artifact_dir: Path) -> str | None:
    """Why session ``name`` cannot run this artifact here, or None when it can."""
    filename = SESSIONS[name][2]
    if not (artifact_dir / filename).exists():
        if name == "tensorrt":
            return "no model.engine: build it on the device with ./build_engine.sh"
        return f"no {filename} in the artifact"
    return runtime_unavailable(name)


# Most specific runtime first: the one the artifact was made for, where it can run.
AUTO_ORDER = ("tensorrt", "coreml", "openvino", "onnxruntime")


def first_runnable(artifact_dir: Path) -> tuple[str | None, dict[str, str]]:
    """The first session of AUTO_ORDER that can run the artifact here, and why each one before it cannot."""
    reasons = {}
    for name in AUTO_ORDER:
        reason = unavailable_reason(name, Path(artifact_dir))
        if reason is None:
            return name, reasons
        reasons[name] = reason
    return None, reasons


def open_session(name: str, artifact_dir: str | Path, manifest: dict | None = None, **options) -> Session:
    if name not in SESSIONS:
        raise UserError(f"unknown backend '{name}': choose from {', '.join(SESSIONS)}")
    artifact_dir = Path(artifact_dir)
    reason = unavailable_reason(name, artifact_dir)
    if reason:
        raise UserError(f"cannot run {name} on {artifact_dir}: {reason}")
    module, cls, filename, _ = SESSIONS[name]
    session_cls = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    if name == "onnxruntime":
        return session_cls(artifact_dir / filename, **options)
    return session_cls(artifact_dir, manifest, **options)
