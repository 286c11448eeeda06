"""The video segmentation demo behind ``apps/video_segmentation.py``: run an exported artifact on a video file, a
camera, a GStreamer pipeline, the Jetson CSI camera or a synthetic clip; write an annotated MP4, a contact sheet and
a JSON of per-stage timings (and, with ``--compare``, pixel agreement and flicker against the FP32 model).

Modules: ``sources`` (frames in), ``draw`` (overlays, legend, HUD, contact sheet), ``runtime`` (artifact, runtime
session, FP32 model), ``pipeline`` (the frame loop and outputs), ``cli`` (arguments and the entry point); the FP32
comparison itself is ``biformer_edge.parity.video``. Nothing here imports torch unless the FP32 model is asked for
(``--compare``, ``--backend torch``, the sheet's reference column), so artifacts run on devices without it.
"""
from .cli import build_parser, main, parse_args
from .draw import (
    SHEET_CELL,
    SHEET_ROWS,
    UPSAMPLE_MODES,
    DisplayLabels,
    Upsampler,
    bilinear_labels,
    candidate_classes,
    class_names_and_palette,
    colorize,
    contact_sheet,
    draw_legend,
    hud,
    legend,
    overlay,
)
from .pipeline import STAGES, format_table, run
from .sources import DEFAULT_FPS, CaptureSource, FrameSource, SyntheticSource, csi_pipeline, frame_limit, open_source

__all__ = ["main", "build_parser", "parse_args", "run", "format_table", "STAGES",
           "FrameSource", "SyntheticSource", "CaptureSource", "csi_pipeline", "open_source", "frame_limit",
           "DEFAULT_FPS", "colorize", "overlay", "draw_legend", "legend", "hud", "Upsampler", "contact_sheet",
           "class_names_and_palette", "SHEET_CELL", "SHEET_ROWS", "UPSAMPLE_MODES", "DisplayLabels",
           "bilinear_labels", "candidate_classes"]
