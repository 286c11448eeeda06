#!/usr/bin/env python3
"""Video segmentation demo: run an exported BiFormer artifact on a video file, a camera, a GStreamer pipeline, the
Jetson CSI camera or a synthetic clip, and write an annotated MP4, a contact sheet and a timing/parity JSON.

    python apps/video_segmentation.py --artifact artifacts/biformer_seg_demo-openvino-fp32 \\
        --input synthetic --output demo.mp4 [--compare]

Every runtime gets the same pre/post-processing: ``preprocess()`` to the artifact's input size, ``Session.run``,
``to_labels`` (argmax at the model's output resolution), then a nearest-neighbour upsample of the label map to the
frame size for display. Nothing depends on the artifact's precision, so FP32, FP16 and INT8 artifacts run alike.

Outputs are written atomically: OUT (the video), the sheet PNG and OUT.json go to temporary files beside OUT and
are renamed into place only when the whole run succeeded; on an error or Ctrl-C nothing is left behind.

Exit status: 0 written, 2 bad input or environment (one ``error: ...`` line on stderr), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2  # a core dependency of biformer_edge
import numpy as np

from biformer_edge.targets import AUTO_ORDER
from biformer_edge.data import overlay
from biformer_edge.errors import UserError

STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")
BACKENDS = AUTO_ORDER + ("torch",)
BACKEND_ALIASES = {"trt": "tensorrt", "ov": "openvino", "ort": "onnxruntime", "onnx": "onnxruntime",
                   "pytorch": "torch"}
SYNTHETIC_SECONDS = 10.0
LIVE_SECONDS = 10.0          # a camera has no end: record this long unless --seconds/--frames say otherwise
DEFAULT_FPS = 30.0
CLIP_SEGMENT = 300           # synthetic clips longer than this are chained from several seeds (SceneClip's advice)
SHEET_ROWS = 4
SHEET_CANDIDATES = 16        # frames kept for the sheet (evenly thinned while the clip runs)
SHEET_CELL = 192             # sheet cell height in pixels
REFERENCE_BATCH = 8          # --compare: frames per FP32 reference run


# ------------------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    from biformer_edge.console import OneLineParser

    p = OneLineParser(prog="video_segmentation.py",
                      description="Segment a video with an exported BiFormer artifact; write an annotated MP4, a "
                                  "contact sheet (input | FP32 reference | deployed) and per-stage timings.")
    p.add_argument("--artifact", required=True, help="artifact directory written by biformer-export")
    p.add_argument("--input", required=True, metavar="SOURCE",
                   help="video file, camera index (0), GStreamer pipeline (contains '!'), 'csi' (Jetson CSI "
                        "camera) or 'synthetic'")
    p.add_argument("--output", required=True, metavar="OUT.mp4", help="annotated video (mp4v)")
    p.add_argument("--backend", help=f"runtime: {', '.join(BACKENDS)} (default: the first of "
                                     f"{', '.join(AUTO_ORDER)} that can run the artifact here, else torch)")
    p.add_argument("--compare", action="store_true",
                   help="also run the FP32 PyTorch reference on every frame (timed separately, not in the FPS): "
                        "pixel agreement and flicker against it")
    p.add_argument("--frames", type=int, help="process at most N frames")
    p.add_argument("--seconds", type=float,
                   help=f"process S seconds of video (synthetic default {SYNTHETIC_SECONDS:g}; cameras "
                        f"default {LIVE_SECONDS:g} s of wall time)")
    p.add_argument("--fps", type=float, help=f"synthetic clip / CSI capture frame rate and the output video's "
                                            f"(default: the source's, {DEFAULT_FPS:g} if it has none)")
    p.add_argument("--size", nargs=2, type=int, default=(256, 256), metavar=("H", "W"),
                   help="synthetic frame size (default 256 256)")
    p.add_argument("--seed", type=int, default=0, help="synthetic clip seed (default 0)")
    p.add_argument("--sheet", metavar="OUT.png", help="contact sheet path (default: OUT with a .png suffix)")
    p.add_argument("--precision-hint", choices=("f32", "f16", "bf16"),
                   help="openvino INFERENCE_PRECISION_HINT (default: the one its parity check used for this "
                        "artifact's precision)")
    p.add_argument("--no-display-legend", dest="legend", action="store_false", help="no class legend on the video")
    p.add_argument("--checkpoint", help="the checkpoint the artifact was exported from, if it has moved (for "
                                        "--compare, --backend torch and the sheet's reference column)")
    g = p.add_argument_group("Jetson CSI camera (--input csi)")
    g.add_argument("--csi-size", nargs=2, type=int, default=(1280, 720), metavar=("W", "H"),
                   help="capture size (default 1280 720); the frame rate is --fps (default 30)")
    g.add_argument("--csi-sensor", type=int, default=0, help="sensor-id (default 0)")
    g.add_argument("--csi-flip", type=int, default=0, help="nvvidconv flip-method 0-7 (default 0)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    a = build_parser().parse_args(argv)
    if a.frames is not None and a.frames < 1:
        raise UserError(f"--frames must be >= 1, not {a.frames}")
    if a.seconds is not None and not a.seconds > 0:
        raise UserError(f"--seconds must be > 0, not {a.seconds:g}")
    if a.fps is not None and not 0 < a.fps <= 1000:
        raise UserError(f"--fps must be in (0, 1000], not {a.fps:g}")
    if min(a.size) < 16:
        raise UserError(f"--size {a.size[0]} {a.size[1]}: frames must be at least 16x16")
    if min(a.csi_size) < 16:
        raise UserError(f"--csi-size {a.csi_size[0]} {a.csi_size[1]} is too small")
    if a.backend:
        a.backend = BACKEND_ALIASES.get(a.backend.lower(), a.backend.lower())
        if a.backend not in BACKENDS:
            raise UserError(f"unknown --backend '{a.backend}': choose one of {', '.join(BACKENDS)}")
    return a


# ---------------------------------------------------------------------------------------------------------- sources


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
        from biformer_edge.data import SceneClip

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
    """The Jetson CSI camera (Argus) as a GStreamer pipeline ending in a BGR appsink that keeps only the newest frame."""
    num, den = (int(round(fps)), 1) if abs(fps - round(fps)) < 1e-6 else (int(round(fps * 1000)), 1000)
    return (f"nvarguscamerasrc sensor-id={sensor} ! "
            f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={num}/{den}, format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, width={width}, height={height}, format=BGRx ! "
            f"videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def _gstreamer_in_opencv() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def open_source(args) -> FrameSource:
    spec = str(args.input).strip()
    if spec == "synthetic":
        fps = args.fps or DEFAULT_FPS
        n = max(1, round((args.seconds or SYNTHETIC_SECONDS) * fps))
        return SyntheticSource(args.seed, tuple(args.size), n, fps)
    if spec == "csi" or "!" in spec:
        if spec == "csi":
            w, h = args.csi_size
            pipeline, what, size = csi_pipeline(w, h, args.fps or DEFAULT_FPS, args.csi_sensor, args.csi_flip), \
                f"CSI camera {args.csi_sensor} ({w}x{h})", (h, w)
        else:
            pipeline, what, size = spec, "GStreamer pipeline", None
        if not _gstreamer_in_opencv():
            raise UserError(f"{what}: this OpenCV ({cv2.__version__}) was built without GStreamer: use one that has "
                            f"it (on a Jetson, JetPack's python3-opencv, not pip's opencv-python)")
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            hint = ("is the camera connected? try 'sudo systemctl restart nvargus-daemon' and check it with "
                    "gst-launch-1.0") if spec == "csi" else "check it with gst-launch-1.0 and end it in appsink"
            raise UserError(f"{what} did not open: {hint}")
        return CaptureSource(cap, what, live=True, size=size)
    if spec.isdigit():
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


# --------------------------------------------------------------------------------------------------------- sessions


@dataclass
class Deployed:
    session: object
    backend: str
    label: str                      # for the HUD / sheet, e.g. "openvino fp16 (f16 compute)"
    notes: list[str] = field(default_factory=list)


def fp32_model(manifest: dict, checkpoint: str | None, why: str):
    """The FP32 model the artifact came from (parity.check.reference_model), on CUDA when there is one."""
    from biformer_edge.parity.check import reference_device, reference_model

    weights = manifest.get("weights")
    if weights == "random":
        raise UserError(f"{why} needs the FP32 model, but {manifest.get('model')} was exported with random weights: "
                        f"re-export it with --checkpoint")
    if weights == "checkpoint" and not checkpoint:
        stored = manifest.get("checkpoint_path")
        if not stored or not Path(stored).is_file():
            raise UserError(f"{why} needs the checkpoint {manifest.get('model')} was exported from ({stored}), which "
                            f"is not here: pass --checkpoint PATH")
    if checkpoint and not Path(checkpoint).is_file():
        raise UserError(f"--checkpoint {checkpoint}: no such file")
    model = reference_model(manifest, checkpoint)
    return model.float().to(reference_device("auto")).eval()


def torch_session(manifest: dict, checkpoint: str | None, why: str):
    from biformer_edge.backends.tracing import TorchSession
    return TorchSession(fp32_model(manifest, checkpoint, why))


def default_precision_hint(manifest: dict) -> str | None:
    """The OpenVINO hint the artifact's parity check used for its precision (export profile), if any."""
    from biformer_edge.targets import load_profile
    try:
        hints = load_profile(manifest.get("target", "openvino")).get("parity", {}).get("hint", {})
    except UserError:
        return None
    return hints.get(manifest.get("precision"))


def open_deployed(artifact: Path, manifest: dict, backend: str | None, precision_hint: str | None,
                  checkpoint: str | None) -> Deployed:
    """The artifact's runtime session: ``backend`` or the first of AUTO_ORDER that can run it here, else PyTorch."""
    from biformer_edge.targets import first_runnable, open_session

    notes = []
    if backend is None:
        backend, reasons = first_runnable(artifact)
        if backend is None:
            backend = "torch"
            why = "; ".join(f"{k}: {v}" for k, v in reasons.items())
            notes.append(f"no runtime can run this artifact here ({why}): running the FP32 PyTorch model")
    if precision_hint and backend != "openvino":
        notes.append(f"--precision-hint {precision_hint} only applies to openvino: ignored for {backend}")
    precision = manifest.get("precision", "?")
    if backend == "torch":
        session = torch_session(manifest, checkpoint, "--backend torch")
        return Deployed(session, "torch", f"torch fp32 ({session.device})", notes)
    options = {}
    if backend == "openvino":
        hint = precision_hint or default_precision_hint(manifest)
        if hint:
            options["precision_hint"] = hint
    try:
        session = open_session(backend, artifact, manifest, **options)
    except UserError:
        raise
    except Exception as exc:  # a runtime that cannot load the files (corrupt, wrong version): say so in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{backend} cannot load {artifact}: {first[:300]} (re-export or re-copy the artifact)") \
            from None
    label = f"{backend} {precision}"
    ran = getattr(session, "inference_precision", None)
    if ran:
        label += f" ({ran} compute)"
        asked = getattr(session, "precision_hint", None)
        if asked and asked != ran:
            notes.append(f"openvino was asked to compute in {asked} but this CPU computes in {ran} (no native "
                         f"{asked} support): the numbers are those of {ran} inference")
    device = getattr(session, "device", "cpu")
    if device and device != "cpu":
        label += f" [{device}]"
    return Deployed(session, backend, label, notes)


def load_artifact(path: str) -> tuple[Path, dict]:
    from biformer_edge.artifact import read_manifest, verify_files

    artifact = Path(path)
    manifest = read_manifest(artifact)
    task = manifest.get("task")
    if task != "segmentation":
        raise UserError(f"this demo needs a segmentation artifact; {artifact} was exported from a {task} model "
                        f"({manifest.get('model')}): export a segmentation model, e.g. biformer-export --target "
                        f"{manifest.get('target', 'openvino')} --model biformer_seg_demo")
    shape = manifest.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 4):
        raise UserError(f"{artifact}/manifest.json has no valid input_shape: re-export the artifact")
    changed = verify_files(artifact, manifest)
    if changed:
        raise UserError(f"{artifact}: {changed[0]}: copy the whole artifact directory again")
    return artifact, manifest


# ------------------------------------------------------------------------------------------------ frame processing


def class_names_and_palette(num_classes: int) -> tuple[list[str], np.ndarray]:
    """The demo's classes and colours when the model has that many classes, else 'class i' and a fixed palette."""
    from biformer_edge.data import CLASSES, PALETTE

    if num_classes == len(CLASSES):
        return list(CLASSES), np.asarray(PALETTE)
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 179, np.full(num_classes, 200), np.full(num_classes, 230)], 1).astype(np.uint8)
    palette = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    return [f"class {i}" for i in range(num_classes)], palette


def infer(session, rgb: np.ndarray, input_hw: tuple[int, int], batch: int, timer: dict):
    """preprocess() to the artifact's input size, then Session.run. Returns (the 1x3xHxW input, logits of the first
    image); fills timer["preprocess"] and timer["inference"]. A batch > 1 artifact gets the frame repeated."""
    from biformer_edge.preprocess import preprocess

    t0 = time.perf_counter()
    x = preprocess(rgb, input_hw)[None]
    batch_x = np.repeat(x, batch, axis=0) if batch > 1 else x
    t1 = time.perf_counter()
    logits = session.run(batch_x).logits
    t2 = time.perf_counter()
    timer["preprocess"], timer["inference"] = t1 - t0, t2 - t1
    return x, logits[:1]


class Upsampler:
    """Nearest-neighbour upsampling of (h, w) label maps to (H, W) with precomputed pixel-centre indices."""

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]):
        (h, w), (H, W) = src_hw, dst_hw
        self.rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.intp), h - 1)
        self.cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.intp), w - 1)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        return labels[self.rows[:, None], self.cols[None, :]]


def legend(image: np.ndarray, labels: np.ndarray, names: list[str], palette: np.ndarray) -> np.ndarray:
    """Class legend (top-left). Up to 12 classes: all of them; more: the ones on screen, largest first."""
    from biformer_edge.data import draw_legend

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


class Comparison:
    """--compare: the FP32 PyTorch reference on every frame's input, run in batches of REFERENCE_BATCH frames between
    deployed frames and timed apart. Batching matters on a CPU: a PyTorch call after every frame leaves its thread
    pool spinning while the deployed runtime runs the next frame, which slowed that runtime down by 30 % and more
    in measurements here."""

    def __init__(self, session, label_dtype, batch: int = REFERENCE_BATCH):
        self.session, self.label_dtype, self.batch = session, label_dtype, batch
        self.pending, self.maps, self.agreements, self.seconds = [], [], [], 0.0

    def add(self, x: np.ndarray, labels: np.ndarray, item: dict | None = None) -> None:
        self.pending.append((x, labels, item))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        from biformer_edge.parity.metrics import agreement, to_labels

        if not self.pending:
            return
        t0 = time.perf_counter()
        refs = to_labels(self.session.run(np.concatenate([x for x, _, _ in self.pending])).logits)
        self.seconds += time.perf_counter() - t0
        for (_, labels, item), ref in zip(self.pending, refs):
            ref = ref.astype(self.label_dtype)
            self.maps.append(ref)
            self.agreements.append(agreement(ref, labels))
            if item is not None:
                item["reference"], item["agreement"] = ref, self.agreements[-1]
        self.pending = []

    def summary(self, deployed_flicker: float) -> dict:
        from biformer_edge.parity.metrics import flicker_rate

        self.flush()
        ref_flicker = flicker_rate(np.stack(self.maps))
        rel = (deployed_flicker - ref_flicker) / ref_flicker if ref_flicker > 0 else \
            (0.0 if deployed_flicker == 0 else None)
        return {
            "reference": f"torch fp32 ({getattr(self.session, 'device', 'cpu')})",
            "reference_ms": round(1e3 * self.seconds / len(self.maps), 3), "reference_batch": self.batch,
            "pixel_agreement_mean": round(float(np.mean(self.agreements)), 6),
            "pixel_agreement_min": round(float(np.min(self.agreements)), 6),
            "pixel_agreement_per_frame": [round(float(a), 6) for a in self.agreements],
            "reference_flicker_rate": round(ref_flicker, 6), "deployed_flicker_rate": round(deployed_flicker, 6),
            "flicker_relative_diff": None if rel is None else round(rel, 6),
        }


# ------------------------------------------------------------------------------------------------------------- sheet


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


def _thumb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = SHEET_CELL / h
    return cv2.resize(rgb, (max(1, round(w * scale)), SHEET_CELL), interpolation=cv2.INTER_AREA)


def _text(img, text, org, scale=0.42, box=True):
    """White text with its baseline at ``org``, on a darkened box so it reads on any background."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    if box:
        roi = img[max(0, y - th - 3):min(img.shape[0], y + base + 1), max(0, x - 3):min(img.shape[1], x + tw + 3)]
        roi[:] = (roi.astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def sheet_reference(picked: list, reference, deployed: Deployed, manifest: dict, checkpoint: str | None,
                    notes: list[str], log) -> str:
    """FP32 reference labels for the sheet's frames: from --compare, else computed now on their stored inputs. Without
    an FP32 model (random-weight exports, missing checkpoint) the column says so. Returns the column's label."""
    from biformer_edge.parity.metrics import agreement, to_labels

    if not picked:
        return ""
    if reference is None:
        try:
            reference = deployed.session if deployed.backend == "torch" else \
                torch_session(manifest, checkpoint, "the sheet's reference column")
        except UserError as exc:
            notes.append(f"sheet: no FP32 reference column ({exc})")
            log(f"note: {notes[-1]}")
            return "unavailable"
        refs = to_labels(reference.run(np.concatenate([item["x"] for _, item in picked])).logits)  # one batch
        for (_, item), ref in zip(picked, refs):
            item["reference"] = ref
            item["agreement"] = agreement(ref, item["deployed"])
    return f"torch fp32 ({getattr(reference, 'device', 'cpu')})"


def contact_sheet(rows: list[dict], titles: list[str], names: list[str], palette: np.ndarray) -> np.ndarray:
    """Rows of input | FP32 reference | deployed, titles on top, a class legend below. Each row dict holds ``thumb``
    (RGB), ``deployed`` and ``reference`` (label maps at model resolution, reference may be None), ``index`` and
    ``agreement`` (or None)."""
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
        thumb = row["thumb"]
        up = Upsampler(row["deployed"].shape, thumb.shape[:2])
        cells = [thumb.copy()]
        if row["reference"] is not None:
            cells.append(overlay(thumb, up(row["reference"]), palette=palette, skip_background=skip_bg))
        else:
            blank = np.full_like(thumb, 48)
            _text(blank, "no FP32 model", (8, SHEET_CELL // 2), box=False)
            cells.append(blank)
        cells.append(overlay(thumb, up(row["deployed"]), palette=palette, skip_background=skip_bg))
        _text(cells[0], f"frame {row['index']}", (4, SHEET_CELL - 8))
        if row.get("agreement") is not None:
            _text(cells[2], f"agree {100 * row['agreement']:.2f}%", (4, SHEET_CELL - 8))
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


# ------------------------------------------------------------------------------------------------------------ output


class AtomicOutputs:
    """Temporary files beside their final paths; ``commit()`` renames them all into place, ``discard()`` (or an
    exception inside ``with``) removes them, so a failed or interrupted run leaves no output."""

    def __init__(self):
        self.pending: list[tuple[Path, Path]] = []

    def temp(self, final: Path) -> Path:
        final = Path(final)
        if final.is_dir():
            raise UserError(f"{final} is a directory: choose a file name")
        if not final.parent.is_dir():
            raise UserError(f"cannot write {final}: directory {final.parent} does not exist")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{final.stem}.tmp-", suffix=final.suffix, dir=final.parent)
        except OSError as exc:
            raise UserError(f"cannot write to {final.parent} ({exc.strerror}): choose a writable --output") from None
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)
        self.pending.append((Path(name), final))
        return Path(name)

    def commit(self) -> None:
        done = []
        try:
            for tmp, final in self.pending:
                os.replace(tmp, final)
                done.append(final)
        except OSError as exc:
            for final in done:
                final.unlink(missing_ok=True)
            raise UserError(f"cannot write {final} ({exc.strerror})") from None
        finally:
            self.discard()

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.discard()
        return False


def check_writable(path: Path) -> None:
    """Fail early, before any work, when ``path`` cannot be written."""
    if path.is_dir():
        raise UserError(f"{path} is a directory: choose a file name")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {parent}: choose a writable --output")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot overwrite {path}: it is read-only")


def open_writer(path: Path, fps: float, size_hw: tuple[int, int], final: Path):
    h, w = size_hw
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (int(w), int(h)))
    if not writer.isOpened():
        raise UserError(f"cannot write {final}: OpenCV's VideoWriter could not open an mp4v stream for "
                        f"'{final.suffix or 'no suffix'}' files: use an .mp4 output path")
    return writer


# --------------------------------------------------------------------------------------------------------- the run


def run(args, log=print) -> dict:
    """The whole demo; returns the summary written to OUT.json."""
    out = Path(args.output)
    sheet_path = Path(args.sheet) if args.sheet else out.with_suffix(".png")
    json_path = out.with_suffix(".json")
    if len({out.resolve(), sheet_path.resolve(), json_path.resolve()}) < 3:
        raise UserError(f"--output {out} and --sheet {sheet_path} collide with each other or with {json_path}: "
                        f"use an .mp4 output and a .png sheet")

    for path in (out, sheet_path, json_path):
        check_writable(path)

    artifact, manifest = load_artifact(args.artifact)
    batch, _, in_h, in_w = (int(v) for v in manifest["input_shape"])
    source = open_source(args)
    try:
        deployed = open_deployed(artifact, manifest, args.backend, args.precision_hint, args.checkpoint)
        reference = None
        if args.compare:
            reference = deployed.session if deployed.backend == "torch" else \
                torch_session(manifest, args.checkpoint, "--compare")
        with AtomicOutputs() as outputs:
            tmp_video, tmp_sheet, tmp_json = outputs.temp(out), outputs.temp(sheet_path), outputs.temp(json_path)
            summary = process(args, source, artifact, manifest, deployed, reference, tmp_video, out, log,
                              batch, (in_h, in_w))
            source.close()

            picked = summary.pop("_sheet")
            names, palette = summary.pop("_classes")
            ref_label = sheet_reference(picked, reference, deployed, manifest, args.checkpoint, summary["notes"], log)
            rows = [{"index": i, **item} for i, item in picked]
            sheet = contact_sheet(rows, ["input", f"FP32 reference\n{ref_label}", f"deployed\n{deployed.label}"],
                                  names, palette)
            ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
            if not ok:
                raise UserError(f"cannot encode the contact sheet {sheet_path}")
            tmp_sheet.write_bytes(png.tobytes())

            summary["outputs"] = {"video": str(out), "sheet": str(sheet_path), "json": str(json_path)}
            tmp_json.write_text(json.dumps(summary, indent=2) + "\n")
            outputs.commit()
    finally:
        source.close()
    log(format_table(summary))
    log(f"wrote {out}, {sheet_path}, {json_path}")
    return summary


def process(args, source: FrameSource, artifact: Path, manifest: dict, deployed: Deployed, reference, tmp_video: Path,
            out: Path, log, batch: int, input_hw: tuple[int, int]) -> dict:
    """The frame loop: decode -> preprocess -> inference -> postprocess (labels, upsample, overlay) -> encode, with
    per-stage timings; the FP32 reference (``--compare``) runs after each frame, timed apart."""
    from tqdm import tqdm

    from biformer_edge.parity.metrics import flicker_rate, to_labels

    max_frames, max_seconds = frame_limit(args, source)
    fps_out = args.fps or source.fps
    frame_hw = tuple(int(v) for v in source.size)

    # warm-up (not timed): lazy runtime initialisation, and the output resolution / class count
    x0 = np.zeros((batch, 3, *input_hw), np.float32)
    probe = deployed.session.run(x0).logits
    num_classes = int(manifest.get("num_classes") or probe.shape[1])
    out_hw = tuple(int(v) for v in probe.shape[2:4])
    if reference is not None and reference is not deployed.session:
        reference.run(x0)
    names, palette = class_names_and_palette(num_classes)
    skip_bg = names[0] == "background"
    upsample = Upsampler(out_hw, frame_hw)
    label_dtype = np.uint8 if num_classes <= 256 else np.int32
    # first use of OpenCV's drawing code (fonts, kernels) is slow: not part of the per-frame numbers either
    warm = overlay(np.zeros((*frame_hw, 3), np.uint8), upsample(to_labels(probe)[0].astype(label_dtype)),
                   palette=palette, skip_background=skip_bg)
    hud(legend(warm, to_labels(probe)[0], names, palette), "warm-up")

    notes = list(deployed.notes)
    for note in notes:
        log(f"note: {note}")
    if batch > 1:
        notes.append(f"the artifact takes batches of {batch}: each frame is repeated to fill the batch")
        log(f"note: {notes[-1]}")
    log(f"artifact {artifact} ({manifest.get('model')}, {manifest.get('target')} {manifest.get('precision')}, "
        f"{manifest.get('weights')} weights) on {deployed.label}")
    limit = (f"{max_frames} frames" if max_frames else "") + \
        (f"{' / ' if max_frames else ''}{max_seconds:g} s" if max_seconds else "")
    log(f"input {source.name}: {frame_hw[0]}x{frame_hw[1]} -> model {input_hw[0]}x{input_hw[1]} -> labels "
        f"{out_hw[0]}x{out_hw[1]}{'; ' + limit if limit else ''}")

    writer = open_writer(tmp_video, fps_out, frame_hw, out)
    times = {s: [] for s in STAGES}
    dep_maps = []
    comparison = Comparison(reference, label_dtype) if reference is not None else None
    picker = SheetPicker()
    recent = deque(maxlen=30)
    resized = 0
    total = max_frames if max_frames else source.total
    started = time.perf_counter()
    try:
        with tqdm(total=total, unit="frame", desc="segmenting", leave=False, mininterval=0.5,
                  file=sys.stderr, disable=None) as bar:
            index = 0
            while max_frames is None or index < max_frames:
                if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                    break
                timer = {}
                t0 = time.perf_counter()
                rgb = source.read()
                if rgb is None:
                    break
                if rgb.shape[:2] != frame_hw:
                    if resized == 0:
                        msg = (f"frame {index} is {rgb.shape[0]}x{rgb.shape[1]}, not the stream's "
                               f"{frame_hw[0]}x{frame_hw[1]}: resizing such frames")
                        notes.append(msg)
                        tqdm.write(f"note: {msg}", file=sys.stdout)
                    resized += 1
                    rgb = cv2.resize(rgb, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_LINEAR)
                timer["decode"] = time.perf_counter() - t0

                x, logits = infer(deployed.session, rgb, input_hw, batch, timer)

                t3 = time.perf_counter()
                labels = to_labels(logits)[0].astype(label_dtype)   # argmax at the model's output resolution
                shown = overlay(rgb, upsample(labels), palette=palette, skip_background=skip_bg)
                if args.legend:
                    shown = legend(shown, labels, names, palette)
                fps_now = len(recent) / sum(recent) if recent and sum(recent) > 0 else 0.0
                hud(shown, f"{deployed.label} | {fps_now:.1f} FPS | {1e3 * timer['inference']:.1f} ms")
                t4 = time.perf_counter()
                writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
                t5 = time.perf_counter()
                timer["postprocess"], timer["encode"] = t4 - t3, t5 - t4
                for s in STAGES:
                    times[s].append(timer[s])
                recent.append(sum(timer[s] for s in STAGES))
                dep_maps.append(labels)

                item = None
                if picker.wants(index):
                    item = {"thumb": _thumb(rgb), "x": x, "deployed": labels, "reference": None, "agreement": None}
                    picker.add(index, item)
                if comparison is not None:
                    comparison.add(x, labels, item)
                index += 1
                bar.update(1)
    finally:
        writer.release()
    wall = time.perf_counter() - started

    n = len(dep_maps)
    if n == 0:
        raise UserError(f"{source.name} gave no frames to process")
    if not tmp_video.is_file() or tmp_video.stat().st_size == 0:
        raise UserError(f"cannot write {out}: the video writer produced no data (disk full?)")

    stage_ms = {s: 1e3 * float(np.mean(times[s])) for s in STAGES}
    dep_flicker = flicker_rate(np.stack(dep_maps))
    e2e_ms = sum(stage_ms.values())
    summary = {
        "artifact": str(artifact), "model": manifest.get("model"), "target": manifest.get("target"),
        "precision": manifest.get("precision"), "weights": manifest.get("weights"),
        "backend": deployed.backend, "backend_label": deployed.label,
        "device": getattr(deployed.session, "device", "cpu"),
        "precision_hint": getattr(deployed.session, "precision_hint", None),
        "inference_precision": getattr(deployed.session, "inference_precision", None),
        "source": source.name, "frames": n, "frame_size": list(frame_hw), "model_input": list(input_hw),
        "model_output": list(out_hw), "output_fps": fps_out, "resized_frames": resized,
        "stage_ms": {s: round(v, 3) for s, v in stage_ms.items()},
        "end_to_end_ms": round(e2e_ms, 3), "fps": round(1e3 / e2e_ms, 2) if e2e_ms > 0 else None,
        "wall_s": round(wall, 3), "flicker_rate": round(dep_flicker, 6),
        "compare": None, "notes": notes,
    }
    if comparison is not None:
        summary["compare"] = comparison.summary(dep_flicker)
    summary["_sheet"] = picker.pick(SHEET_ROWS)
    summary["_classes"] = (names, palette)
    return summary


def format_table(summary: dict) -> str:
    lines = [f"{summary['frames']} frames {summary['frame_size'][0]}x{summary['frame_size'][1]}, "
             f"{summary['backend_label']}", f"{'stage':<24}{'ms/frame':>10}"]
    for s in STAGES:
        lines.append(f"{s:<24}{summary['stage_ms'][s]:>10.2f}")
    lines.append(f"{'end to end':<24}{summary['end_to_end_ms']:>10.2f}   {summary['fps']:.1f} FPS")
    cmp = summary.get("compare")
    if cmp:
        lines.append(f"{'reference (not in FPS)':<24}{cmp['reference_ms']:>10.2f}   {cmp['reference']}, batches of "
                     f"{cmp['reference_batch']}")
    lines.append(f"flicker rate {summary['flicker_rate']:.4f}")
    if cmp:
        rel = cmp["flicker_relative_diff"]
        lines.append(f"pixel agreement vs FP32: mean {cmp['pixel_agreement_mean']:.5f}, min "
                     f"{cmp['pixel_agreement_min']:.5f}; reference flicker {cmp['reference_flicker_rate']:.4f} "
                     f"(relative difference {'n/a' if rel is None else f'{rel:+.2%}'})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------- main


def quiet_opencv() -> None:
    """OpenCV / FFmpeg print their own warnings for a missing camera or a broken file; the demo reports those as one
    'error:' line, so silence them (OPENCV_LOG_LEVEL / OPENCV_FFMPEG_LOGLEVEL set by the user still win)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if cv2 is not None and "OPENCV_LOG_LEVEL" not in os.environ:
        try:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:
            pass


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Run the demo; errors a user can fix: one 'error: ...' line on stderr and status 2; Ctrl-C: 130."""
    import warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    quiet_opencv()
    previous = None
    if __name__ == "__main__":
        previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        try:
            args = parse_args(argv)
        except SystemExit as exc:  # argparse: usage error (already printed as one line) or --help
            return exc.code if isinstance(exc.code, int) else 2
        run(args, log=lambda msg: print(msg, flush=True))
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
