"""What an artifact promises, in one place and without torch: the graph's input and output names, the name that marks
a router, the result every runtime returns, and every file name an artifact directory can hold.

Exporters write these names, sessions and parity read them, tools that check an artifact on a device compare against
them. Nothing else in the package spells a file name or an output name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import UserError

# ------------------------------------------------------------------------------------------------ graph interface
INPUT_NAME = "images"        # float32 NCHW, normalised as the model's preprocessing does
OUTPUT_NAME = "logits"       # (N, classes) or (N, classes, H/4, W/4)
PROBABILITIES_NAME = "probabilities"   # before the logits in a graph whose graph_io output is PROBABILITIES (below)
ROUTING_PREFIX = "routing_"  # routing_0 .. routing_{B-1}: top-k region indices (N, R, k) of each BRA block, int64
#                              (int32 in DeepStream graphs: DeepStream's NvDsInferDataType has no INT64)
ROUTER_MODULE = "router"     # every BRA block's router is the submodule named this: graphs name its ops after it
ROUTER_PRECISION = {"qar": "fp32", "naive": "int8 inputs"}   # what each --routing leaves the router computing in


def routing_output(block: int) -> str:
    return f"{ROUTING_PREFIX}{block}"


def output_names(blocks: int) -> list[str]:
    """The outputs of an exported graph with ``blocks`` BRA blocks, in order."""
    return [OUTPUT_NAME] + [routing_output(i) for i in range(blocks)]


def routing_names(names) -> list[str]:
    """The routing outputs among ``names``, in block order."""
    return sorted((n for n in names if n.startswith(ROUTING_PREFIX)), key=lambda n: int(n[len(ROUTING_PREFIX):]))


@dataclass
class RunResult:
    """What every runtime returns for one batch."""

    logits: np.ndarray
    routing: list[np.ndarray] = field(default_factory=list)
    affinity: list[np.ndarray] = field(default_factory=list)   # reference runs only: (N, R, R) per block
    probabilities: np.ndarray | None = None   # a PROBABILITIES graph's first output (N, C, H, W) at its output size

    @classmethod
    def from_outputs(cls, names: list[str], values: list[np.ndarray]) -> RunResult:
        by_name = dict(zip(names, values))
        if OUTPUT_NAME not in by_name:
            raise UserError(f"the graph has no '{OUTPUT_NAME}' output (it has {', '.join(names)}): re-export the "
                            f"artifact (and rebuild its engine)")
        probabilities = by_name.get(PROBABILITIES_NAME)
        return cls(np.asarray(by_name[OUTPUT_NAME]).astype(np.float32),
                   [np.asarray(by_name[n]).astype(np.int64) for n in routing_names(names)],
                   probabilities=None if probabilities is None else np.asarray(probabilities).astype(np.float32))


@dataclass
class Int8Graph:
    """The facts of an exported INT8 graph as its backend reads them, for the router-island check and the layer
    report (:func:`biformer_edge.quant.report.check_int8_graph`)."""

    rows: list[dict]                  # one per compute layer: layer, op, input, weight, weight_params, router
    into_topk: list[str]              # quantizers on a path into a TopK: "<quantizer> -> <topk>"
    quantizer: str = "Q/DQ"           # what the graph calls its quantizers (Q/DQ, FakeQuantize)
    graph: str = ""                   # the graph's name in check summaries ("IR"); "" for the ONNX itself
    topk: int | None = None           # TopK ops in the graph, where the summary names them
    executed: dict | None = None      # what a runtime executed (OpenVINO: cpu, hint, layers by precision)
    notes: list[str] = field(default_factory=list)   # appended to the markdown report


# ------------------------------------------------------------------------------------------- graph I/O conventions
# An exported graph takes INPUT_NAME normalised and returns OUTPUT_NAME logits at the model's own resolution, unless
# its manifest's "graph_io" says otherwise: a DeepStream graph (--deepstream) takes RGB pixels and returns
# PROBABILITIES_NAME at the input size first (what nvinfer parses), then the logits. Sessions keep taking the
# normalised input (:func:`graph_input` converts it); parity compares the logits as for every graph, and the
# probabilities' class map against the FP32 logits resized alike (numpy: the device side needs no torch).
PIXELS = "rgb_0_255"          # input: float32 RGB NCHW pixel values 0..255, (x - mean) / std computed in the graph
# outputs: PROBABILITIES_NAME (the logits resized bilinearly to output_size, then softmax over the classes), then
# OUTPUT_NAME (the logits at the model's own resolution), then the routing outputs
PROBABILITIES = "probabilities_then_logits"


def graph_io_problem(io) -> str | None:
    """What is wrong with a manifest's ``graph_io`` record, or None."""
    if not isinstance(io, dict) or io.get("input") != PIXELS or io.get("output") != PROBABILITIES:
        return f"graph_io must say input {PIXELS!r} and output {PROBABILITIES!r}"
    for key in ("mean", "std"):
        v = io.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(type(c) in (int, float) and c == c for c in v)):
            return f"graph_io {key} must be 3 numbers"
    if not all(c > 0 for c in io["std"]):
        return "graph_io std must be positive"
    size = io.get("output_size")
    if not (isinstance(size, list) and len(size) == 2 and all(type(d) is int and d > 0 for d in size)):
        return "graph_io output_size must be [H, W]"
    return None


def graph_input(x: np.ndarray, io: dict | None) -> np.ndarray:
    """The model's normalised input ``x`` (N, 3, H, W) as the graph takes it: unchanged, or for a PIXELS graph the RGB
    pixel values ``x * std + mean`` (0..255 for inputs made from 8-bit images, as DeepStream feeds them)."""
    if not io:
        return x
    mean = np.asarray(io["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(io["std"], np.float32).reshape(1, 3, 1, 1)
    return (np.asarray(x, np.float32) * std + mean).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes to ``size`` with half-pixel centres, source coordinates clamped at the
    border: torch's ``interpolate(mode='bilinear', align_corners=False)`` and ONNX Resize linear 'half_pixel'. float64.
    """
    out = np.asarray(x, np.float64)
    for axis, length in ((-2, int(size[0])), (-1, int(size[1]))):
        n = out.shape[axis]
        src = np.maximum((np.arange(length) + 0.5) * (n / length) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.intp), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        w = (src - lo).reshape((-1, 1) if axis == -2 else (-1,))
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


def graph_probabilities(logits: np.ndarray, io: dict) -> np.ndarray:
    """A PROBABILITIES graph's first output computed from logits (..., C, h, w): resized bilinearly to the graph_io's
    ``output_size`` and turned into probabilities (softmax over C), in float64, returned as float32."""
    z = resize_bilinear(logits, tuple(io["output_size"]))
    z = np.exp(z - z.max(axis=-3, keepdims=True))
    return (z / z.sum(axis=-3, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------------- artifact files
MANIFEST = "manifest.json"
REFERENCE = "reference.npz"               # inputs, FP32 reference logits, routing and affinities
PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"
MARGIN_PLOT = "routing_margins.png"
LAYER_REPORT = "layer_precision.json"     # INT8: the precision of every Conv/MatMul of the deployed graph
LAYER_REPORT_MD = "layer_precision.md"
ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"              # TensorRT plan, built on the device
PROGRAM_FILE = "model.pt2"                # TensorRT INT8: the quantized ExportedProgram for Torch-TensorRT
BUILD_SCRIPT = "build_engine.sh"
BUILD_PY = "build_engine.py"
TIMING_CACHE = "timing.cache"
TIMING_CACHE_STAMP = "timing.cache.stamp"   # build_engine.sh: the board and TensorRT that wrote timing.cache
ENGINE_PARTIAL = "model.engine.partial"   # the build scripts' engine until the build succeeded (left by a SIGKILL)
ENGINE_LAYERS_JSON = "engine_layers.json"
ENGINE_LAYERS_TXT = "engine_layers.txt"
ORT_TRT_CACHE = "model_trt.ep"            # onnxruntime's TensorRT execution-provider context model
IR_XML = "model.xml"
IR_BIN = "model.bin"
MLPACKAGE = "model.mlpackage"
# jetson --deepstream: what DeepStream runs the graph with (docs/deepstream.md); paths relative to the artifact
DEEPSTREAM_DIR = "deepstream"
DS_INFER_CONFIG = f"{DEEPSTREAM_DIR}/config_infer_primary.txt"   # Gst-nvinfer's config (GLib key file)
DS_LABELS = f"{DEEPSTREAM_DIR}/labels.txt"                       # one class name per line
DS_APP_CONFIG = f"{DEEPSTREAM_DIR}/deepstream_app_config.txt"   # deepstream-app -c
DS_PIPELINE = f"{DEEPSTREAM_DIR}/run_pipeline.sh"               # the gst-launch-1.0 pipeline with nvsegvisual
DS_README = f"{DEEPSTREAM_DIR}/README.md"
DEEPSTREAM_FILES = (DS_INFER_CONFIG, DS_LABELS, DS_APP_CONFIG, DS_PIPELINE, DS_README)

LAYER_REPORTS = (LAYER_REPORT, LAYER_REPORT_MD)
IN_PROGRESS = ".biformer-export-in-progress"   # marks a temporary artifact directory as ours (never hashed)
REPORT_FILES = (PARITY_JSON, PARITY_MD, MARGIN_PLOT)   # rewritten by every check, not hashed
# Written on the device after export (engine build, timing cache, the engine's layer dump): not hashed by the export.
DEVICE_FILES = (ENGINE_FILE, ENGINE_PARTIAL, TIMING_CACHE, TIMING_CACHE_STAMP, ENGINE_LAYERS_JSON, ENGINE_LAYERS_TXT,
                ORT_TRT_CACHE)
