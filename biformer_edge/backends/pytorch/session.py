"""The PyTorch runtime: a Session over the FP32 model itself (the reference the artifacts are compared against, and
the video demo's side-by-side)."""
from __future__ import annotations

import numpy as np
from torch import nn

from ...contract import RunResult
from ...models.routing import run_torch
from ..base import Session


class TorchSession(Session):
    backend = "torch"

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.device = str(next(model.parameters()).device)

    def run(self, x: np.ndarray) -> RunResult:
        return run_torch(self.model, x)
