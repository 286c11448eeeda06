"""The synthetic scenes as a PyTorch dataset (training and evaluation of ``biformer_seg_demo``)."""
from __future__ import annotations

import numpy as np
import torch

from ..preprocess import normalize
from .seeds import SEED_STRIDE, scene_seed
from .synthetic import Size, check_size, render_scene


class SyntheticScenes(torch.utils.data.Dataset):
    """Map-style dataset of ``n`` still scenes: item ``i`` is ``(image float32 3xHxW normalised with MEAN/STD,
    label int64 HxW)`` of ``render_scene(scene_seed(seed, i), size)``. Use different ``seed`` values for train / val
    / test."""

    def __init__(self, n: int, size: Size = (256, 256), seed: int = 0):
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if int(n) >= SEED_STRIDE:
            raise ValueError(f"n must be < {SEED_STRIDE} so sets with different seeds do not overlap")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.n, self.size, self.seed = int(n), check_size(size), int(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        i = int(index)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {index} out of range for {self.n} scenes")
        image, label = render_scene(scene_seed(self.seed, i), self.size)
        return torch.from_numpy(normalize(image)[0]), torch.from_numpy(label.astype(np.int64))

    def __repr__(self) -> str:
        return f"SyntheticScenes(n={self.n}, size={self.size}, seed={self.seed})"
