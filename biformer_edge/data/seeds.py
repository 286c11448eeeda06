"""Which synthetic scenes each part of the project renders: one table of scene sets (training, held-out, calibration,
parity, benchmarks), so no two of them share a scene. Scene ``i`` of a set is
``render_scene(scene_seed(base, start + i))`` (``biformer_edge.data.synthetic``). No numpy, no torch."""
from __future__ import annotations

from typing import NamedTuple

#: Item ``i`` of a dataset with base seed ``s`` renders ``render_scene(s * SEED_STRIDE + i)``.
SEED_STRIDE = 1_000_003


def scene_seed(base_seed: int, index: int) -> int:
    """Seed of item ``index`` of a dataset with ``base_seed``; sets with different base seeds do not overlap
    while ``n < SEED_STRIDE``."""
    if base_seed < 0 or index < 0:
        raise ValueError(f"seeds must be non-negative, got base_seed={base_seed} index={index}")
    return int(base_seed) * SEED_STRIDE + int(index)


class SceneSet(NamedTuple):
    """Scene ``i`` of the set is ``render_scene(scene_seed(base, start + i))``."""
    base: int
    start: int = 0


#: Every set of synthetic scenes the project renders. Each has its own ``scene_seed`` base but one, so no two overlap
#: while they hold fewer than ``SEED_STRIDE`` scenes (tests/test_synthetic.py checks it for the sizes the code uses).
#: Read it through :func:`scene_set`, or ``SCENE_SETS[name].base`` where the base is an option a user may change.
SCENE_SETS: dict[str, SceneSet] = {
    "demo_train": SceneSet(0),       # train_demo --seed: biformer_seg_demo's training stream (steps x batch scenes)
    "demo_margin": SceneSet(777),    # train_demo --stage margin: the routing-margin fine-tune's fresh scenes
    "demo_val": SceneSet(9_000),     # train_demo's held-out mIoU (--val-scenes)
    "calibration": SceneSet(7),      # the INT8 calibration recipes' default seed (calibration/default.toml)
    "qat_train": SceneSet(11),       # biformer-qat without --data: training scenes ...
    "qat_val": SceneSet(13),         # ... and its held-out ones
    "parity": SceneSet(17),          # parity's default inputs (and the benchmarks that measure on them)
    # The benchmarks' held-out scenes (int8_routing.py, qar_ptq_search.py): the raw seeds 50,000.. that their
    # documented figures were measured on, i.e. the demo training base past the 32,000 scenes its default run draws.
    # A demo training run of more than 50,000 scenes (6,250 steps at batch 8) would reach them.
    "held_out": SceneSet(0, 50_000),
}


def scene_set(name: str, n: int) -> list[int]:
    """The seeds of the first ``n`` scenes of the set ``name`` of :data:`SCENE_SETS`."""
    base, start = SCENE_SETS[name]
    return [scene_seed(base, start + i) for i in range(n)]
