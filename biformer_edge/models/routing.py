"""Routing instrumentation: what BRA's routers chose, for the tools that measure or train it.

One context manager, :func:`recording`, switches the routers' flags (keep the top-k indices, keep the affinities, let
gradients reach q/k) and puts them back as they were; :class:`RoutingOutputs` (the wrapper every exporter traces, so
graphs output each block's top-k indices), :func:`run_torch` (the FP32 reference run), QAT and
:class:`~.routing_margin.RoutingMargin` all use it.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..contract import RunResult, output_names
from .bra import BiLevelRoutingAttention


def bra_blocks(model: nn.Module) -> list[BiLevelRoutingAttention]:
    return [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]


@contextlib.contextmanager
def recording(blocks: list[BiLevelRoutingAttention], indices: bool = False, affinities: bool = False,
              gradients: bool = False):
    """Inside: each block keeps its top-k indices (``last_routing``) when ``indices``, each router its (N, R, R)
    affinities (``router.last_affinity``) when ``affinities``, and the routing loss reaches q/k when ``gradients``.
    On exit every flag is as it was and the recorded tensors are dropped (nothing leaks into export or eval)."""
    saved = [(b.record_routing, b.router.record, b.routing_gradients) for b in blocks]
    for block in blocks:
        block.record_routing = block.record_routing or indices
        block.router.record = block.router.record or affinities
        block.routing_gradients = block.routing_gradients or gradients
    try:
        yield blocks
    finally:
        for block, (kept, record, grads) in zip(blocks, saved):
            block.record_routing, block.router.record, block.routing_gradients = kept, record, grads
            if not kept:
                block.last_routing = None
            if not record:
                block.router.last_affinity = None


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
        with recording(self.blocks, indices=True, affinities=self.keep_affinities):
            out = self.model(x)
            self.affinities = [b.router.last_affinity for b in self.blocks] if self.keep_affinities else []
            return (out, *[b.last_routing for b in self.blocks])

    def output_names(self) -> list[str]:
        return output_names(len(self.blocks))


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
