"""Everything drawn on a frame or a sheet: label colours (:func:`colorize`), the translucent mask (:func:`overlay`),
class legends, the one-line HUD, label maps at the display size (:class:`DisplayLabels`: class scores resized
bilinearly, then argmax; or the label map upsampled nearest-neighbour) and the contact sheet (input | FP32 reference |
deployed). numpy and OpenCV only; images are uint8 RGB ``HxWx3``, label maps integer ``HxW``, class scores ``CxHxW``."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..data.synthetic import CLASSES, NUM_CLASSES, PALETTE

SHEET_ROWS = 4
SHEET_CANDIDATES = 16        # frames kept for the sheet (evenly thinned while the clip runs)
SHEET_CELL = 192             # sheet cell height in pixels
UPSAMPLE_MODES = ("bilinear", "nearest")   # --upsample; the first is the default

__all__ = ["colorize", "overlay", "draw_legend", "class_names_and_palette", "legend", "hud", "Upsampler",
           "candidate_classes", "bilinear_labels", "DisplayLabels", "UPSAMPLE_MODES", "SheetPicker", "contact_sheet",
           "SHEET_ROWS", "SHEET_CANDIDATES", "SHEET_CELL"]


# ------------------------------------------------------------------------------------------------ labels on images


def colorize(label: np.ndarray) -> np.ndarray:
    """Label ``HxW`` (ints in ``range(NUM_CLASSES)``) -> uint8 RGB ``HxWx3`` using the synthetic classes' PALETTE."""
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= NUM_CLASSES):
        raise ValueError(f"label values must be in 0..{NUM_CLASSES - 1}")
    return PALETTE[label]


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5, palette: np.ndarray = PALETTE,
            skip_background: bool = True) -> np.ndarray:
    """Blend the class colours (``palette[label]``) into ``image`` (uint8 RGB) with opacity ``alpha``; background
    (class 0) stays unpainted when ``skip_background``. Returns a new array."""
    image = np.asarray(image)
    if image.shape[:2] != np.shape(label):
        raise ValueError(f"image {image.shape[:2]} and label {np.shape(label)} sizes differ")
    label = np.asarray(label)
    mixed = cv2.addWeighted(image, 1.0 - alpha, np.take(palette, label, axis=0), alpha, 0.0)
    if not skip_background:
        return mixed
    return cv2.copyTo(mixed, (label > 0).view(np.uint8), np.array(image, copy=True))


def draw_legend(image: np.ndarray, classes: Sequence[str] = CLASSES, palette: np.ndarray = PALETTE,
                corner: str = "top-left", include_background: bool = False) -> np.ndarray:
    """Return a copy of ``image`` (uint8 RGB) with a class legend (colour swatch + name per class) on a
    translucent dark panel in ``corner`` ("top-left", "top-right", "bottom-left" or "bottom-right")."""
    out = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).copy())
    h, w = out.shape[:2]
    items = [(n, palette[i]) for i, n in enumerate(classes) if include_background or i != 0]
    if not items:
        return out
    scale = max(0.35, min(h, w) / 1000.0)
    thick = 1 if scale < 0.8 else 2
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = max((cv2.getTextSize(n, font, scale, thick) for n, _ in items), key=lambda z: z[0][0])
    line, sw, pad = th + base + 4, th + base, 4
    pw, ph = pad * 3 + sw + tw, pad * 2 + line * len(items)
    pw, ph = min(pw, w), min(ph, h)
    x0 = 0 if "left" in corner else w - pw
    y0 = 0 if "top" in corner else h - ph
    roi = out[y0:y0 + ph, x0:x0 + pw]
    roi[:] = (roi.astype(np.float32) * 0.35).astype(np.uint8)
    for k, (name, color) in enumerate(items):
        y = y0 + pad + k * line
        c = tuple(int(v) for v in color)
        cv2.rectangle(out, (x0 + pad, y + 1), (x0 + pad + sw, y + sw - 1), c, -1)
        cv2.rectangle(out, (x0 + pad, y + 1), (x0 + pad + sw, y + sw - 1), (255, 255, 255), 1)
        cv2.putText(out, name, (x0 + pad * 2 + sw, y + th + 1), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def class_names_and_palette(num_classes: int) -> tuple[list[str], np.ndarray]:
    """The demo's classes and colours when the model has that many classes, else 'class i' and a fixed palette."""
    if num_classes == len(CLASSES):
        return list(CLASSES), np.asarray(PALETTE)
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 179, np.full(num_classes, 200), np.full(num_classes, 230)], 1).astype(np.uint8)
    palette = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    return [f"class {i}" for i in range(num_classes)], palette


class Upsampler:
    """Nearest-neighbour upsampling of (h, w) label maps to (H, W) with precomputed pixel-centre indices."""

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]):
        (h, w), (H, W) = src_hw, dst_hw
        self.rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.intp), h - 1)
        self.cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.intp), w - 1)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        return labels[self.rows[:, None], self.cols[None, :]]


def candidate_classes(scores: np.ndarray) -> np.ndarray:
    """The classes that can win the argmax somewhere in any bilinear resize of ``scores`` (C, h, w), ascending.

    A bilinearly resized pixel (half-pixel centres, coordinates clamped at the border) is a convex combination of the
    cells of one 2x2 window of the map. There class j scores at most its window maximum, and the best class scores at
    least max_k of (class k's window minimum); so j can win only in a window where its maximum reaches that floor.
    Classes that reach it in no window are left out, which changes no label: a frame with a few of 150 classes
    resizes a few planes, not 150. The small slack keeps classes OpenCV's float rounding could still let win."""
    c, h, w = scores.shape
    s = np.pad(scores, ((0, 0), (0, int(h == 1)), (0, int(w == 1))), mode="edge")  # a 1-cell map is its own window
    corners = (s[:, :-1, :-1], s[:, 1:, :-1], s[:, :-1, 1:], s[:, 1:, 1:])
    window_max = np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    window_min = np.minimum(np.minimum(corners[0], corners[1]), np.minimum(corners[2], corners[3]))
    floor = window_min.max(axis=0)
    slack = 1e-5 * (1.0 + np.abs(floor))
    classes = np.flatnonzero((window_max >= floor - slack).any(axis=(1, 2)))
    return classes if len(classes) else np.arange(c)   # NaN scores (a broken engine) compare False everywhere


def bilinear_labels(scores: np.ndarray, size_hw: tuple[int, int], dtype=np.uint8, buffers: dict | None = None
                    ) -> np.ndarray:
    """Label map ``size_hw`` of one image's class scores (C, h, w: logits, or probabilities): each class plane resized
    bilinearly (cv2.INTER_LINEAR: half-pixel centres, the convention of torch's ``interpolate(mode='bilinear',
    align_corners=False)`` and of ``contract.resize_bilinear``), then the argmax over classes. This is what
    segmentation toolkits do before the argmax (mmsegmentation's BaseSegmentor.postprocess_result resizes the
    logits bilinearly to the image, then takes argmax over classes).

    Plane by plane with a running maximum: on the demo model's 6x32x32 -> 256x256 that took 0.7 ms against 1.2-1.3 ms
    for one cv2.resize of the HxWxC array followed by ``argmax(axis=2)`` (a reduction over a short, strided axis),
    both over all 6 classes on a 2-core EPYC; OpenCV also refuses an HxWxC resize beyond 128 channels. Only
    :func:`candidate_classes` are resized. Ties go to the lower class, as with ``np.argmax``.

    ``buffers``: a dict kept between calls (:class:`DisplayLabels` keeps one) whose arrays are reused, the returned
    label map included (the next call overwrites it). Writing into fresh memory cost more than the work: at 1280x720
    a plane's resize took 4 ms into a new array and 0.3 ms into a reused one."""
    height, width = (int(v) for v in size_hw)
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):   # cv2.resize takes no float16
        scores = scores.astype(np.float32)
    work = {} if buffers is None else buffers

    def buffer(name, kind):
        arr = work.get(name)
        if arr is None or arr.shape != (height, width) or arr.dtype != kind:
            arr = work[name] = np.empty((height, width), kind)
        return arr

    classes = candidate_classes(scores)
    labels = buffer("labels", np.dtype(dtype))
    labels.fill(classes[0])
    if len(classes) == 1:
        return labels
    best, plane = buffer("best", scores.dtype), buffer("plane", scores.dtype)
    wins, claim = buffer("wins", np.dtype(bool)), buffer("claim", labels.dtype)
    cv2.resize(np.ascontiguousarray(scores[classes[0]]), (width, height), dst=best, interpolation=cv2.INTER_LINEAR)
    for c in classes[1:]:
        cv2.resize(np.ascontiguousarray(scores[c]), (width, height), dst=plane, interpolation=cv2.INTER_LINEAR)
        np.greater(plane, best, out=wins)
        # classes ascend, so a class that wins is above every label so far: max(labels, c * wins) sets it without a
        # masked store (labels[wins] = c took 6-10 ms at 1280x720 on a ragged mask; this takes 0.3 ms)
        np.multiply(wins, claim.dtype.type(c), out=claim)
        np.maximum(labels, claim, out=labels)
        np.maximum(best, plane, out=best)
    return labels


class DisplayLabels:
    """One frame's label map at the display size ``dst_hw`` from the model's output at ``src_hw``.

    ``bilinear`` (the default) resizes the class scores and takes the argmax there (:func:`bilinear_labels`): object
    edges follow the scores between output pixels. ``nearest`` repeats each output pixel's label (:class:`Upsampler`):
    blocks of (dst / src) pixels, the demo's drawing before bilinear was its default. Scores already at ``dst_hw``
    (a DeepStream graph's probabilities at the input size, when the frame has that size) are used as they are."""

    def __init__(self, mode: str, src_hw: tuple[int, int], dst_hw: tuple[int, int], dtype=np.uint8):
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample mode must be one of {', '.join(UPSAMPLE_MODES)}, not {mode!r}")
        self.mode, self.dtype = mode, dtype
        self.src_hw, self.dst_hw = tuple(int(v) for v in src_hw), tuple(int(v) for v in dst_hw)
        self.same_size = self.src_hw == self.dst_hw
        self.nearest = None if self.same_size else Upsampler(self.src_hw, self.dst_hw)
        self.buffers = {}

    def __call__(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``scores`` (C, h, w) and ``labels`` their argmax (h, w), which the caller has for parity and flicker. A
        bilinear map is overwritten by the next call: copy it to keep it."""
        if self.same_size:
            return labels
        if self.mode == "nearest":
            return self.nearest(labels)
        return bilinear_labels(scores, self.dst_hw, self.dtype, self.buffers)

    def describe(self) -> str:
        (h, w), (dh, dw) = self.src_hw, self.dst_hw
        if self.same_size:
            return f"labels {h}x{w}, already the display size (no resize)"
        if self.mode == "nearest":
            return f"labels {h}x{w} upsampled nearest-neighbour to {dh}x{dw}"
        return f"scores {h}x{w} resized bilinearly to {dh}x{dw}, then argmax"


def legend(image: np.ndarray, labels: np.ndarray, names: list[str], palette: np.ndarray) -> np.ndarray:
    """Class legend (top-left). Up to 12 classes: all of them; more: the ones on screen, largest first."""
    skip_bg = names[0] == "background"
    if len(names) <= 12:
        keep = [i for i in range(len(names)) if not (skip_bg and i == 0)]
    else:
        counts = np.bincount(labels.ravel(), minlength=len(names))
        keep = [int(i) for i in np.argsort(-counts)[:10] if counts[i] > 0]
    return draw_legend(image, [names[i] for i in keep], palette[keep], corner="top-left", include_background=True)


def hud(image: np.ndarray, text: str) -> np.ndarray:
    """One line of text on a dark strip at the bottom of the frame (in place)."""
    h, w = image.shape[:2]
    scale = max(0.35, min(h, w) / 700.0)
    thick = 1
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    y0 = max(0, h - th - base - 6)
    strip = image[y0:h, 0:min(w, tw + 8)]
    strip[:] = (strip.astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(image, text, (4, h - base - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return image


# ---------------------------------------------------------------------------------------------------- contact sheet


class SheetPicker:
    """Keeps up to ``capacity`` evenly spaced frames of a stream of unknown length (stride doubles when full)."""

    def __init__(self, capacity: int = SHEET_CANDIDATES):
        self.capacity, self.stride, self.items = capacity, 1, []

    def wants(self, index: int) -> bool:
        return index % self.stride == 0

    def add(self, index: int, item: dict) -> None:
        self.items.append((index, item))
        if len(self.items) > self.capacity:
            self.stride *= 2
            self.items = [(i, it) for i, it in self.items if i % self.stride == 0]

    def pick(self, n: int) -> list[tuple[int, dict]]:
        if len(self.items) <= n:
            return list(self.items)
        idx = np.linspace(0, len(self.items) - 1, n).round().astype(int)
        return [self.items[i] for i in idx]


def thumb_size(frame_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a frame of ``frame_hw`` on the sheet: the cell height, the frame's aspect."""
    h, w = frame_hw
    return SHEET_CELL, max(1, round(w * SHEET_CELL / h))


def thumb(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` scaled to the sheet's cell height."""
    th, tw = thumb_size(rgb.shape[:2])
    return cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)


def _text(img, text, org, scale=0.42, box=True):
    """White text with its baseline at ``org``, on a darkened box so it reads on any background."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    if box:
        roi = img[max(0, y - th - 3):min(img.shape[0], y + base + 1), max(0, x - 3):min(img.shape[1], x + tw + 3)]
        roi[:] = (roi.astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def contact_sheet(rows: list[dict], titles: list[str], names: list[str], palette: np.ndarray) -> np.ndarray:
    """Rows of input | FP32 reference | deployed, titles on top, a class legend below. Each row dict holds ``thumb``
    (RGB), ``deployed`` and ``reference`` (label maps to draw, reference may be None: at the thumb's size as the
    pipeline gives them, :class:`DisplayLabels`; another size is upsampled nearest-neighbour), ``index``,
    ``agreement`` (or None) and ``agreement_at`` (the (h, w) it was measured at, or None)."""
    gap, head = 4, 40
    cw = rows[0]["thumb"].shape[1]
    skip_bg = names[0] == "background"
    width = 3 * cw + 4 * gap
    legend_items = [i for i in range(len(names)) if not (skip_bg and i == 0)][:12]
    leg_h = 22
    height = head + len(rows) * (SHEET_CELL + gap) + gap + leg_h
    sheet = np.full((height, width, 3), 32, np.uint8)
    for c, title in enumerate(titles):  # "title" or "title\nsubtitle"
        for k, line in enumerate(title.split("\n")[:2]):
            _text(sheet, line, (gap + c * (cw + gap) + 2, 16 + 16 * k), 0.48 if k == 0 else 0.38, box=False)
    for r, row in enumerate(rows):
        y = head + r * (SHEET_CELL + gap)
        small = row["thumb"]

        def up(labels, size=small.shape[:2]):
            return labels if labels.shape == size else Upsampler(labels.shape, size)(labels)

        cells = [small.copy()]
        if row["reference"] is not None:
            cells.append(overlay(small, up(row["reference"]), palette=palette, skip_background=skip_bg))
        else:
            blank = np.full_like(small, 48)
            _text(blank, "no FP32 model", (8, SHEET_CELL // 2), box=False)
            cells.append(blank)
        cells.append(overlay(small, up(row["deployed"]), palette=palette, skip_background=skip_bg))
        _text(cells[0], f"frame {row['index']}", (4, SHEET_CELL - 8))
        if row.get("agreement") is not None:   # parity's pixel agreement: at the model's output resolution
            at = row.get("agreement_at")
            _text(cells[2], f"agree {100 * row['agreement']:.2f}%" + (f" at {at[0]}x{at[1]}" if at else ""),
                  (4, SHEET_CELL - 8))
        for c, cell in enumerate(cells):
            x = gap + c * (cw + gap)
            sheet[y:y + SHEET_CELL, x:x + cw] = cell[:, :cw]
    x, y = gap + 4, height - leg_h + 4
    for i in legend_items:
        (tw, _), _ = cv2.getTextSize(names[i], cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        if x + 16 + tw > width:
            break
        cv2.rectangle(sheet, (x, y), (x + 12, y + 12), tuple(int(v) for v in palette[i]), -1)
        _text(sheet, names[i], (x + 16, y + 11), 0.4, box=False)
        x += 16 + tw + 12
    return sheet
