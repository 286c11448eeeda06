"""The INT8 settings of one export, as the exporter hands them to quantization (torch-free: the CLI reads the
defaults without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAX_ROUTING_REGRET = 0.002  # QAR's default target: calibration routing regret after the keep-float search
ROUTINGS = ("qar", "naive")


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


def check_available(kind: str | None) -> None:
    """The one place that decides whether an INT8 export can run here (backends trust what they are given):
    ``qdq`` targets calibrate explicit Q/DQ with NVIDIA ModelOpt, which must be installed; ``weights`` targets
    quantize with their own converter."""
    import importlib.util

    from ..errors import UserError
    if kind == "qdq" and importlib.util.find_spec("modelopt") is None:
        raise UserError("--int8 needs NVIDIA ModelOpt for its Q/DQ quantization: pip install 'biformer-edge[int8]'")
