"""Deterministic synthetic scenes and video clips for semantic segmentation.

Each scene is a textured background with 2-6 objects painted over it in order (later objects occlude earlier ones).
Every object class has its own shape *and* its own texture family, and colours are jittered (partly class-biased,
partly uniform), so the class is learnable from shape + texture but not from colour alone:

======== ============================== ==========================================
label    shape                          texture
======== ============================== ==========================================
disc     filled ellipse                 concentric rings + spherical shading
box      rotated rectangle              checkerboard aligned with the box
triangle irregular triangle             hatching (sharp parallel lines)
ring     elliptical annulus             soft speckle (random dots)
bar      long thin rotated rectangle    linear gradient along the bar
======== ============================== ==========================================

Image and label are drawn from the same boolean masks, so the label is exactly what is visible. Camera effects
(brightness, contrast, gamma, white balance, lighting gradient, vignette, object shadows, gaussian noise, mild
blur) only change the image, never the label.

Everything is a pure function of the seed: :func:`render_scene` uses ``np.random.default_rng(seed)`` and never a
global RNG, and a :class:`SceneClip` frame depends only on ``(seed, size, n_frames, frame index)``.

Sizes are ``(height, width)``. Images are uint8 RGB ``HxWx3``, labels uint8 ``HxW`` with values in
``range(len(CLASSES))``.

Normalisation: :data:`MEAN` / :data:`STD` are the ImageNet RGB mean/std **in 0-255 units**;
:func:`normalize` maps a uint8 RGB image to float32 ``1x3xHxW`` as ``(image - MEAN) / STD``.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Iterator, Tuple

import cv2
import numpy as np

from ..preprocess import MEAN, STD, denormalize, normalize  # noqa: F401  (re-exported)

__all__ = [
    "CLASSES", "NUM_CLASSES", "PALETTE", "MEAN", "STD",
    "render_scene", "SceneClip", "render_clip", "check_size",
    "normalize", "denormalize",
]

CLASSES: Tuple[str, ...] = ("background", "disc", "box", "triangle", "ring", "bar")
NUM_CLASSES = len(CLASSES)
BACKGROUND, DISC, BOX, TRIANGLE, RING, BAR = range(NUM_CLASSES)

#: Overlay colours (RGB), one row per class; background is black and is left unpainted by
#: :func:`biformer_edge.video.draw.overlay` (which draws these labels on images).
PALETTE = np.array([
    [0, 0, 0],        # background
    [230, 25, 75],    # disc: red
    [0, 130, 200],    # box: blue
    [255, 225, 25],   # triangle: yellow
    [60, 180, 75],    # ring: green
    [245, 130, 48],   # bar: orange
], dtype=np.uint8)
PALETTE.setflags(write=False)


Size = Tuple[int, int]

# Class-typical hue (0-1) used for half of the objects; the other half get a uniformly random hue.
_CLASS_HUE = {DISC: 0.0, BOX: 0.6, TRIANGLE: 0.15, RING: 0.35, BAR: 0.08}
_CLASS_HUE_PROB = 0.5
_TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------------------------------------------
# Scene description
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class _Object:
    cls: int
    x: float                    # centre at frame 0, pixels (continuous coordinates, pixel centres at +0.5)
    y: float
    vx: float = 0.0             # pixels / frame
    vy: float = 0.0
    angle: float = 0.0          # radians at frame 0
    omega: float = 0.0          # radians / frame
    radius: float = 20.0        # pixels: the shape's unit length (half-length for box/bar)
    scale_amp: float = 0.0      # radius(t) = radius * (1 + scale_amp * sin(scale_freq * t + scale_phase))
    scale_freq: float = 0.0
    scale_phase: float = 0.0
    aspect: float = 1.0         # minor/major ratio of the shape
    color1: np.ndarray = None   # float32 RGB 0-255, texture value 0
    color2: np.ndarray = None   # float32 RGB 0-255, texture value 1
    light: Tuple[float, float] = (0.0, 0.0)  # per-object shading direction * strength (object frame)
    # class-specific parameters
    freq: float = 2.0           # disc: rings per radius; box: cells per side; triangle: hatch period (normalised)
    phase: float = 0.0
    duty: float = 0.4           # triangle: fraction of the hatch period that is a line
    hatch_angle: float = 0.0    # triangle
    inner: float = 0.6          # ring: inner radius ratio
    verts: np.ndarray = None    # triangle: (3, 2) normalised vertices, counter-clockwise
    speckle: np.ndarray = None  # ring: small float32 pattern in [0, 1]
    grad_pow: float = 1.0       # bar: gradient shape

    def state(self, t: float) -> Tuple[float, float, float, float]:
        s = self.radius * (1.0 + self.scale_amp * math.sin(self.scale_freq * t + self.scale_phase))
        return self.x + self.vx * t, self.y + self.vy * t, self.angle + self.omega * t, s

    def extent(self) -> float:
        """Bounding radius in units of ``radius``."""
        if self.cls in (BOX, BAR):
            return math.hypot(1.0, self.aspect)
        if self.cls == TRIANGLE:
            return float(np.sqrt((self.verts ** 2).sum(1)).max())
        return 1.0


@dataclass
class _Camera:
    gain: float = 1.0
    gain_amp: float = 0.0
    gain_freq: float = 0.0
    gain_phase: float = 0.0
    contrast: float = 1.0
    wb: np.ndarray = None        # (3,) per-channel gain
    grad: float = 0.0            # lighting gradient strength across the frame
    grad_angle: float = 0.0
    grad_omega: float = 0.0      # radians / frame
    vignette: float = 0.0
    gamma: float = 1.0
    noise: float = 0.0           # gaussian sigma, 0-255 units
    blur: float = 0.0            # gaussian sigma in pixels, 0 = off
    shadow: float = 0.0          # shadow opacity, 0 = off
    shadow_dx: float = 0.0
    shadow_dy: float = 0.0
    shadow_sigma: float = 1.0


@dataclass
class _Scene:
    size: Size
    background: np.ndarray       # float32 (H + 2m, W + 2m, 3), 0-255
    margin: int
    pan: Tuple[float, float, float, float]  # x amplitude, y amplitude, angular frequency, phase
    objects: list
    camera: _Camera

    def offset(self, t: float) -> Tuple[int, int]:
        m = self.margin
        if m == 0:
            return 0, 0
        ax, ay, w, ph = self.pan
        ox = m + ax * m * math.sin(w * t + ph)
        oy = m + ay * m * math.sin(0.7 * w * t + 2.0 * ph)
        return int(min(max(round(ox), 0), 2 * m)), int(min(max(round(oy), 0), 2 * m))


def check_size(size) -> Size:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least 16x16, got {h}x{w}")
    return h, w


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float32 (h, w, 3) natural-ish background: low-frequency colour field + mid-frequency mottling +
    optional warped stripes (wood/fabric) + soft static grain. Composed at half resolution, then upsampled."""
    hh, hw = (h + 1) // 2, (w + 1) // 2
    gh, gw = (int(v) for v in rng.integers(2, 6, size=2))
    hsv = np.empty((gh, gw, 3), np.float32)
    hsv[..., 0] = (rng.random() + rng.normal(0, 0.06, (gh, gw))) % 1.0 * 360.0
    hsv[..., 1] = np.clip(rng.uniform(0.05, 0.4) + rng.normal(0, 0.08, (gh, gw)), 0.0, 1.0)
    hsv[..., 2] = np.clip(rng.uniform(0.3, 0.8) + rng.normal(0, 0.12, (gh, gw)), 0.0, 1.0)
    grid = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * np.float32(255.0)
    img = cv2.resize(grid, (hw, hh), interpolation=cv2.INTER_CUBIC)

    mh, mw = max(2, h // 16), max(2, w // 16)
    mid = cv2.resize(rng.standard_normal((mh, mw), dtype=np.float32), (hw, hh), interpolation=cv2.INTER_CUBIC)
    lum = mid * np.float32(rng.uniform(4.0, 14.0))
    if rng.random() < 0.45:  # stripes, phase warped by the mid-frequency noise
        a = rng.uniform(0, math.pi)
        period = rng.uniform(0.04, 0.15) * min(h, w) / 2.0  # in half-resolution pixels
        xs = np.arange(hw, dtype=np.float32) * np.float32(math.cos(a) * _TWO_PI / period)
        ys = np.arange(hh, dtype=np.float32) * np.float32(math.sin(a) * _TWO_PI / period)
        arg = ys[:, None] + xs[None, :] + mid * np.float32(rng.uniform(0.5, 3.0))
        lum += np.sin(arg) * np.float32(rng.uniform(4.0, 12.0))
    lum += rng.standard_normal((hh, hw), dtype=np.float32) * np.float32(rng.uniform(1.0, 4.0))
    img += cv2.cvtColor(lum, cv2.COLOR_GRAY2RGB)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def _sample_object(rng: np.random.Generator, cls: int, h: int, w: int) -> _Object:
    short = min(h, w)
    if cls == DISC:
        radius, aspect = rng.uniform(0.08, 0.2), rng.uniform(0.7, 1.0)
    elif cls == BOX:
        radius, aspect = rng.uniform(0.08, 0.19), rng.uniform(0.55, 1.0)
    elif cls == TRIANGLE:
        radius, aspect = rng.uniform(0.12, 0.27), 1.0
    elif cls == RING:
        radius, aspect = rng.uniform(0.1, 0.23), rng.uniform(0.8, 1.0)
    else:  # BAR
        radius, aspect = rng.uniform(0.18, 0.4), rng.uniform(0.12, 0.2)
    o = _Object(cls=cls, x=rng.uniform(0.08, 0.92) * w, y=rng.uniform(0.08, 0.92) * h,
                angle=rng.uniform(0, _TWO_PI), radius=radius * short, aspect=aspect)

    hue = _CLASS_HUE[cls] + rng.normal(0, 0.08) if rng.random() < _CLASS_HUE_PROB else rng.random()
    sat = rng.uniform(0.25, 0.9)
    v1 = rng.uniform(0.3, 0.95)
    v2 = v1 + rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.5)
    if not 0.08 <= v2 <= 1.0:
        v2 = v1 - (v2 - v1)
    o.color1 = _hsv(hue, sat, v1)
    o.color2 = _hsv(hue + rng.normal(0, 0.05), sat + rng.normal(0, 0.1), v2)
    la = rng.uniform(0, _TWO_PI)
    ls = rng.uniform(0.05, 0.2)
    o.light = (ls * math.cos(la), ls * math.sin(la))

    if cls == DISC:
        o.freq, o.phase = rng.uniform(1.3, 3.0), rng.uniform(0, _TWO_PI)
    elif cls == BOX:
        o.freq = float(rng.integers(3, 7))
    elif cls == TRIANGLE:
        ang = -math.pi / 2 + np.arange(3) * (_TWO_PI / 3) + rng.uniform(-0.3, 0.3, size=3)
        rad = rng.uniform(0.8, 1.1, size=3)
        o.verts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1).astype(np.float32)
        o.freq, o.duty = rng.uniform(0.2, 0.34), rng.uniform(0.3, 0.5)
        o.hatch_angle, o.phase = rng.uniform(0, math.pi), rng.random()
    elif cls == RING:
        o.inner = rng.uniform(0.45, 0.68)
        n = int(rng.integers(14, 22))
        o.speckle = (rng.random((n, n)) < rng.uniform(0.25, 0.45)).astype(np.float32)
    else:
        o.grad_pow = rng.uniform(0.6, 1.6)
    return o


def _sample_camera(rng: np.random.Generator, h: int, w: int, n_frames: int) -> _Camera:
    cam = _Camera(
        gain=rng.uniform(0.65, 1.3), contrast=rng.uniform(0.7, 1.2),
        wb=rng.uniform(0.88, 1.12, size=3).astype(np.float32),
        grad=rng.uniform(0.0, 0.7), grad_angle=rng.uniform(0, _TWO_PI), vignette=rng.uniform(0.0, 0.5),
        gamma=math.exp(rng.uniform(-0.35, 0.35)), noise=rng.uniform(1.0, 8.0),
        blur=rng.uniform(0.5, 1.2) if rng.random() < 0.5 else 0.0)
    if rng.random() < 0.6:
        a = rng.uniform(0, _TWO_PI)
        d = rng.uniform(0.01, 0.03) * min(h, w)
        cam.shadow, cam.shadow_dx, cam.shadow_dy = rng.uniform(0.2, 0.5), d * math.cos(a), d * math.sin(a)
        cam.shadow_sigma = rng.uniform(0.008, 0.02) * min(h, w)
    if n_frames > 1:  # slow lighting changes over the clip
        cam.gain_amp = rng.uniform(0.05, 0.25)
        cam.gain_freq = _TWO_PI / (n_frames * rng.uniform(0.8, 2.5))
        cam.gain_phase = rng.uniform(0, _TWO_PI)
        cam.grad_omega = rng.uniform(-1.0, 1.0) * math.pi / n_frames
    return cam


def _exit_distance(x: float, y: float, dx: float, dy: float, x0: float, y0: float, x1: float, y1: float) -> float:
    """Distance along unit direction (dx, dy) from (x, y), inside the box, to the box boundary."""
    ts = []
    if dx > 1e-9:
        ts.append((x1 - x) / dx)
    elif dx < -1e-9:
        ts.append((x0 - x) / dx)
    if dy > 1e-9:
        ts.append((y1 - y) / dy)
    elif dy < -1e-9:
        ts.append((y0 - y) / dy)
    return max(0.0, min(ts)) if ts else 0.0


def _add_motion(rng: np.random.Generator, o: _Object, mode: str, h: int, w: int, n: int) -> None:
    """Give an object velocity, rotation and scaling over ``n`` frames. ``mode``: 'wander' (drifts, may leave),
    'enter' (starts outside the frame, enters during the clip) or 'exit' (starts inside, leaves during the clip)."""
    unit = min(h, w) / 256.0
    o.omega = rng.uniform(-0.03, 0.03)
    o.scale_amp = rng.uniform(0.0, 0.25)
    o.scale_freq = _TWO_PI / (n * rng.uniform(1.0, 3.0))
    o.scale_phase = rng.uniform(0, _TWO_PI)
    r_out = o.radius * (1.0 + o.scale_amp) * o.extent() + 2.0  # fully outside beyond this distance

    if mode == "wander":
        a, sp = rng.uniform(0, _TWO_PI), rng.uniform(0.1, 1.2) * unit
        o.vx, o.vy = sp * math.cos(a), sp * math.sin(a)
    elif mode == "enter":
        te = rng.uniform(0.05, 0.5) * n              # frame at which it first touches the frame
        sp = rng.uniform(1.5, 4.0) * unit
        side = int(rng.integers(4))
        u = rng.uniform(0.15, 0.85)
        # entry point on the border; inward normal; direction jittered +-40 degrees
        px, py, nx, ny = [(u * w, 0.0, 0, 1), (u * w, h, 0, -1), (0.0, u * h, 1, 0), (w, u * h, -1, 0)][side]
        a = math.atan2(ny, nx) + rng.uniform(-0.7, 0.7)
        dx, dy = math.cos(a), math.sin(a)
        ex, ey = px - dx * r_out, py - dy * r_out       # centre when it touches the border
        o.vx, o.vy = sp * dx, sp * dy
        o.x, o.y = ex - o.vx * te, ey - o.vy * te
    else:  # exit
        tx = rng.uniform(0.45, 0.95) * n             # frame at which it is fully out
        o.x, o.y = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        a = rng.uniform(0, _TWO_PI)
        dx, dy = math.cos(a), math.sin(a)
        d = _exit_distance(o.x, o.y, dx, dy, -r_out, -r_out, w + r_out, h + r_out)
        sp = min(max(d / tx, 0.5 * unit), 8.0 * unit)
        o.vx, o.vy = sp * dx, sp * dy


def _sample_scene(seed: int, size: Size, n_frames: int = 1) -> Tuple[_Scene, np.random.Generator]:
    h, w = size
    rng = np.random.default_rng(seed)
    motion = n_frames > 1
    margin = int(round(0.08 * max(h, w))) if motion else 0
    bg = _background(rng, h + 2 * margin, w + 2 * margin)
    pan = (rng.uniform(0.3, 1.0), rng.uniform(0.0, 0.6), _TWO_PI / (n_frames * rng.uniform(1.0, 3.0)),
           rng.uniform(0, _TWO_PI)) if motion else (0.0, 0.0, 0.0, 0.0)
    n_obj = int(rng.integers(2, 7))
    classes = rng.integers(1, NUM_CLASSES, size=n_obj)
    objects = [_sample_object(rng, int(c), h, w) for c in classes]
    if motion:
        for k, o in enumerate(objects):
            if k == 0:  # guarantee at least one object entering or leaving per clip
                mode = "enter" if rng.random() < 0.5 else "exit"
            else:
                mode = ("wander", "enter", "exit")[int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
            _add_motion(rng, o, mode, h, w, n_frames)
        order = rng.permutation(n_obj)  # so the forced enter/exit object is not always at the bottom
        objects = [objects[i] for i in order]
    cam = _sample_camera(rng, h, w, n_frames)
    return _Scene(size=(h, w), background=bg, margin=margin, pan=pan, objects=objects, camera=cam), rng


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------

def _local_coords(o: _Object, cx: float, cy: float, ang: float, s: float, x0: int, y0: int, bw: int, bh: int):
    """Object-frame coordinates (in units of the object radius) of the pixel centres of a bbox."""
    xs = (np.arange(x0, x0 + bw, dtype=np.float32) + np.float32(0.5 - cx)) / np.float32(s)
    ys = (np.arange(y0, y0 + bh, dtype=np.float32) + np.float32(0.5 - cy)) / np.float32(s)
    ca, sa = np.float32(math.cos(ang)), np.float32(math.sin(ang))
    u = xs[None, :] * ca + ys[:, None] * sa
    v = ys[:, None] * ca - xs[None, :] * sa
    return u, v


def _shape_mask(o: _Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if o.cls in (BOX, BAR):
        return (np.abs(u) <= 1.0) & (np.abs(v) <= o.aspect)
    if o.cls == TRIANGLE:
        m = None
        for k in range(3):
            ax, ay = o.verts[k]
            bx, by = o.verts[(k + 1) % 3]
            e = (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0.0
            m = e if m is None else m & e
        return m
    rho2 = u * u + (v / np.float32(o.aspect)) ** 2
    if o.cls == RING:
        return (rho2 <= 1.0) & (rho2 >= o.inner * o.inner)
    return rho2 <= 1.0


def _texture(o: _Object, u: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Return (t in [0, 1] mixing colour1 -> colour2, multiplicative shading), both (bh, bw) float32."""
    lx, ly = o.light
    shade = 1.0 + np.float32(lx) * u + np.float32(ly) * v
    if o.cls == DISC:
        rho = np.sqrt(u * u + (v / np.float32(o.aspect)) ** 2)
        t = 0.5 + 0.5 * np.cos(rho * np.float32(_TWO_PI * o.freq) + np.float32(o.phase))
        shade = shade * (1.15 - 0.45 * rho * rho)
    elif o.cls == BOX:
        cell = 2.0 / o.freq
        t = ((np.floor((u + 1.0) / cell) + np.floor((v + o.aspect) / cell)) % 2.0).astype(np.float32)
    elif o.cls == TRIANGLE:
        w = u * np.float32(math.cos(o.hatch_angle)) + v * np.float32(math.sin(o.hatch_angle))
        frac = (w / np.float32(o.freq) + np.float32(o.phase)) % 1.0
        t = (frac < o.duty).astype(np.float32)
    elif o.cls == RING:
        n = o.speckle.shape[0]
        mx = ((u + 1.0) * np.float32(0.5 * (n - 1))).astype(np.float32)
        my = ((v / np.float32(o.aspect) + 1.0) * np.float32(0.5 * (n - 1))).astype(np.float32)
        t = cv2.remap(o.speckle, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    else:  # BAR
        g = np.clip((u + 1.0) * 0.5, 0.0, 1.0)
        t = g ** np.float32(o.grad_pow)
        across = v / np.float32(o.aspect)
        shade = shade * (1.08 - 0.3 * across * across)
    return t, shade


def _bounds(o: _Object, cx: float, cy: float, ang: float, s: float) -> Tuple[float, float, float, float]:
    """Tight image-space (xmin, xmax, ymin, ymax) of the rotated, scaled shape."""
    ca, sa = math.cos(ang), math.sin(ang)
    if o.cls == TRIANGLE:
        px = cx + s * (o.verts[:, 0] * ca - o.verts[:, 1] * sa)
        py = cy + s * (o.verts[:, 0] * sa + o.verts[:, 1] * ca)
        return float(px.min()), float(px.max()), float(py.min()), float(py.max())
    if o.cls in (BOX, BAR):
        ex, ey = s * (abs(ca) + abs(sa) * o.aspect), s * (abs(sa) + abs(ca) * o.aspect)
    else:
        ex, ey = s * math.hypot(ca, o.aspect * sa), s * math.hypot(sa, o.aspect * ca)
    return cx - ex, cx + ex, cy - ey, cy + ey


def _paint(img: np.ndarray, label: np.ndarray, inst, o: _Object, idx: int, t: float, cam: _Camera) -> None:
    """Paint one object (and its soft drop shadow) into ``img`` and ``label`` with the same mask."""
    h, w = label.shape
    cx, cy, ang, s = o.state(t)
    if s <= 0.5:
        return
    xmin, xmax, ymin, ymax = _bounds(o, cx, cy, ang, s)
    x0, x1 = int(math.floor(xmin)) - 1, int(math.ceil(xmax)) + 2
    y0, y1 = int(math.floor(ymin)) - 1, int(math.ceil(ymax)) + 2
    shadow = cam.shadow > 0.0
    if shadow:  # shadow pixels can come from up to `reach` pixels outside the image
        sdx, sdy = int(round(cam.shadow_dx)), int(round(cam.shadow_dy))
        pad = int(math.ceil(3.0 * cam.shadow_sigma))
        reach = pad + max(abs(sdx), abs(sdy))
        lo_x, hi_x, lo_y, hi_y = -reach, w + reach, -reach, h + reach
    else:
        lo_x, hi_x, lo_y, hi_y = 0, w, 0, h
    x0, x1, y0, y1 = max(x0, lo_x), min(x1, hi_x), max(y0, lo_y), min(y1, hi_y)
    if x1 <= x0 or y1 <= y0:
        return
    u, v = _local_coords(o, cx, cy, ang, s, x0, y0, x1 - x0, y1 - y0)
    mask = _shape_mask(o, u, v)
    if shadow:
        m = np.zeros((mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad), np.float32)
        m[pad:pad + mask.shape[0], pad:pad + mask.shape[1]] = mask
        m = cv2.GaussianBlur(m, (0, 0), cam.shadow_sigma)
        # m covers image rows y0 - pad + sdy ... (and columns likewise) once shifted by the shadow offset
        sy0, sx0 = y0 - pad + sdy, x0 - pad + sdx
        iy0, iy1 = max(sy0, 0), min(sy0 + m.shape[0], h)
        ix0, ix1 = max(sx0, 0), min(sx0 + m.shape[1], w)
        if iy1 > iy0 and ix1 > ix0:
            m = m[iy0 - sy0:iy1 - sy0, ix0 - sx0:ix1 - sx0]
            roi = img[iy0:iy1, ix0:ix1]
            roi *= cv2.cvtColor(1.0 - np.float32(cam.shadow) * m, cv2.COLOR_GRAY2RGB)
        # crop everything to the part inside the image
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x1, w), min(y1, h)
        if cx1 <= cx0 or cy1 <= cy0:
            return
        sl = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        u, v, mask = u[sl], v[sl], mask[sl]
        x0, x1, y0, y1 = cx0, cx1, cy0, cy1
    if not mask.any():
        return
    tex, shade = _texture(o, u, v)
    ts = tex * shade
    c1, dc = o.color1, o.color2 - o.color1
    col = cv2.merge([shade * np.float32(c1[k]) + ts * np.float32(dc[k]) for k in range(3)])
    m8 = mask.view(np.uint8)
    cv2.copyTo(col, m8, img[y0:y1, x0:x1])  # in place into the ROI view
    label[y0:y1, x0:x1][mask] = o.cls
    if inst is not None:
        inst[y0:y1, x0:x1][mask] = idx + 1


def _tone_lut(contrast: float, gamma: float) -> np.ndarray:
    x = (np.arange(256, dtype=np.float64) - 128.0) * contrast + 128.0
    x = 255.0 * (np.clip(x, 0.0, 255.0) / 255.0) ** gamma
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _camera(img: np.ndarray, cam: _Camera, t: float, rng: np.random.Generator) -> np.ndarray:
    """Lighting field (gain, gradient, vignette) and white balance, sensor noise, tone curve (contrast + gamma),
    optional blur. ``img`` is float32 0-255 and is modified in place; returns uint8."""
    h, w = img.shape[:2]
    gain = cam.gain * (1.0 + cam.gain_amp * math.sin(cam.gain_freq * t + cam.gain_phase))
    a = cam.grad_angle + cam.grad_omega * t
    norm = 1.0 / max(h, w)
    xs = (np.arange(w, dtype=np.float32) - np.float32(w / 2)) * np.float32(norm)
    ys = (np.arange(h, dtype=np.float32) - np.float32(h / 2)) * np.float32(norm)
    # separable lighting field fy(y) * fx(x) (linear gradient + vignette), applied in place without any HxW temporary
    fx = np.float32(1.0) + np.float32(cam.grad * math.cos(a)) * xs - np.float32(cam.vignette) * xs * xs
    fy = np.float32(1.0) + np.float32(cam.grad * math.sin(a)) * ys - np.float32(cam.vignette) * ys * ys
    rows = img.reshape(h, w * 3)
    rows *= fy[:, None]
    rows *= (fx[:, None] * (cam.wb * np.float32(gain))[None, :]).reshape(-1)
    # gaussian-like sensor noise: sum of three uniform int8 (Irwin-Hall, std ~127.9), much cheaper than
    # standard_normal; addWeighted rounds and saturates to uint8 in the same pass
    n = 3 * img.size
    raw = rng.integers(0, 2 ** 64, (n + 7) // 8, dtype=np.uint64)  # full-range draws: fastest path, ~6x rng.bytes
    b = raw.view(np.int8)[:n].reshape((3,) + img.shape)
    noise = b[0].astype(np.int16)
    noise += b[1]
    noise += b[2]
    out = cv2.addWeighted(img, 1.0, noise, cam.noise / 127.9, 0.0, dtype=cv2.CV_8U)
    cv2.LUT(out, _tone_lut(cam.contrast, cam.gamma), dst=out)
    if cam.blur > 0.0:
        cv2.GaussianBlur(out, (0, 0), cam.blur, dst=out)
    return np.ascontiguousarray(out)


def _render(scene: _Scene, t: float, rng: np.random.Generator, instances: bool = False, reuse: bool = False):
    """Render frame ``t``; ``reuse=True`` paints straight into ``scene.background`` (one-shot scenes only)."""
    h, w = scene.size
    ox, oy = scene.offset(t)
    img = scene.background[oy:oy + h, ox:ox + w]
    if not (reuse and img.flags.c_contiguous):
        img = img.copy()
    label = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.uint8) if instances else None
    for k, o in enumerate(scene.objects):
        _paint(img, label, inst, o, k, t, scene.camera)
    image = _camera(img, scene.camera, t, rng)
    return (image, label, inst) if instances else (image, label)


def render_scene(seed: int, size: Size = (256, 256)) -> Tuple[np.ndarray, np.ndarray]:
    """Render one still scene. Returns ``(image uint8 HxWx3 RGB, label uint8 HxW)``; deterministic in
    ``(seed, size)``. ``seed`` is a non-negative int."""
    scene, rng = _sample_scene(int(seed), check_size(size), 1)
    return _render(scene, 0.0, rng, reuse=True)


# ----------------------------------------------------------------------------------------------------------------
# Video clips
# ----------------------------------------------------------------------------------------------------------------

class SceneClip:
    """A deterministic video clip: panning background, objects that move, rotate, scale, enter and leave the
    frame, slowly changing lighting and fresh sensor noise every frame.

    ``clip[i]`` / ``clip.render(i)`` returns ``(image, label)`` for frame ``i`` (random access, a pure function
    of ``(seed, size, n_frames, i)``); iterating yields every frame in order. ``clip.render(i, instances=True)``
    also returns a uint8 instance map (0 = background, ``k + 1`` = the ``k``-th painted object).

    Motion, pan and lighting periods scale with ``n_frames`` (at least one object enters or leaves during the
    clip), but drifting objects move ~0.1-1.2 px/frame at 256 px whatever the length: for long videos chain
    clips of ~60-300 frames with different seeds rather than one very long clip. ``fps`` is metadata only.
    """

    def __init__(self, seed: int, size: Size = (256, 256), n_frames: int = 90, fps: float = 30.0):
        if int(n_frames) < 2:
            raise ValueError(f"n_frames must be >= 2, got {n_frames}")
        self.seed, self.size, self.n_frames, self.fps = int(seed), check_size(size), int(n_frames), float(fps)
        self._scene, _ = _sample_scene(self.seed, self.size, self.n_frames)

    @property
    def num_objects(self) -> int:
        return len(self._scene.objects)

    def __len__(self) -> int:
        return self.n_frames

    def render(self, index: int, instances: bool = False):
        i = int(index)
        if i < 0:
            i += self.n_frames
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {index} out of range for a {self.n_frames}-frame clip")
        rng = np.random.default_rng([self.seed, i, 0x5EED])
        return _render(self._scene, float(i), rng, instances)

    __getitem__ = render

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for i in range(self.n_frames):
            yield self.render(i)


def render_clip(seed: int, n_frames: int = 90, size: Size = (256, 256)) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield ``(image, label)`` for each frame of ``SceneClip(seed, size, n_frames)``."""
    return iter(SceneClip(seed, size, n_frames))
