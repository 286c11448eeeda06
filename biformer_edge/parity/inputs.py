"""Inputs parity runs on: synthetic scenes by default (deterministic), or the user's images / video (--data)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..console import captured_native_stderr
from ..data.synthetic import render_scene
from ..errors import UserError
from ..preprocess import preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def read_rgb(path: Path, what: str = "--data") -> tuple[np.ndarray, str | None]:
    """One image as HxWx3 uint8 RGB, and a note saying what was converted (grayscale expanded to RGB, alpha
    dropped, 16-bit or float scaled to 8-bit; None when nothing was)."""
    try:
        with captured_native_stderr() as decoder_notes:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. over OpenCV's pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS)
        reason = str(exc).strip().splitlines()[-1][:100]
        raise UserError(f"cannot decode image {path} ({reason}): downscale it or remove it from {what}") from None
    if raw is None or raw.size == 0:
        raise UserError(f"cannot decode image {path} (unreadable, or over OpenCV's pixel limit): convert it to a "
                        f"PNG/JPEG of a sane size or remove it from {what}")
    notes = list(decoder_notes[:1])  # e.g. libjpeg's "Premature end of JPEG file": decoded, but worth knowing
    if raw.dtype != np.uint8:
        if raw.dtype == np.uint16:
            raw = (raw >> 8).astype(np.uint8)
            notes.append("16-bit scaled to 8-bit")
        elif raw.dtype.kind == "f":
            raw = np.clip(raw * 255.0 if raw.max() <= 1.0 else raw, 0, 255).astype(np.uint8)
            notes.append("floating-point image scaled to 8-bit")
        else:
            raise UserError(f"image {path} has {raw.dtype} pixels: convert it to 8-bit RGB")
    if raw.ndim == 2 or (raw.ndim == 3 and raw.shape[2] == 1):
        rgb = cv2.cvtColor(raw.reshape(raw.shape[:2]), cv2.COLOR_GRAY2RGB)
        notes.append("grayscale expanded to RGB")
    elif raw.ndim == 3 and raw.shape[2] == 4:
        rgb = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
        notes.append("alpha channel dropped")
    elif raw.ndim == 3 and raw.shape[2] == 3:
        rgb = raw[..., ::-1]
    else:
        raise UserError(f"image {path} has shape {raw.shape}: convert it to an RGB image")
    return np.ascontiguousarray(rgb), ("; ".join(notes) or None)


def _read_images(paths: list[Path], limit: int, notes: list[str] | None, what: str) -> list[np.ndarray]:
    images = []
    for p in paths[:limit]:
        rgb, note = read_rgb(p, what)
        if note:
            line = f"note: {p}: {note}"
            if notes is None:
                print(line)
            else:
                notes.append(line)
        images.append(rgb)
    return images


def read_video_frames(path: Path, limit: int) -> list[np.ndarray]:
    with captured_native_stderr() as decoder_notes:  # FFmpeg's own warnings: one note, not stray stderr lines
        frames = _decode_video(path, limit)
    if decoder_notes:
        print(f"note: {path}: {decoder_notes[0]}")
    return frames


def _decode_video(path: Path, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    if not cap.isOpened() or total <= 0:
        raise UserError(f"cannot decode video {path}: check the file, or convert it to H.264 MP4")
    frames, wanted = [], set(np.linspace(0, total - 1, min(limit, total)).astype(int).tolist())
    for i in range(total):
        ok, bgr = cap.read()
        if not ok:
            break
        if i in wanted:
            frames.append(bgr[..., ::-1])
    cap.release()
    if not frames:
        raise UserError(f"cannot decode video {path}: no frame could be read")
    return frames


def collect_images(data: str | Path, limit: int, notes: list[str] | None = None,
                   what: str = "--data") -> list[np.ndarray]:
    """RGB uint8 images from a folder of images, one image, or a video file (``limit`` frames sampled evenly).
    Conversion notes go to ``notes`` (or are printed when it is None); ``what`` names the option in errors."""
    path = Path(data)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist: pass an image folder, an image or a video file")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"{what} {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return _read_images(files, limit, notes, what)
    if not path.is_file():
        raise UserError(f"{what} {path} is not a regular file: pass an image folder, an image or a video file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_images([path], 1, notes, what)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return read_video_frames(path, limit)
    raise UserError(f"{what} {path}: unknown file type (use images {', '.join(sorted(IMAGE_SUFFIXES))} or a video)")


def parity_inputs(input_shape: tuple[int, int, int, int], data: str | Path | None = None,
                  samples: int = 4) -> tuple[np.ndarray, str]:
    """Batches of the artifact's static shape: (B, N, 3, H, W) float32, and a description of their source."""
    N, _, H, W = input_shape
    n_batches = max(1, -(-samples // N))
    if data is None:
        images = [render_scene(seed, (H, W))[0] for seed in range(n_batches * N)]
        source = f"synthetic scenes 0..{n_batches * N - 1}"
    else:
        images = collect_images(data, n_batches * N)
        images = (images * (n_batches * N))[: n_batches * N]  # repeat a short set to fill the static batch
        source = str(data)
    x = np.stack([preprocess(im, (H, W)) for im in images]).astype(np.float32)
    return x.reshape(n_batches, N, 3, H, W), source
