"""What every backend shares: the traced export wrapper and the Session interface.

A backend module (onnx, tensorrt, openvino, coreml, torch) provides
``export(model, art: ExportContext) -> list[str]`` (writes files into ``art.dir``, returns their names) and a
``Session`` class that runs the artifact and returns numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.bra import BiLevelRoutingAttention

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
ROUTING_PREFIX = "routing_"  # routing_0 .. routing_{B-1}: top-k region indices (N, R, k) of each BRA block


def bra_blocks(model: nn.Module) -> list[BiLevelRoutingAttention]:
    return [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]


class RoutingOutputs(nn.Module):
    """Wraps a model so that its forward also returns every BRA block's top-k indices.

    Exported graphs carry these as extra outputs (a few hundred int64s), so routing agreement is measured on the
    deployed artifact itself, not on a re-run of PyTorch.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.blocks = bra_blocks(model)

    def forward(self, x: torch.Tensor):
        for block in self.blocks:
            block.record_routing = True
        try:
            out = self.model(x)
            return (out, *[b.last_routing for b in self.blocks])
        finally:
            for block in self.blocks:
                block.record_routing = False

    def output_names(self) -> list[str]:
        return [OUTPUT_NAME] + [f"{ROUTING_PREFIX}{i}" for i in range(len(self.blocks))]


@dataclass
class RunResult:
    logits: np.ndarray
    routing: list[np.ndarray] = field(default_factory=list)


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


def run_torch(model: nn.Module, x: np.ndarray | torch.Tensor) -> RunResult:
    """The PyTorch run every backend is compared against (the model's own dtype and device)."""
    p = next(model.parameters())
    xt = torch.as_tensor(np.asarray(x)).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        out, *routing = RoutingOutputs(model)(xt)
    return RunResult(out.float().cpu().numpy(), [r.cpu().numpy().astype(np.int64) for r in routing])


class TorchSession(Session):
    backend = "torch"

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.device = str(next(model.parameters()).device)

    def run(self, x: np.ndarray) -> RunResult:
        return run_torch(self.model, x)


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
