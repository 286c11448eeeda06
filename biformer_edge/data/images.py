"""Reading the user's images and videos: folders of images, single images and video files, decoded to uint8 RGB.

What it reads: PNG, JPEG, BMP, WebP and TIFF images (``IMAGE_SUFFIXES``, folders searched recursively, in sorted
order) and the videos OpenCV's FFmpeg backend decodes (``VIDEO_SUFFIXES``, frames sampled evenly). Grayscale is
expanded to RGB, alpha dropped, 16-bit and float images scaled to 8-bit, each conversion reported in one note.

The pixel cap: an image or video frame declaring more than ``MAX_PIXELS`` is refused in one line before anything is
allocated, from the few header bytes of a PNG, JPEG, BMP or WebP (``image_size``) or the video's declared frame size
(a decompression bomb in those never reaches the decoder), and right after decoding for the formats whose header is
not read (TIFF). Whatever OpenCV's own pixel limit refuses is one line too.

Why resize at decode: callers that pass ``size`` (parity, calibration, QAT) get each image resized to the model's
input as soon as it is decoded, so only model-sized images are ever held at once; a folder of large photographs costs
one full-size image of memory, not all of them.

Used by parity (``--data``), INT8 calibration (``--calib``) and QAT (``--data``). No torch.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from ..console import captured_native_stderr
from ..errors import UserError
from ..preprocess import resize

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
# The most pixels an image or video frame may declare: generous for photographs (a 100 MP camera), while a
# decompression bomb (a tiny PNG declaring 20000x20000) is refused from its header before anything is allocated.
MAX_PIXELS = 100_000_000


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as the header of a PNG, JPEG, BMP or WebP declares it, reading a few bytes; None for other
    formats or a header that does not parse (the decoder then has its say)."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:2] == b"BM" and len(head) >= 26:
                w, h = struct.unpack("<ii", head[18:26])
                return abs(w), abs(h)
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                return _webp_size(head)
            if head[:2] == b"\xff\xd8":
                f.seek(2)
                return _jpeg_size(f)
    except (OSError, struct.error):
        pass
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if kind == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    """Walk the JPEG segments to the first start-of-frame marker, which holds the dimensions."""
    for _ in range(1000):  # a bounded walk, whatever the file holds
        if f.read(1) != b"\xff":
            return None
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return None
        m = marker[0]
        if m == 0x01 or 0xD0 <= m <= 0xD7:  # markers without a length
            continue
        (length,) = struct.unpack(">H", f.read(2))
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">xHH", f.read(5))
            return w, h
        f.seek(length - 2, os.SEEK_CUR)
    return None


def check_pixels(width: int, height: int, path: Path, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise UserError(f"{path} is {width}x{height} ({width * height / 1e6:,.0f} megapixels), over the "
                        f"{MAX_PIXELS // 1_000_000} megapixels accepted: downscale it or remove it from {what}")


def read_rgb(path: Path, what: str = "--data") -> tuple[np.ndarray, str | None]:
    """One image as HxWx3 uint8 RGB, and a note saying what was converted (grayscale expanded to RGB, alpha
    dropped, 16-bit or float scaled to 8-bit; None when nothing was). An image whose header declares more than
    ``MAX_PIXELS`` is refused before it is decoded."""
    declared = image_size(path)
    if declared is not None:
        check_pixels(*declared, path, what)
    try:
        with captured_native_stderr() as decoder_notes:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. over OpenCV's pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS)
        reason = str(exc).strip().splitlines()[-1][:100]
        raise UserError(f"cannot decode image {path} ({reason}): downscale it or remove it from {what}") from None
    if raw is None or raw.size == 0:
        raise UserError(f"cannot decode image {path} (unreadable, or over OpenCV's pixel limit): convert it to a "
                        f"PNG/JPEG of a sane size or remove it from {what}")
    check_pixels(raw.shape[1], raw.shape[0], path, what)   # formats image_size does not read (TIFF)
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


def _read_images(paths: list[Path], limit: int, notes: list[str] | None, what: str,
                 size: tuple[int, int] | None) -> list[np.ndarray]:
    images = []
    for p in paths[:limit]:
        rgb, note = read_rgb(p, what)
        if note:
            line = f"note: {p}: {note}"
            if notes is None:
                print(line)
            else:
                notes.append(line)
        images.append(rgb if size is None else resize(rgb, size))  # the full-size image is freed right here
    return images


def read_video_frames(path: Path, limit: int, size: tuple[int, int] | None = None,
                      what: str = "--data") -> list[np.ndarray]:
    with captured_native_stderr() as decoder_notes:  # FFmpeg's own warnings: one note, not stray stderr lines
        frames = _decode_video(path, limit, size, what)
    if decoder_notes:
        print(f"note: {path}: {decoder_notes[0]}")
    return frames


def _decode_video(path: Path, limit: int, size: tuple[int, int] | None, what: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    if not cap.isOpened() or total <= 0:
        raise UserError(f"cannot decode video {path}: check the file, or convert it to H.264 MP4")
    check_pixels(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), path, what)
    frames, wanted = [], set(np.linspace(0, total - 1, min(limit, total)).astype(int).tolist())
    for i in range(total):
        ok, bgr = cap.read()
        if not ok:
            break
        if i in wanted:
            rgb = np.ascontiguousarray(bgr[..., ::-1])
            frames.append(rgb if size is None else resize(rgb, size))
    cap.release()
    if not frames:
        raise UserError(f"cannot decode video {path}: no frame could be read")
    return frames


def collect_images(data: str | Path, limit: int, notes: list[str] | None = None, what: str = "--data",
                   size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """RGB uint8 images from a folder of images, one image, or a video file (``limit`` frames sampled evenly).
    Conversion notes go to ``notes`` (or are printed when it is None); ``what`` names the option in errors. With
    ``size`` (H, W) each image is resized to it as soon as it is decoded, so only model-sized images are held."""
    path = Path(data)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist: pass an image folder, an image or a video file")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"{what} {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return _read_images(files, limit, notes, what, size)
    if not path.is_file():
        raise UserError(f"{what} {path} is not a regular file: pass an image folder, an image or a video file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_images([path], 1, notes, what, size)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return read_video_frames(path, limit, size, what)
    raise UserError(f"{what} {path}: unknown file type (use images {', '.join(sorted(IMAGE_SUFFIXES))} or a video)")
