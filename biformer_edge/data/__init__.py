"""Training / demo data: deterministic synthetic scenes and clips (numpy + OpenCV). ``SyntheticScenes``, the PyTorch
dataset over them, lives in ``biformer_edge.data.dataset`` (imported on first use, so this package needs no torch).
Drawing labels on images (overlay, colorize, legends) is ``biformer_edge.video.draw``."""
from .synthetic import (
    CLASSES,
    MEAN,
    NUM_CLASSES,
    PALETTE,
    SEED_STRIDE,
    STD,
    SceneClip,
    denormalize,
    normalize,
    render_clip,
    render_scene,
    scene_seed,
)

__all__ = [
    "CLASSES", "NUM_CLASSES", "PALETTE", "MEAN", "STD", "SEED_STRIDE",
    "render_scene", "SceneClip", "render_clip", "scene_seed", "SyntheticScenes",
    "normalize", "denormalize",
]


def __getattr__(name):
    if name == "SyntheticScenes":
        from .dataset import SyntheticScenes
        return SyntheticScenes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
