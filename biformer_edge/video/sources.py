"""Where the demo's frames come from: a video file, a camera index, a GStreamer pipeline, the Jetson CSI camera or
a synthetic clip, each behind :class:`FrameSource` (RGB uint8 frames). numpy and OpenCV only.

A source that cannot open, or opens and yields nothing, is a :class:`UserError` raised before any output exists.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError

SYNTHETIC_SECONDS = 10.0
LIVE_SECONDS = 10.0          # a camera has no end: record this long unless --seconds/--frames say otherwise
DEFAULT_FPS = 30.0
CLIP_SEGMENT = 300           # synthetic clips longer than this are chained from several seeds (SceneClip's advice)


class FrameSource:
    """Yields RGB uint8 frames. ``size`` (H, W) is the frame size the stream announced (every frame is shown at it);
    ``fps`` the source's frame rate; ``total`` the frame count when known; ``live`` for cameras."""

    name = "?"
    size: tuple[int, int] | None = None
    fps = DEFAULT_FPS
    total: int | None = None
    live = False

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SyntheticSource(FrameSource):
    """biformer_edge.data's synthetic scenes: ``n_frames`` at ``fps`` from SceneClip(seed); longer clips are chained
    from SceneClips of consecutive seeds (a scene cut every CLIP_SEGMENT frames)."""

    def __init__(self, seed: int, size: tuple[int, int], n_frames: int, fps: float):
        from ..data import SceneClip

        self._clip_cls = SceneClip
        self.seed, self.size, self.total, self.fps = int(seed), tuple(size), int(n_frames), float(fps)
        self.name = f"synthetic (seed {seed}, {size[0]}x{size[1]}, {n_frames} frames at {fps:g} fps)"
        self._index, self._clip_start = 0, 0
        self._clip = SceneClip(self.seed, self.size, max(2, min(CLIP_SEGMENT, self.total)), self.fps)

    def read(self):
        if self._index >= self.total:
            return None
        if self._index - self._clip_start >= len(self._clip):
            self._clip_start = self._index
            length = max(2, min(CLIP_SEGMENT, self.total - self._index))
            self._clip = self._clip_cls(self.seed + self._index // CLIP_SEGMENT, self.size, length, self.fps)
        image, _ = self._clip.render(self._index - self._clip_start)
        self._index += 1
        return image


class CaptureSource(FrameSource):
    """An opened cv2.VideoCapture (file, camera or GStreamer). The first frame is read on open, so a source that
    opens but yields nothing is reported before any output is created."""

    def __init__(self, cap, name: str, live: bool, size: tuple[int, int] | None = None):
        self.cap, self.name, self.live = cap, name, live
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.total = count if count > 0 and not live else None
        self._first = self._read_rgb()
        if self._first is None:
            cap.release()
            raise UserError(f"{name} opened but gave no frame: " + (
                "check the camera (is another program using it?)" if live else
                "the file is empty or not a video OpenCV can decode; convert it to H.264 MP4"))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.size = size or ((h, w) if h > 0 and w > 0 else self._first.shape[:2])

    def _read_rgb(self):
        ok, frame = self.cap.read()
        if not ok or frame is None or frame.size == 0:
            return None
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        if frame.shape[2] == 4:
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def read(self):
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._read_rgb()

    def close(self):
        self.cap.release()


def csi_pipeline(width: int = 1280, height: int = 720, fps: float = 30, sensor: int = 0, flip: int = 0) -> str:
    """The Jetson CSI camera (Argus) as a GStreamer pipeline ending in a BGR appsink keeping only the newest frame."""
    num, den = (int(round(fps)), 1) if abs(fps - round(fps)) < 1e-6 else (int(round(fps * 1000)), 1000)
    return (f"nvarguscamerasrc sensor-id={sensor} ! "
            f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={num}/{den}, format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, width={width}, height={height}, format=BGRx ! "
            f"videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def gstreamer_in_opencv() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def source_kind(spec: str) -> str:
    """What ``--input`` names: 'synthetic', 'csi', 'gstreamer', 'camera' (an index) or 'file'."""
    spec = str(spec).strip()
    if spec in ("synthetic", "csi"):
        return spec
    if "!" in spec:
        return "gstreamer"
    return "camera" if spec.isdigit() else "file"


def input_file(spec: str) -> Path | None:
    """The file ``--input`` reads (a video file or a /dev node), which the run must never overwrite; else None."""
    return Path(str(spec).strip()) if source_kind(spec) == "file" else None


def open_source(args) -> FrameSource:
    spec = str(args.input).strip()
    kind = source_kind(spec)
    if kind == "synthetic":
        fps = args.fps or DEFAULT_FPS
        n = max(1, round((args.seconds or SYNTHETIC_SECONDS) * fps))
        return SyntheticSource(args.seed, tuple(args.size), n, fps)
    if kind in ("csi", "gstreamer"):
        if kind == "csi":
            w, h = args.csi_size
            pipeline, what, size = csi_pipeline(w, h, args.fps or DEFAULT_FPS, args.csi_sensor, args.csi_flip), \
                f"CSI camera {args.csi_sensor} ({w}x{h})", (h, w)
        else:
            pipeline, what, size = spec, "GStreamer pipeline", None
        if not gstreamer_in_opencv():
            raise UserError(f"{what}: this OpenCV ({cv2.__version__}) was built without GStreamer: use one that has "
                            f"it (on a Jetson, JetPack's python3-opencv, not pip's opencv-python)")
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            hint = ("is the camera connected? try 'sudo systemctl restart nvargus-daemon' and check it with "
                    "gst-launch-1.0") if kind == "csi" else "check it with gst-launch-1.0 and end it in appsink"
            raise UserError(f"{what} did not open: {hint}")
        return CaptureSource(cap, what, live=True, size=size)
    if kind == "camera":
        cap = cv2.VideoCapture(int(spec))
        if not cap.isOpened():
            raise UserError(f"camera {spec} did not open: check that it is connected and not used by another "
                            f"program (ls /dev/video*)")
        return CaptureSource(cap, f"camera {spec}", live=True)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"--input {spec}: no such file (pass a video file, a camera index, a GStreamer pipeline, "
                        f"'csi' or 'synthetic')")
    if not path.is_file() and not str(path).startswith("/dev/"):
        raise UserError(f"--input {spec} is not a file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError(f"cannot decode video {path}: check the file, or convert it to H.264 MP4")
    return CaptureSource(cap, f"video {path}", live=str(path).startswith("/dev/"))


def frame_limit(args, source: FrameSource) -> tuple[int | None, float | None]:
    """(max frames, max wall seconds). Files/synthetic: --seconds counts the source's frames; cameras: wall time."""
    frames = args.frames
    if source.live:
        seconds = args.seconds if args.seconds else (None if frames else LIVE_SECONDS)
        return frames, seconds
    if args.seconds and not isinstance(source, SyntheticSource):
        by_time = max(1, round(args.seconds * source.fps))
        frames = min(frames, by_time) if frames else by_time
    return frames, None
