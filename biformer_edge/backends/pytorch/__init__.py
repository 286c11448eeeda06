"""The PyTorch runtime: a Session over the FP32 model itself (:mod:`.session`: the reference the artifacts are
compared against, and the video demo's side-by-side); it exports nothing. This module is the descriptor
:data:`PYTORCH`: it imports no torch.
"""
from __future__ import annotations

from ..base import Backend

PYTORCH = Backend("torch", "pytorch", package="torch", install_hint="pip install torch", file=None,
                  session="session.TorchSession", aliases=("pytorch",))
