"""Training / demo data: deterministic synthetic scenes and clips (numpy + OpenCV), and which scenes each part of the
project renders (``seeds``: one table of scene sets). ``SyntheticScenes``, the PyTorch dataset over them, lives in
``biformer_edge.data.dataset`` (imported on first use, so this package needs no torch). Drawing labels on images
(overlay, colorize, legends) is ``biformer_edge.video.draw``."""
from .seeds import SCENE_SETS, SEED_STRIDE, SceneSet, scene_seed, scene_set
from .synthetic import (
    CLASSES,
    MEAN,
    NUM_CLASSES,
    PALETTE,
    STD,
    SceneClip,
    denormalize,
    normalize,
    render_clip,
    render_scene,
)

__all__ = [
    "CLASSES", "NUM_CLASSES", "PALETTE", "MEAN", "STD", "SEED_STRIDE",
    "render_scene", "SceneClip", "render_clip", "scene_seed", "SceneSet", "SCENE_SETS", "scene_set", "SyntheticScenes",
    "normalize", "denormalize",
]


def __getattr__(name):
    if name == "SyntheticScenes":
        from .dataset import SyntheticScenes
        return SyntheticScenes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
