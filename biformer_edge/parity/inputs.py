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


def _read_images(paths: list[Path], limit: int) -> list[np.ndarray]:
    images = []
    for p in paths[:limit]:
        try:
            with captured_native_stderr() as decoder_notes:
                bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        except cv2.error as exc:  # e.g. over OpenCV's pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS)
            reason = str(exc).strip().splitlines()[-1][:100]
            raise UserError(f"cannot decode image {p} ({reason}): downscale it or remove it from --data") from None
        if bgr is None:
            raise UserError(f"cannot decode image {p} (unreadable, or over OpenCV's pixel limit): convert it to a "
                            f"PNG/JPEG of a sane size or remove it")
        if decoder_notes:  # e.g. libjpeg's "Premature end of JPEG file": decoded, but the user should know
            print(f"note: {p}: {decoder_notes[0]}")
        images.append(bgr[..., ::-1])
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


def collect_images(data: str | Path, limit: int) -> list[np.ndarray]:
    """RGB uint8 images from a folder of images, one image, or a video file."""
    path = Path(data)
    if not path.exists():
        raise UserError(f"--data {path} does not exist: pass an image folder, an image or a video file")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--data {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return _read_images(files, limit)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_images([path], 1)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return read_video_frames(path, limit)
    raise UserError(f"--data {path}: unknown file type (use images {', '.join(sorted(IMAGE_SUFFIXES))} or a video)")


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
