"""Training / demo data: deterministic synthetic scenes and clips (``biformer_edge.data.synthetic``)."""
from .synthetic import (CLASSES, MEAN, NUM_CLASSES, PALETTE, SEED_STRIDE, STD, SceneClip, SyntheticScenes, colorize,
                        denormalize, draw_legend, normalize, overlay, render_clip, render_scene, scene_seed)

__all__ = [
    "CLASSES", "NUM_CLASSES", "PALETTE", "MEAN", "STD", "SEED_STRIDE",
    "render_scene", "SceneClip", "render_clip", "scene_seed", "SyntheticScenes",
    "normalize", "denormalize", "colorize", "overlay", "draw_legend",
]

