"""Command line of the video demo (``apps/video_segmentation.py``): arguments, their checks, and the entry point
behind ``console.error_boundary`` (one ``error:`` line and exit 2 for what the user can fix, 130 on Ctrl-C, 143 on
SIGTERM, both with every temporary removed; ``--debug`` shows tracebacks)."""
from __future__ import annotations

import argparse

from ..console import OneLineParser, error_boundary, utf8_path
from ..errors import UserError
from ..targets import AUTO_ORDER, RUNTIMES, resolve_runtime
from .draw import UPSAMPLE_MODES
from .sources import DEFAULT_FPS, LIVE_SECONDS, SYNTHETIC_SECONDS


def build_parser(prog: str = "video_segmentation.py") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog,
                      description="Segment a video with an exported BiFormer artifact; write an annotated MP4, a "
                                  "contact sheet (input | FP32 reference | deployed) and per-stage timings.",
                      epilog="--debug (anywhere) shows the traceback of an internal error.")
    p.add_argument("--artifact", required=True, help="artifact directory written by biformer-export")
    p.add_argument("--input", required=True, metavar="SOURCE",
                   help="video file, camera index (0), GStreamer pipeline (contains '!'), 'csi' (Jetson CSI "
                        "camera) or 'synthetic'")
    p.add_argument("--output", required=True, metavar="OUT.mp4", help="annotated video (mp4v)")
    p.add_argument("--backend", help=f"runtime: {', '.join(RUNTIMES)} (default: the first of "
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
    p.add_argument("--upsample", choices=UPSAMPLE_MODES, default=UPSAMPLE_MODES[0],
                   help="how the model's output reaches the frame size for drawing: 'bilinear' resizes the class "
                        "scores and takes the argmax there (smooth edges, the default), 'nearest' repeats each "
                        "output pixel's label (blocks). Pixel agreement and flicker stay at the model's output "
                        "resolution either way")
    p.add_argument("--no-display-legend", dest="legend", action="store_false", help="no class legend on the video")
    p.add_argument("--checkpoint", help="the checkpoint the artifact was exported from, if it has moved (for "
                                        "--compare, --backend torch and the sheet's reference column)")
    g = p.add_argument_group("Jetson CSI camera (--input csi)")
    g.add_argument("--csi-size", nargs=2, type=int, default=(1280, 720), metavar=("W", "H"),
                   help="capture size (default 1280 720); the frame rate is --fps (default 30)")
    g.add_argument("--csi-sensor", type=int, default=0, help="sensor-id (default 0)")
    g.add_argument("--csi-flip", type=int, default=0, help="nvvidconv flip-method 0-7 (default 0)")
    return p


def parse_args(argv=None, prog: str = "video_segmentation.py") -> argparse.Namespace:
    a = build_parser(prog).parse_args(argv)
    if a.frames is not None and a.frames < 1:
        raise UserError(f"--frames must be >= 1, not {a.frames}")
    if a.seconds is not None and not 0 < a.seconds <= 24 * 3600:
        raise UserError(f"--seconds must be in (0, 86400], not {a.seconds:g}")
    if a.fps is not None and not 0 < a.fps <= 1000:
        raise UserError(f"--fps must be in (0, 1000], not {a.fps:g}")
    if min(a.size) < 16 or max(a.size) > 8192:
        raise UserError(f"--size {a.size[0]} {a.size[1]}: frames must be 16x16 to 8192x8192")
    if a.seed < 0:
        raise UserError(f"--seed must be >= 0, not {a.seed}")
    if a.input.isdigit() and int(a.input) > 1024:
        raise UserError(f"--input {a.input}: no camera has that index; pass 0, 1, ... or a video file")
    for value, what in ((a.input, "--input"), (a.output, "--output"), (a.sheet, "--sheet"), (a.artifact,
                                                                                           "--artifact")):
        if value:
            utf8_path(value, what)
    if min(a.csi_size) < 16:
        raise UserError(f"--csi-size {a.csi_size[0]} {a.csi_size[1]} is too small")
    if not 0 <= a.csi_flip <= 7:
        raise UserError(f"--csi-flip must be 0-7, not {a.csi_flip}")
    if a.backend:
        a.backend = resolve_runtime(a.backend).name   # aliases: trt, ov, ort/onnx, pytorch ...
    return a


@error_boundary
def main(argv: list[str]) -> int:
    """Run the demo (``argv`` without the program name). Exits: 0 written, 2 bad input or environment, 3 internal
    error, 130 Ctrl-C, 143 SIGTERM."""
    from .pipeline import run

    args = parse_args(argv)
    run(args, log=lambda msg: print(msg, flush=True))
    return 0
