"""Routing-robust training: a margin term that makes BRA's top-k routing decisive, so INT8 noise cannot flip it.

Most routing decisions of a trained BiFormer are near-ties (the k-th and (k+1)-th region affinities differ by
0.3-1.9 % of the query's affinity spread, median per block), and any numeric noise swaps them. This term asks every
query for a gap of at least ``margin`` (relative to its own spread) between its k-th and (k+1)-th region: a hinge
on the model's own affinities, so it needs no labels and no teacher, and can be added to any fine-tuning loss::

    from biformer_edge.models.routing_margin import RoutingMargin
    with RoutingMargin(model, margin=0.05) as routing:
        loss = task_loss(model(x), y) + 0.1 * routing.loss()

``biformer-qat --routing-margin W`` adds the same hinge on the quantized student's affinities during QAT.

Inside the block, routing is differentiable (the routers' q/k are not detached) and each router keeps its
affinities of the latest forward; both are reset on exit, so evaluation and export are unaffected.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .routing import bra_blocks, recording

DEFAULT_MARGIN = 0.05   # the relative k-th/(k+1)-th gap asked for (train_demo --margin, biformer-qat --margin)


def margin_hinge(affinity: torch.Tensor, k: int, margin: float) -> torch.Tensor:
    """(N, R, R) affinities -> mean over queries of relu(margin - (a_k - a_{k+1}) / spread)."""
    if affinity.shape[-1] <= k:
        return affinity.new_zeros(())
    a = affinity.float()
    top = a.topk(k + 1, dim=-1).values                                  # (N, R, k+1), sorted
    spread = (top[..., 0] - a.amin(-1)).clamp_min(1e-6)
    return F.relu(margin - (top[..., k - 1] - top[..., k]) / spread).mean()


def blocks_margin_hinge(affinities: list[torch.Tensor], topk: list[int], margin: float) -> torch.Tensor:
    """The mean :func:`margin_hinge` over blocks: one (N, R, R) affinity tensor and its top-k per block."""
    return torch.stack([margin_hinge(a, k, margin) for a, k in zip(affinities, topk)]).mean()


class RoutingMargin:
    """Context manager: records every BRA router's affinities with gradients; ``loss()`` is the mean margin hinge
    over blocks for the latest forward."""

    def __init__(self, model: nn.Module, margin: float = DEFAULT_MARGIN):
        if not 0 < margin < 1:
            raise ValueError(f"margin must be in (0, 1), got {margin}")
        self.blocks = bra_blocks(model)
        self.margin = margin
        self._recording = None

    def __enter__(self):
        self._recording = recording(self.blocks, affinities=True, gradients=True)
        self._recording.__enter__()
        return self

    def loss(self) -> torch.Tensor:
        recorded = [b for b in self.blocks if b.router.last_affinity is not None]
        if not recorded:
            raise RuntimeError("no routing affinities recorded: call loss() after a forward inside the block")
        return blocks_margin_hinge([b.router.last_affinity for b in recorded], [b.topk for b in recorded],
                                   self.margin)

    def __exit__(self, *exc):
        self._recording.__exit__(*exc)
        return False
