"""``biformer-export --target jetson --deepstream``: the graph DeepStream's Gst-nvinfer runs as a semantic segmentation
network, and ``deepstream/`` (nvinfer config, labels, a deepstream-app config, a gst-launch-1.0 pipeline with
nvsegvisual) in the artifact. docs/deepstream.md says what changes and how to run it.

What nvinfer reads and how, from NVIDIA's DeepStream 6.3 sources (``sources/libs/nvdsinfer``,
``sources/gst-plugins/gst-nvinfer``; the NvDsInferDataType enum is the same in pyds 1.2.0 for DeepStream 7.1):

- Preprocessing is ``y = net-scale-factor * (x - offsets[c])`` with one scalar scale
  (nvdsinfer_context_impl.cpp, NvDsInferConvert_* with ``m_Scale``), so ImageNet's per-channel std cannot be
  expressed: the normalisation is folded into the graph, which takes RGB pixels 0..255 (net-scale-factor 1,
  offsets 0). The converted pixels are written as ``float*`` into the input binding whatever its type: the input
  must be FP32.
- Every output binding must be FLOAT, HALF, INT8 or INT32 (nvdsinfer_model_builder.cpp ``TrtEngine::getLayerInfo``
  fails with "Unknown data type for bound layer" otherwise): the routing outputs are INT32, not INT64.
- Segmentation (network-type=2) parses ``outputLayers[0]``, the first output binding, as ``float*`` CHW
  (``segmentation-output-order`` 0; nvdsinfer_context_impl_output_parsing.cpp
  ``SegmentPostprocessor::fillSegmentationOutput``): a pixel's class is the channel with the highest value above
  ``segmentation-threshold``, else -1. So the first output is FP32 per-class probabilities (softmax), and its size is
  the segmentation output size (nvdsinfer_context.h: "Same as network width"); nvsegvisual's width/height are set to
  it (deepstream_tao_apps' seg_app_config.yml). The logits (H/4 x W/4) are resized bilinearly to the input size in the
  graph, as the demo model was trained (train_demo.py) and mmseg infers, then turned into probabilities.
- Every output binding is copied to the host (``InferPostprocessor::copyBuffersToHostMemory`` loops over all bound
  layers) and handed to the parser in binding order (``m_OutputLayerInfo``, filled by ``initInferenceInfo`` from the
  engine's bindings): outputs after the first are carried, never parsed. So the graph's second output is the model's
  own ``logits`` (H/4 x W/4, FP32), which parity compares as for every artifact. ``output-blob-names`` marks outputs
  only for Caffe/UFF models (``CaffeModelParser::parseModel``, nvdsinfer_model_builder.cpp); for an engine it is
  checked, with a warning when missing (``NvDsInferContextImpl::checkBackendParams``).
- The config is a GLib key file (gstnvinfer_property_parser.cpp: ``g_key_file_load_from_file``), relative paths
  resolve against its folder (``get_absolute_file_path``), network-mode is 0 FP32 / 1 INT8 / 2 FP16
  (nvdsinfer_context.h ``NvDsInferNetworkMode``), labels are one class per line (``parseLabelsFile`` splits a line
  at ';').

The wrapper goes around the model before the ONNX export, so every precision takes the TensorRT export's own path
(for INT8 around the fake-quantized model: the normalisation, resize and softmax are float, never quantized).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import __version__
from ...contract import (
    DS_APP_CONFIG,
    DS_INFER_CONFIG,
    DS_LABELS,
    DS_PIPELINE,
    DS_README,
    ENGINE_FILE,
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    PIXELS,
    PROBABILITIES,
    PROBABILITIES_NAME,
    ROUTING_PREFIX,
    graph_input,
    output_names,
)
from ...errors import UserError
from ...preprocess import MEAN, STD
from ..base import ExportContext

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}   # NvDsInferNetworkMode: FP32, INT8, FP16 in that order
NETWORK_TYPE_SEGMENTATION = 2                      # NvDsInferNetworkType_Segmentation
SEGMENTATION_THRESHOLD = 0.0   # every pixel gets its most probable class: the label map parity measures
MUXER_SIZE = (720, 1280)       # nvstreammux / output video (H, W): frames are scaled to the input size by nvinfer
CONFIG_HEADER = "# {what} for {model} ({precision}, input {shape}), written by biformer-edge {version}.\n"


def _graph_module(model, size: tuple[int, int]):
    """``model`` inside the DeepStream graph: RGB pixels -> (x - mean) / std -> model -> (logits resized to ``size``
    and softmaxed, the logits themselves); each block's recorded routing cast to INT32 (the tensors the routing
    outputs are traced from)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ...models.routing import bra_blocks

    class DeepStreamGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.name = getattr(model, "name", type(model).__name__)   # what the build scripts call the model
            # the values preprocess.normalize uses: (image - MEAN) * (1 / STD) in float32
            self.register_buffer("mean", torch.from_numpy(MEAN.copy()).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("inv_std", torch.from_numpy((1.0 / STD).astype(np.float32)).view(1, 3, 1, 1),
                                 persistent=False)

        def forward(self, pixels):
            logits = self.model((pixels - self.mean) * self.inv_std)
            for block in bra_blocks(self.model):
                if block.last_routing is not None:   # set while RoutingOutputs records
                    block.last_routing = block.last_routing.to(torch.int32)
            resized = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            return torch.softmax(resized, dim=1), logits

    return DeepStreamGraph().eval()


def class_names(model) -> list[str]:
    """The model's class names from its spec where the registry knows them, else class_0 .. class_{C-1}."""
    count = int(model.num_classes)
    names = list(getattr(getattr(model, "spec", None), "class_names", ()) or ())
    if len(names) != count:
        names = [f"class_{i}" for i in range(count)]
    for name in names:   # nvinfer's parseLabelsFile: one line per class, ';' separates alternatives
        if not name.strip() or any(c in name for c in ";\n\r"):
            raise UserError(f"class name {name!r} cannot be a DeepStream label (no ';' or line breaks, not empty): "
                            f"rename it in the model's registry entry")
    return names


class DeepStreamFlavour:
    """The DeepStream flavour of one TensorRT export: :attr:`graph` wraps the model (export it instead of the model),
    :meth:`finish` names and checks the exported graph's I/O and writes ``deepstream/``."""

    def __init__(self, model, ctx: ExportContext):
        task = getattr(model, "task", None)
        if task != "segmentation":
            raise UserError(f"--deepstream writes a DeepStream semantic segmentation graph (network-type=2), and "
                            f"{getattr(model, 'name', 'this model')} is a {task or 'non-segmentation'} model: export "
                            f"a segmentation model (e.g. --model biformer_seg_demo), or drop --deepstream")
        self.ctx = ctx
        self.batch, _, self.height, self.width = (int(d) for d in ctx.input_shape)
        self.model_name = getattr(model, "name", type(model).__name__)
        self.classes = class_names(model)
        self.graph = _graph_module(model, (self.height, self.width))
        ctx.graph_io = {"input": PIXELS, "mean": [float(v) for v in MEAN], "std": [float(v) for v in STD],
                        "output": PROBABILITIES, "output_size": [self.height, self.width]}
        ctx.calibration = self._pixel_calibration(ctx.calibration)

    def _pixel_calibration(self, normalised):
        """Calibration batches as this graph takes them (pixels), for the mixed precision range measurement."""
        shape, io = self.ctx.input_shape, self.ctx.graph_io

        def calibration() -> np.ndarray:
            if normalised is not None:
                return np.stack([graph_input(batch, io) for batch in normalised()])
            from .precision import synthetic_calibration
            return synthetic_calibration(shape, normalised=False)   # the scenes write_mixed_precision would render
        return calibration

    # ------------------------------------------------------------------------------------------ the exported graph
    def finish(self, onnx_path: Path):
        """Name the outputs of ``onnx_path`` (probabilities, logits, routing_0..), check the I/O nvinfer binds, write
        deepstream/. Returns the ModelProto written."""
        import onnx
        proto = onnx.load(str(onnx_path))
        # The exporter's wrapper names its outputs (logits, routing_0, ...) for a model with one main output; this
        # graph has two, flattened in front of the routing outputs, so the names are set here by position.
        count = len(proto.graph.output)
        rename_outputs(proto, [PROBABILITIES_NAME, *output_names(count - 2)])
        onnx.checker.check_model(proto, full_check=True)
        io = graph_io_types(proto)
        problems = self.io_problems(io)
        if problems:
            raise UserError(f"internal check failed: the DeepStream graph's I/O is not what nvinfer binds "
                            f"({problems[0]}); report it with --debug")
        onnx.save(proto, str(onnx_path))
        routing = [n for n in io["outputs"] if n.startswith(ROUTING_PREFIX)]
        self.ctx.checks["deepstream"] = {"ok": True, "summary": (
            f"nvinfer I/O: {INPUT_NAME} FLOAT {self.shape()} RGB 0-255 (normalisation in the graph); first output "
            f"{PROBABILITIES_NAME} FLOAT [{self.batch}, {len(self.classes)}, {self.height}, {self.width}] (softmax, "
            f"CHW, input size); then {OUTPUT_NAME} FLOAT {io['outputs'][OUTPUT_NAME][1]} (the model's resolution, "
            f"for parity) and {len(routing)} routing outputs INT32")}
        self.write_files(Path(onnx_path).parent)
        return proto

    def shape(self) -> str:
        return f"[{self.batch}, 3, {self.height}, {self.width}]"

    def io_problems(self, io: dict) -> list[str]:
        """What in the graph's I/O (:func:`graph_io_types`) nvinfer could not run as configured."""
        problems = []
        if io["inputs"] != {INPUT_NAME: ("FLOAT", [self.batch, 3, self.height, self.width])}:
            problems.append(f"inputs {io['inputs']}")
        names, classes = list(io["outputs"]), len(self.classes)
        if names[:2] != [PROBABILITIES_NAME, OUTPUT_NAME]:
            problems.append(f"first outputs {names[:2]}, not {PROBABILITIES_NAME}, {OUTPUT_NAME}")
        else:
            if io["outputs"][PROBABILITIES_NAME] != ("FLOAT", [self.batch, classes, self.height, self.width]):
                problems.append(f"{PROBABILITIES_NAME} is {io['outputs'][PROBABILITIES_NAME]}")
            kind, dims = io["outputs"][OUTPUT_NAME]
            if kind != "FLOAT" or len(dims) != 4 or dims[:2] != [self.batch, classes]:
                problems.append(f"{OUTPUT_NAME} is {io['outputs'][OUTPUT_NAME]}")
        problems += [f"{name} is {kind}" for name, (kind, _) in io["outputs"].items()
                     if name.startswith(ROUTING_PREFIX) and kind != "INT32"]
        problems += [f"{name} is {kind}" for name, (kind, _) in io["outputs"].items() if kind not in NVDSINFER_TYPES]
        return problems

    # -------------------------------------------------------------------------------------------------- the files
    def write_files(self, workdir: Path) -> list[str]:
        folder = Path(workdir) / DS_INFER_CONFIG.rsplit("/", 1)[0]
        folder.mkdir(exist_ok=True)
        texts = {DS_INFER_CONFIG: self.infer_config(), DS_LABELS: "".join(f"{n}\n" for n in self.classes),
                 DS_APP_CONFIG: self.app_config(), DS_PIPELINE: self.pipeline_script(), DS_README: self.readme()}
        for rel, text in texts.items():
            (Path(workdir) / rel).write_text(text)
        script = Path(workdir) / DS_PIPELINE
        script.chmod(script.stat().st_mode | 0o111)
        return list(texts)

    def header(self, what: str) -> str:
        return CONFIG_HEADER.format(what=what, model=self.model_name, precision=self.ctx.precision,
                                    shape="x".join(str(d) for d in (self.batch, 3, self.height, self.width)),
                                    version=__version__)

    def infer_config(self) -> str:
        """Gst-nvinfer's [property] group for this graph (keys: gstnvinfer_property_parser.h)."""
        precision = self.ctx.precision
        return self.header("Gst-nvinfer configuration") + f"""\
# Build ../{ENGINE_FILE} first: cd .. && ./build_engine.sh. Without it nvinfer builds an engine of its own from
# ../{ONNX_FILE} (weakly typed; for INT8 without a calibration file it falls back to FP16), not the strongly typed
# build whose precision build_engine.sh checks.
# GLib key file: lists are separated by ';', comments are whole lines, paths are relative to this file.
[property]
gpu-id=0
# The graph takes RGB pixels 0..255 and normalises them itself ((x - mean) / std per channel, which one
# net-scale-factor cannot express): nvinfer hands it the pixels unchanged.
net-scale-factor=1.0
offsets=0;0;0
# 0: RGB
model-color-format=0
# 0: NCHW
network-input-order=0
infer-dims=3;{self.height};{self.width}
# frames are stretched to the input size with bilinear filtering, as biformer-edge's own preprocessing does
maintain-aspect-ratio=0
scaling-filter=1
onnx-file=../{ONNX_FILE}
model-engine-file=../{ENGINE_FILE}
labelfile-path={DS_LABELS.rsplit("/", 1)[1]}
batch-size={self.batch}
# 0: FP32, 1: INT8, 2: FP16. Used only when nvinfer builds the engine; ../{ENGINE_FILE} keeps its own precision.
network-mode={NETWORK_MODE[precision]}
# 2: semantic segmentation. The first output holds the class probabilities (softmax) at the input size, CHW; a
# pixel's class is the most probable one above segmentation-threshold, else -1 (0.0: always the most probable).
network-type={NETWORK_TYPE_SEGMENTATION}
num-detected-classes={len(self.classes)}
output-blob-names={PROBABILITIES_NAME}
segmentation-output-order=0
segmentation-threshold={SEGMENTATION_THRESHOLD}
# The graph's other outputs, {OUTPUT_NAME} (FP32, the model's own resolution) and {ROUTING_PREFIX}i (INT32 top-k
# region indices), are for biformer-parity: nvinfer copies them to the host with the probabilities and parses none.
process-mode=1
gie-unique-id=1
interval=0
"""

    def app_config(self) -> str:
        """A deepstream-app configuration (groups: apps-common deepstream_config_file_parser.c; layout after
        DeepStream 6.3's samples/configs/deepstream-app-triton/source1_1080p_dec_infer_peoplesemsegnet_shuffle.txt)."""
        mux_h, mux_w = MUXER_SIZE
        return self.header("deepstream-app configuration") + f"""\
# Run from this folder after building ../{ENGINE_FILE}: deepstream-app -c {DS_APP_CONFIG.rsplit("/", 1)[1]}
# Set [source0] uri to your video (file:///absolute/path.mp4, rtsp://...); the output is [sink0] output-file.
[application]
enable-perf-measurement=1
perf-measurement-interval-sec=5

[tiled-display]
enable=1
rows=1
columns=1
width={mux_w}
height={mux_h}
gpu-id=0

[source0]
enable=1
# 3: URI
type=3
uri=file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_720p.mp4
num-sources=1
gpu-id=0

[streammux]
gpu-id=0
live-source=0
batch-size={self.batch}
batched-push-timeout=40000
width={mux_w}
height={mux_h}

[primary-gie]
enable=1
# 0: nvinfer
plugin-type=0
gpu-id=0
batch-size={self.batch}
gie-unique-id=1
config-file={DS_INFER_CONFIG.rsplit("/", 1)[1]}

# nvsegvisual draws the class map; its size is the segmentation output size (the graph's input size)
[segvisual]
enable=1
gpu-id=0
batch-size={self.batch}
width={self.width}
height={self.height}

# 3: file. enc-type 1: software (x264), since the Jetson Orin Nano has no hardware encoder (0 uses NVENC elsewhere)
[sink0]
enable=1
type=3
container=1
codec=1
enc-type=1
sync=0
bitrate=4000000
output-file=deepstream_out.mp4
source-id=0

# 2: a window on the attached display
[sink1]
enable=0
type=2
sync=0
gpu-id=0

[tests]
file-loop=0
"""

    def pipeline_script(self) -> str:
        mux_h, mux_w = MUXER_SIZE
        return f"""#!/usr/bin/env bash
# The DeepStream pipeline of this artifact ({self.model_name}, {self.ctx.precision}): decode -> nvstreammux ->
# nvinfer ({DS_INFER_CONFIG.rsplit("/", 1)[1]}) -> nvsegvisual (the class map blended over the frame) -> an MP4 file, or
# a window when no OUTPUT is given.
#   ./{DS_PIPELINE.rsplit("/", 1)[1]} INPUT [OUTPUT.mp4]   (INPUT: a video file, or a file://, rtsp:// or http:// URI,
#   passed on as given: percent-encode it yourself)
# Needs DeepStream 7.0 or later (nvsegvisual's original-background: 6.4+) and ../{ENGINE_FILE} (../build_engine.sh).
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
die() {{ echo "{DS_PIPELINE.rsplit("/", 1)[1]}: $*" >&2; exit 2; }}
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 INPUT [OUTPUT.mp4] (INPUT: a video file or a URI)"
command -v gst-launch-1.0 >/dev/null 2>&1 || die "gst-launch-1.0 not found: install DeepStream (7.1 on JetPack 6.1)"
for element in nvstreammux nvinfer nvsegvisual nvvideoconvert; do
  gst-inspect-1.0 "$element" >/dev/null 2>&1 || die "GStreamer has no $element: install DeepStream (7.1 on JetPack 6.1)"
done
[ -f "$here/../{ENGINE_FILE}" ] || die "no ../{ENGINE_FILE}: build it first with 'cd $here/.. && ./build_engine.sh'"
# The file:// URI of a path, percent-encoded (RFC 3986): uridecodebin decodes %XX escapes, and a space, '%', '#' or
# '?' left as is breaks the URI. Python's pathlib where python3 is installed, else the same encoding byte by byte
# (unreserved characters and '/' kept, as pathlib's as_uri keeps them).
file_uri() {{
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import pathlib, sys; print(pathlib.Path(sys.argv[1]).resolve().as_uri())' "$1"
    return
  fi
  local LC_ALL=C path encoded="" char i
  path="$(realpath "$1")"
  for ((i = 0; i < ${{#path}}; i++)); do
    char="${{path:i:1}}"
    case "$char" in
      [A-Za-z0-9/._~-]) encoded+="$char" ;;
      *) printf -v char '%%%02X' "'$char"; encoded+="$char" ;;
    esac
  done
  echo "file://$encoded"
}}
case "$1" in
  *://*) uri="$1" ;;
  *) [ -f "$1" ] || die "no such video: $1"; uri="$(file_uri "$1")" ;;
esac
if [ $# -eq 2 ]; then
  case "$2" in *.mp4) ;; *) die "OUTPUT must end in .mp4, not $2" ;; esac
  [ -d "$(dirname "$2")" ] || die "no folder for $2"
  # NVENC where the board has one (the Orin Nano has none): x264 otherwise
  if gst-inspect-1.0 nvv4l2h264enc >/dev/null 2>&1; then
    encode=(nvvideoconvert ! "video/x-raw(memory:NVMM),format=NV12" ! nvv4l2h264enc bitrate=4000000)
  else
    encode=(nvvideoconvert ! "video/x-raw,format=I420" ! x264enc bitrate=4000 speed-preset=veryfast)
  fi
  sink=("${{encode[@]}}" ! h264parse ! qtmux ! filesink location="$2")
else
  sink=(nv3dsink sync=false)
fi
# -e: Ctrl-C ends the stream cleanly, so the MP4 is finalised
exec gst-launch-1.0 -e \\
  uridecodebin uri="$uri" ! nvvideoconvert ! "video/x-raw(memory:NVMM),format=NV12" ! mux.sink_0 \\
  nvstreammux name=mux batch-size={self.batch} width={mux_w} height={mux_h} batched-push-timeout=40000 ! \\
  nvinfer config-file-path="$here/{DS_INFER_CONFIG.rsplit("/", 1)[1]}" ! \\
  nvsegvisual width={self.width} height={self.height} batch-size={self.batch} original-background=true alpha=0.5 ! \\
  nvvideoconvert ! "video/x-raw(memory:NVMM),width={mux_w},height={mux_h}" ! "${{sink[@]}}"
"""

    def readme(self) -> str:
        script, app = DS_PIPELINE.rsplit("/", 1)[1], DS_APP_CONFIG.rsplit("/", 1)[1]
        return f"""# DeepStream files of this artifact

{self.model_name}, {self.ctx.precision}, input {self.batch}x3x{self.height}x{self.width}. The graph ({ONNX_FILE})
takes RGB pixels 0..255 (normalisation inside), outputs `{PROBABILITIES_NAME}` (softmax over
{len(self.classes)} classes at {self.height}x{self.width}, FP32, CHW) first, what nvinfer parses; then `{OUTPUT_NAME}`
(FP32, the model's own resolution) and INT32 routing outputs, which biformer-parity compares. On the Jetson
(DeepStream 7.0 or later; FP16 and INT8 engines need JetPack 6.1 or later, i.e. DeepStream 7.1):

```bash
cd .. && ./build_engine.sh && biformer-parity . && cd {DS_INFER_CONFIG.rsplit("/", 1)[0]}   # the engine, checked
./{script} /path/to/video.mp4 out.mp4   # gst-launch-1.0: nvinfer -> nvsegvisual over the frame -> out.mp4
./{script} /path/to/video.mp4           # the same in a window
deepstream-app -c {app}     # after setting [source0] uri; writes deepstream_out.mp4
```

- `{DS_INFER_CONFIG.rsplit("/", 1)[1]}`: Gst-nvinfer (network-type=2, net-scale-factor 1, offsets 0, model-engine-file
  ../{ENGINE_FILE}); use it in your own pipelines.
- `{DS_LABELS.rsplit("/", 1)[1]}`: the class names, one per line, in output-channel order.
- The whole story (what changed against a plain jetson artifact, sources): docs/deepstream.md in biformer-edge.
"""


# ---------------------------------------------------------------------------------------------------- graph helpers
NVDSINFER_TYPES = ("FLOAT", "HALF", "INT8", "INT32")   # nvdsinfer.h NvDsInferDataType


def graph_io_types(proto) -> dict:
    """{"inputs": {name: (type, shape)}, "outputs": {...}} of an ONNX graph, outputs in graph order; types as
    TensorProto names (FLOAT, INT32, ...), shapes as lists of ints (or dim names)."""
    import onnx

    def described(values) -> dict:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out[v.name] = (onnx.TensorProto.DataType.Name(t.elem_type), dims)
        return out
    initializers = {i.name for i in proto.graph.initializer}
    return {"inputs": described(v for v in proto.graph.input if v.name not in initializers),
            "outputs": described(proto.graph.output)}


def rename_outputs(proto, names: list[str]) -> None:
    """Name the graph outputs ``names``, in order (every use of each tensor renamed with it)."""
    graph = proto.graph
    if len(graph.output) != len(names) or len(set(names)) != len(names):
        raise UserError(f"internal check failed: the exported graph has outputs {[o.name for o in graph.output]}, "
                        f"not one for each of {names}; report it with --debug")
    renamed = {o.name: new for o, new in zip(graph.output, names)}
    for node in graph.node:
        node.output[:] = [renamed.get(n, n) for n in node.output]
        node.input[:] = [renamed.get(n, n) for n in node.input]
    for value in (*graph.output, *graph.value_info):
        value.name = renamed.get(value.name, value.name)
