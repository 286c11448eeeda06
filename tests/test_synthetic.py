"""Tests for the deterministic synthetic scene / clip generator (biformer_edge.data.synthetic) and the table of scene
sets (biformer_edge.data.seeds)."""
import itertools

import cv2
import numpy as np
import pytest

from biformer_edge.data import (
    CLASSES,
    MEAN,
    NUM_CLASSES,
    PALETTE,
    SCENE_SETS,
    SEED_STRIDE,
    STD,
    SceneClip,
    denormalize,
    normalize,
    render_clip,
    render_scene,
    scene_seed,
    scene_set,
)
from biformer_edge.data import synthetic as syn
from biformer_edge.video.draw import colorize, draw_legend, overlay

SMALL = (128, 128)


def test_constants():
    assert CLASSES[0] == "background" and len(CLASSES) == NUM_CLASSES == 6
    assert PALETTE.shape == (NUM_CLASSES, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE.tolist()}) == NUM_CLASSES  # distinct colours
    assert MEAN.shape == STD.shape == (3,) and MEAN.dtype == STD.dtype == np.float32
    assert 100 < MEAN.mean() < 130  # 0-255 units


@pytest.mark.parametrize("size", [(256, 256), (96, 160), (161, 67)])
def test_shapes_and_dtypes(size):
    image, label = render_scene(11, size)
    assert image.shape == size + (3,) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert label.shape == size and label.dtype == np.uint8


def test_deterministic():
    a_img, a_lab = render_scene(123, SMALL)
    b_img, b_lab = render_scene(123, SMALL)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = render_scene(124, SMALL)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)
    # the generator must not touch (or depend on) numpy's global RNG
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    d_img, _ = render_scene(123, SMALL)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    np.testing.assert_array_equal(a_img, d_img)


def test_clip_deterministic_and_random_access():
    frames = list(SceneClip(5, SMALL, n_frames=12))
    again = SceneClip(5, SMALL, n_frames=12)
    assert len(frames) == len(again) == 12
    for i in (0, 7, 11):
        np.testing.assert_array_equal(frames[i][0], again[i][0])
        np.testing.assert_array_equal(frames[i][1], again[i][1])
    np.testing.assert_array_equal(frames[-1][0], again[-1][0])
    via_fn = list(render_clip(5, 12, SMALL))
    np.testing.assert_array_equal(via_fn[3][0], frames[3][0])
    # per-frame sensor noise: two frames are never identical images
    assert not np.array_equal(frames[0][0], frames[1][0])
    with pytest.raises(IndexError):
        again[12]


def test_labels_in_range_and_every_class_appears():
    seen = np.zeros(NUM_CLASSES, bool)
    for s in range(50):
        _, label = render_scene(s, SMALL)
        assert label.max() < NUM_CLASSES
        assert (label > 0).any(), f"scene {s} has no visible object"
        seen[np.unique(label)] = True
    assert seen.all(), [c for c, ok in zip(CLASSES, seen) if not ok]


def _boundary_gradient_ratio(image, label):
    """Mean image gradient on label boundaries / elsewhere: high when labels line up with drawn edges."""
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mag = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
    b = np.zeros(label.shape, bool)
    dx, dy = label[:, 1:] != label[:, :-1], label[1:] != label[:-1]
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    b[1:] |= dy
    b[:-1] |= dy
    return mag[b].mean() / mag[~b].mean()


def test_label_boundaries_line_up_with_image_edges():
    true, shifted = [], []
    for s in range(20):
        image, label = render_scene(s, SMALL)
        true.append(_boundary_gradient_ratio(image, label))
        shifted.append(_boundary_gradient_ratio(image, np.roll(label, (4, 3), (0, 1))))
    assert all(t > sh for t, sh in zip(true, shifted))
    assert np.mean(true) > 3.0 and np.mean(true) > 1.8 * np.mean(shifted)


def _two_object_scene(objects):
    h, w = SMALL
    bg = np.full((h, w, 3), 90.0, np.float32)
    bg[:, : w // 2] = 140.0
    cam = syn._Camera(wb=np.ones(3, np.float32), grad=0.3, gamma=1.2, noise=4.0)  # no shadow, no blur
    return syn._Scene(size=SMALL, background=bg, margin=0, pan=(0.0, 0.0, 0.0, 0.0), objects=objects, camera=cam)


def _obj(cls, x, y, r, **kw):
    o = syn._Object(cls=cls, x=x, y=y, radius=r, angle=0.3, aspect=kw.pop("aspect", 0.8),
                    color1=np.array([200, 40, 40], np.float32), color2=np.array([40, 40, 200], np.float32), **kw)
    return o


def test_occlusion_order_and_image_label_consistency():
    box = _obj(syn.BOX, 50, 60, 30, freq=4.0)
    disc = _obj(syn.DISC, 80, 60, 28, freq=2.0)
    both = syn._render(_two_object_scene([box, disc]), 0.0, np.random.default_rng(0), instances=True)
    only_box = syn._render(_two_object_scene([box]), 0.0, np.random.default_rng(0))
    only_disc = syn._render(_two_object_scene([disc]), 0.0, np.random.default_rng(0))
    empty = syn._render(_two_object_scene([]), 0.0, np.random.default_rng(0))
    image, label, inst = both
    # the two shapes overlap, and the later one (disc) wins the overlap
    overlap = (only_box[1] == syn.BOX) & (only_disc[1] == syn.DISC)
    assert overlap.sum() > 100
    assert (label[overlap] == syn.DISC).all()
    assert (inst[overlap] == 2).all()
    # the label is exactly the union of the masks in paint order
    expect = np.where(only_disc[1] == syn.DISC, syn.DISC, only_box[1])
    np.testing.assert_array_equal(label, expect)
    np.testing.assert_array_equal(inst > 0, label > 0)
    # every pixel shows what its label says: background / box texture / disc texture
    for cls, ref in ((0, empty[0]), (syn.BOX, only_box[0]), (syn.DISC, only_disc[0])):
        m = label == cls
        assert m.any()
        np.testing.assert_array_equal(image[m], ref[m])


def test_ring_hole_shows_what_is_below():
    box = _obj(syn.BOX, 64, 64, 40, aspect=1.0, freq=3.0)
    ring = _obj(syn.RING, 64, 64, 30, aspect=1.0, inner=0.6)
    ring.speckle = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    _, label = syn._render(_two_object_scene([box, ring]), 0.0, np.random.default_rng(0))
    assert label[64, 64] == syn.BOX  # hole
    assert label[64, 64 + 24] == syn.RING  # annulus (radius 0.8)
    assert label[64, 64 + 36] == syn.BOX  # outside the ring, inside the box
    assert label[2, 2] == 0


def test_clip_objects_move_smoothly():
    for seed in range(3):
        clip = SceneClip(seed, SMALL, n_frames=30)
        labels = [lab for _, lab in clip]
        changed, ious = 0, []
        for a, b in zip(labels[:-1], labels[1:]):
            changed += not np.array_equal(a, b)
            fa, fb = a > 0, b > 0
            if fa.any() or fb.any():
                ious.append((fa & fb).sum() / (fa | fb).sum())
        assert changed >= 25, f"seed {seed}: labels changed in only {changed}/29 steps"
        assert np.mean(ious) > 0.7, f"seed {seed}: consecutive frames overlap too little ({np.mean(ious):.2f})"


def test_clip_objects_enter_or_leave():
    for seed in range(6):
        clip = SceneClip(seed, SMALL, n_frames=60)
        vis = np.array([[(clip.render(i, instances=True)[2] == k + 1).sum() for k in range(clip.num_objects)]
                        for i in list(range(0, 60, 5)) + [59]])
        enters = (vis[0] == 0) & (vis.max(0) > 0)
        leaves = (vis[0] > 0) & (vis[-1] == 0)
        assert (enters | leaves).any(), f"seed {seed}: no object enters or leaves\n{vis.T}"


def test_default_size_scenes():
    """The 256x256 default (what the benchmarks and the demo render): valid, non-empty labels, deterministic. No
    timing assertion: the test machine is shared, so a wall-clock bound would only measure the neighbours."""
    for seed in range(1000, 1010):
        image, label = render_scene(seed)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and label.shape == (256, 256)
        assert label.max() < NUM_CLASSES and (label > 0).any() and (label == 0).any()
        np.testing.assert_array_equal(render_scene(seed, (256, 256))[1], label)


def test_dataset_items():
    import torch

    from biformer_edge.data import SyntheticScenes

    ds = SyntheticScenes(4, size=(64, 96), seed=3)
    assert len(ds) == 4 and isinstance(ds, torch.utils.data.Dataset)
    x, y = ds[1]
    assert x.shape == (3, 64, 96) and x.dtype == torch.float32
    assert y.shape == (64, 96) and y.dtype == torch.int64
    image, label = render_scene(scene_seed(3, 1), (64, 96))
    np.testing.assert_array_equal(denormalize(x), image)
    np.testing.assert_array_equal(y.numpy(), label)
    np.testing.assert_array_equal(ds[-1][1].numpy(), ds[3][1].numpy())
    with pytest.raises(IndexError):
        ds[4]
    other = SyntheticScenes(4, size=(64, 96), seed=4)
    assert not torch.equal(other[1][0], x)
    assert scene_seed(3, 1) != scene_seed(4, 1) and scene_seed(0, 5) == 5


def test_normalize_roundtrip():
    image, _ = render_scene(7, (40, 56))
    x = normalize(image)
    assert x.shape == (1, 3, 40, 56) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 3, 5], (image[3, 5] - MEAN) / STD, rtol=1e-6)
    np.testing.assert_array_equal(denormalize(x), image)
    np.testing.assert_array_equal(denormalize(x[0]), image)


def test_colorize_overlay_legend():
    image, label = render_scene(3, SMALL)
    col = colorize(label)
    assert col.shape == image.shape and col.dtype == np.uint8
    np.testing.assert_array_equal(col[label == 0], 0)
    before = image.copy()
    ov = overlay(image, label, alpha=0.5)
    np.testing.assert_array_equal(image, before)  # input untouched
    np.testing.assert_array_equal(ov[label == 0], image[label == 0])
    assert not np.array_equal(ov[label > 0], image[label > 0])
    leg = draw_legend(image)
    np.testing.assert_array_equal(image, before)
    assert leg.shape == image.shape and not np.array_equal(leg, image)
    assert np.array_equal(draw_legend(image, corner="bottom-right")[:10, :10], image[:10, :10])
    with pytest.raises(ValueError):
        colorize(np.full((2, 2), NUM_CLASSES))


def test_bad_arguments():
    with pytest.raises(ValueError):
        render_scene(1, (8, 8))
    with pytest.raises(ValueError):
        render_scene(1, 256)
    with pytest.raises(ValueError):
        SceneClip(1, SMALL, n_frames=1)


def scene_set_sizes() -> dict[str, int]:
    """How many scenes of each set the code draws by default (the benchmarks' --scenes / --held-out: 64)."""
    from biformer_edge.quant.calibration import DEFAULT_SAMPLES
    from biformer_edge.quant.qat import QATSettings
    from biformer_edge.train_demo import STAGES, parser
    demo = parser().parse_args([])
    return {"demo_train": STAGES["base"]["steps"] * demo.batch, "demo_margin": STAGES["margin"]["steps"] * demo.batch,
            "demo_val": demo.val_scenes, "calibration": DEFAULT_SAMPLES,
            "qat_train": QATSettings.samples, "qat_val": QATSettings.val_samples, "parity": 64, "held_out": 64}


def test_the_scene_sets_are_pairwise_disjoint():
    sizes = scene_set_sizes()
    assert set(sizes) == set(SCENE_SETS) and max(sizes.values()) < SEED_STRIDE
    spans = {name: range(scene_seed(base, start), scene_seed(base, start) + sizes[name])
             for name, (base, start) in SCENE_SETS.items()}
    for a, b in itertools.combinations(spans, 2):
        assert spans[a].stop <= spans[b].start or spans[b].stop <= spans[a].start, (a, b)
    # parity's scenes are none of a training set's, however many a parity check asks for (up to a stride)
    parity = scene_set("parity", 1)[0]
    for name in ("demo_train", "calibration", "qat_train"):
        base, start = SCENE_SETS[name]
        assert not scene_seed(base, 0) <= parity < scene_seed(base + 1, 0), name
    assert scene_set("parity", 3) == [parity, parity + 1, parity + 2]


def test_the_scene_sets_keep_the_images_their_figures_were_measured_on():
    from biformer_edge.quant.calibration import resolve_recipe
    assert scene_set("held_out", 3) == [50_000, 50_001, 50_002]   # benchmarks/int8_routing.py, qar_ptq_search.py
    assert resolve_recipe(None, None).seed == SCENE_SETS["calibration"].base == 7
    assert scene_set("calibration", 2) == [scene_seed(7, 0), scene_seed(7, 1)]
    assert SCENE_SETS["demo_train"] == (0, 0) and SCENE_SETS["demo_val"].base == 9_000   # the shipped demo weights
    assert (SCENE_SETS["qat_train"].base, SCENE_SETS["qat_val"].base) == (11, 13)        # the shipped QAT state
