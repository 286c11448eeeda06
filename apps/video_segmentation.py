#!/usr/bin/env python3
"""Video segmentation demo: run an exported BiFormer artifact on a video file, a camera, a GStreamer pipeline, the
Jetson CSI camera or a synthetic clip, and write an annotated MP4, a contact sheet and a timing/parity JSON.

    python apps/video_segmentation.py --artifact artifacts/biformer_seg_demo-openvino-fp32 \\
        --input synthetic --output demo.mp4 [--compare]
    python apps/video_segmentation.py --artifact A --input my_video.mp4 --output out.mp4
    python apps/video_segmentation.py --artifact A --input 0 --seconds 20 --output cam.mp4     # a camera
    apps/jetson_camera.sh A camera.mp4                                                     # the Jetson CSI camera

Every runtime (TensorRT, Core ML, OpenVINO, onnxruntime, or the FP32 PyTorch model) gets the same pre- and
post-processing: ``biformer_edge.preprocess.preprocess`` to the artifact's input size, ``Session.run``, argmax at the
model's output resolution (what pixel agreement and flicker are measured on), and for display the class scores
resized bilinearly to the frame size, then argmax there (``--upsample nearest``: each output pixel's label repeated
instead, in blocks of frame size / output size; an output already at the frame size is drawn as it is). FP32 and
FP16 artifacts run alike. ``--compare`` also runs the FP32 PyTorch reference (pixel agreement, flicker); only
it, ``--backend torch`` and the sheet's reference column need PyTorch: a device without torch runs the artifact.

Outputs are written atomically: OUT (the video), the sheet PNG and OUT.json go to temporary files beside OUT and are
renamed into place only when the whole run succeeded; an error, Ctrl-C or SIGTERM leaves nothing behind. An output
that is the input video (under any spelling or link), or a symbolic link, is refused before anything is written.

Exit status: 0 written; 2 bad input or environment (one ``error: ...`` line on stderr); 3 internal error (the
traceback with --debug); 130 interrupted; 143 terminated.

The code lives in ``biformer_edge.video`` (sources, drawing, runtime, pipeline, command line); this file only calls
it, so the demo runs from a checkout or wherever biformer-edge is installed.
"""
import sys
from pathlib import Path


def load_main():
    try:
        from biformer_edge.video import main
    except ModuleNotFoundError as exc:  # run from a checkout without `pip install -e .`: use the checkout's package
        if exc.name != "biformer_edge":
            raise
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from biformer_edge.video import main
    return main


if __name__ == "__main__":
    try:
        main = load_main()
    except ModuleNotFoundError as exc:  # e.g. no OpenCV here: the one line saying what to install, before any work
        from biformer_edge.console import missing_library_line
        print(missing_library_line(exc), file=sys.stderr)
        sys.exit(2)
    main()
