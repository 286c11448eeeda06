"""What every backend shares without torch: the Session interface and the ExportContext a backend's ``export``
receives.

A backend module (onnx, tensorrt, openvino, coreml) provides ``export(model, ctx: ExportContext) -> list[str]``
(writes files into ``ctx.workdir`` and returns their names) and a ``Session`` class that runs the artifact and
returns a :class:`~biformer_edge.contract.RunResult`. Sessions import no torch, so an artifact runs on a device that
has none. Backends know graphs and runtimes, not quantization: an INT8 export gets a model that is already
fake-quantized, and the exporter has quantization check and report the graph the backend wrote.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import RunResult


class Session:
    """Runs one artifact. ``run`` takes a float32 NCHW batch of the artifact's input shape."""

    backend: str = "?"
    device: str = "cpu"

    def run(self, x: np.ndarray) -> RunResult:
        raise NotImplementedError


@dataclass
class ExportContext:
    """What a backend's ``export`` gets: where to write, what to build. ``workdir`` is a temporary directory that the
    exporter renames into place only after every step (export, checks, parity) succeeded."""

    workdir: Path
    target: str                                  # jetson | tensorrt | openvino | coreml | onnx
    precision: str                               # fp32 | fp16 | int8
    input_shape: tuple[int, int, int, int]       # (N, 3, H, W), static
    opset: int = 17
    profile: dict = field(default_factory=dict)  # the target's TOML profile (export/<target>.toml)
    options: dict = field(default_factory=dict)  # target-specific CLI options (dla_core, ios, weights_8bit, build)
    log: Callable = print                        # progress messages: log("...")
    checks: dict = field(default_factory=dict)   # structural checks: name -> {"ok": bool, "summary": str}
    routing: str = "qar"                         # INT8: qar keeps the router island FP32, naive quantizes into it
    # INT8 exports whose runtime calibrates activations itself (Core ML W8A8 on a Mac): the calibration batches
    # (B, N, 3, H, W), rendered or read on first call. None: the export has no calibration data.
    calibration: Callable[[], np.ndarray] | None = None
