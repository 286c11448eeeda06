"""What every backend shares without torch: the Session interface, output naming, and the ExportContext a backend's
``export`` receives.

A backend module (onnx, tensorrt, openvino, coreml) provides ``export(model, ctx: ExportContext) -> list[str]``
(writes files into ``ctx.workdir`` and returns their names) and a ``Session`` class that runs the artifact and
returns numpy arrays. The torch side of exporting (the traced wrapper with routing outputs, the PyTorch session) is
in ``backends/tracing.py``; sessions import no torch, so an artifact runs on a device that has none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INPUT_NAME = "images"
DEFAULT_MAX_ROUTING_REGRET = 0.002  # QAR's default target: calibration routing regret after the keep-float search
OUTPUT_NAME = "logits"
ROUTING_PREFIX = "routing_"  # routing_0 .. routing_{B-1}: top-k region indices (N, R, k) of each BRA block


@dataclass
class RunResult:
    logits: np.ndarray
    routing: list[np.ndarray] = field(default_factory=list)
    affinity: list[np.ndarray] = field(default_factory=list)   # reference runs only: (N, R, R) per block


class Session:
    """Runs one artifact. ``run`` takes a float32 NCHW batch of the artifact's input shape."""

    backend: str = "?"
    device: str = "cpu"

    def run(self, x: np.ndarray) -> RunResult:
        raise NotImplementedError

    @staticmethod
    def split_outputs(names: list[str], values: list[np.ndarray]) -> RunResult:
        by_name = dict(zip(names, values))
        routing = [np.asarray(by_name[n]).astype(np.int64) for n in sorted(
            (n for n in names if n.startswith(ROUTING_PREFIX)), key=lambda n: int(n[len(ROUTING_PREFIX):]))]
        return RunResult(np.asarray(by_name[OUTPUT_NAME]).astype(np.float32), routing)


@dataclass
class QuantSettings:
    """INT8 settings of one export (``precision == "int8"``): calibration sources and sample count, and the routing
    mode: ``qar`` keeps the router island in FP32 (no Q/DQ into TopK) and searches for the fewest layers to keep float
    until the calibration routing regret is at most ``max_routing_regret``; ``naive`` quantizes like any network."""

    calib: list[str] = field(default_factory=list)
    samples: int | None = None
    routing: str = "qar"
    max_routing_regret: float | None = DEFAULT_MAX_ROUTING_REGRET   # QAR's keep-float search target; None: no search
    cpu: str | None = None   # CPU targets: the class the INT8 weights are made for (biformer_edge.cpu); None: a GPU


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
    log: object = print                          # progress messages: log("...")
    checks: dict = field(default_factory=dict)   # structural checks: name -> {"ok": bool, "summary": str}
    quant: QuantSettings | None = None           # set when precision == "int8"
