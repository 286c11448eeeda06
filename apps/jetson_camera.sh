#!/usr/bin/env bash
# Live BiFormer segmentation on a Jetson: the artifact's TensorRT engine on the CSI camera (Argus), written to an
# annotated MP4 plus a contact sheet (.png) and per-stage timings (.json) beside it.
#
#   apps/jetson_camera.sh [ARTIFACT_DIR] [OUT.mp4] [more video_segmentation.py options, e.g. --compare]
#
# Build the engine first, once per device and JetPack/TensorRT version (engines are not portable):
#   on the workstation:  biformer-export --target jetson --output artifacts/biformer_seg_demo-jetson-fp16
#                        scp -r artifacts/biformer_seg_demo-jetson-fp16 jetson:~/
#   on the Jetson:       cd ~/biformer_seg_demo-jetson-fp16 && ./build_engine.sh && biformer-parity .
# (./build_engine.sh writes model.engine with trtexec; biformer-parity re-checks it against the FP32 reference.)
#
# Settings (environment): CSI_WIDTH x CSI_HEIGHT at CSI_FPS from sensor CSI_SENSOR (flip CSI_FLIP), recorded for
# DURATION seconds (the run stops by itself: Ctrl-C discards the recording). PYTHON: an interpreter whose OpenCV has
# GStreamer -- JetPack's python3 with its libopencv-python (or a venv made with --system-site-packages, as the
# README's "On the Jetson" sets up); pip's opencv-python wheels have no GStreamer.
# For steady numbers: the board's fastest power mode, then sudo jetson_clocks. Mode numbers differ by board (0 is
# MAXN on an AGX Orin, 15 W on an Orin Nano): nvpmodel -q shows the current one, grep 'POWER_MODEL ID'
# /etc/nvpmodel.conf lists them, sudo nvpmodel -m <id> sets one. Camera will not open: sudo systemctl restart
# nvargus-daemon.
set -euo pipefail

ARTIFACT="${1:-$HOME/biformer_seg_demo-jetson-fp16}"
OUTPUT="${2:-camera-$(date +%Y%m%d-%H%M%S).mp4}"
shift $(( $# < 2 ? $# : 2 ))

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

if [ ! -f "$ARTIFACT/model.engine" ]; then
    echo "error: $ARTIFACT/model.engine not found: build it first with (cd $ARTIFACT && ./build_engine.sh)" >&2
    exit 2
fi

exec "$PYTHON" "$HERE/video_segmentation.py" \
    --artifact "$ARTIFACT" --backend tensorrt --input csi \
    --csi-size "${CSI_WIDTH:-1280}" "${CSI_HEIGHT:-720}" --fps "${CSI_FPS:-30}" \
    --csi-sensor "${CSI_SENSOR:-0}" --csi-flip "${CSI_FLIP:-0}" \
    --seconds "${DURATION:-30}" --output "$OUTPUT" "$@"
