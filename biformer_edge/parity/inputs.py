"""Inputs parity runs on: synthetic scenes by default (deterministic), or the user's images / video (--data, read by
``biformer_edge.data.images``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.images import collect_images
from ..data.seeds import SCENE_SETS, scene_set
from ..data.synthetic import render_scene
from ..memory import check_samples
from ..preprocess import preprocess_all


def parity_inputs(input_shape: tuple[int, int, int, int], data: str | Path | None = None,
                  samples: int = 4) -> tuple[np.ndarray, str]:
    """Batches of the artifact's static shape: (B, N, 3, H, W) float32, and a description of their source."""
    N, _, H, W = input_shape
    n_batches = max(1, -(-samples // N))
    check_samples(n_batches * N, (H, W), 1.25, "--samples")   # the float batches and the decoded uint8 images
    if data is None:
        images = [render_scene(seed, (H, W))[0] for seed in scene_set("parity", n_batches * N)]
        source = f"synthetic scenes scene_seed({SCENE_SETS['parity'].base}, 0..{n_batches * N - 1})"
    else:
        images = collect_images(data, n_batches * N, size=(H, W))
        images = (images * (n_batches * N))[: n_batches * N]  # repeat a short set to fill the static batch
        source = str(data)
    return preprocess_all(images, (H, W)).reshape(n_batches, N, 3, H, W), source
