"""The torch side of exporting: the wrapper every exporter traces (logits plus each BRA block's top-k indices) and
the FP32 PyTorch run every backend is compared against."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.bra import BiLevelRoutingAttention
from .base import OUTPUT_NAME, ROUTING_PREFIX, RunResult, Session


def bra_blocks(model: nn.Module) -> list[BiLevelRoutingAttention]:
    return [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]


class RoutingOutputs(nn.Module):
    """Wraps a model so that its forward also returns every BRA block's top-k indices.

    Exported graphs carry these as extra outputs (a few hundred int64s), so routing agreement is measured on the
    deployed artifact itself, not on a re-run of PyTorch. With ``affinities`` the region affinities of each router
    are kept on ``self.affinities`` after a forward (the reference run stores them; exports never carry them).
    """

    def __init__(self, model: nn.Module, affinities: bool = False):
        super().__init__()
        self.model = model
        self.blocks = bra_blocks(model)
        self.keep_affinities = affinities
        self.affinities: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor):
        for block in self.blocks:
            block.record_routing = True
            block.router.record = self.keep_affinities
        try:
            out = self.model(x)
            self.affinities = [b.router.last_affinity for b in self.blocks] if self.keep_affinities else []
            return (out, *[b.last_routing for b in self.blocks])
        finally:
            for block in self.blocks:
                block.record_routing = False
                block.router.record = False
                block.router.last_affinity = None

    def output_names(self) -> list[str]:
        return [OUTPUT_NAME] + [f"{ROUTING_PREFIX}{i}" for i in range(len(self.blocks))]


def run_torch(model: nn.Module, x: np.ndarray | torch.Tensor, affinities: bool = False) -> RunResult:
    """The PyTorch run every backend is compared against (the model's own dtype and device). With ``affinities`` the
    result also has ``affinity`` (one (N, R, R) float32 array per block)."""
    p = next(model.parameters())
    xt = torch.as_tensor(np.asarray(x)).to(device=p.device, dtype=p.dtype)
    wrapper = RoutingOutputs(model, affinities=affinities)
    with torch.no_grad():
        out, *routing = wrapper(xt)
    return RunResult(out.float().cpu().numpy(), [r.cpu().numpy().astype(np.int64) for r in routing],
                     [a.float().cpu().numpy() for a in wrapper.affinities])


class TorchSession(Session):
    backend = "torch"

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.device = str(next(model.parameters()).device)

    def run(self, x: np.ndarray) -> RunResult:
        return run_torch(self.model, x)
