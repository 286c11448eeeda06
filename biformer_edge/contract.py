"""What an artifact promises, in one place and without torch: the graph's input and output names, the name that marks
a router, the result every runtime returns, and every file name an artifact directory can hold.

Exporters write these names, sessions and parity read them, tools that check an artifact on a device compare against
them. Nothing else in the package spells a file name or an output name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ------------------------------------------------------------------------------------------------ graph interface
INPUT_NAME = "images"        # float32 NCHW, normalised as the model's preprocessing does
OUTPUT_NAME = "logits"       # (N, classes) or (N, classes, H/4, W/4)
ROUTING_PREFIX = "routing_"  # routing_0 .. routing_{B-1}: top-k region indices (N, R, k) of each BRA block, int64
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

    @classmethod
    def from_outputs(cls, names: list[str], values: list[np.ndarray]) -> RunResult:
        by_name = dict(zip(names, values))
        return cls(np.asarray(by_name[OUTPUT_NAME]).astype(np.float32),
                   [np.asarray(by_name[n]).astype(np.int64) for n in routing_names(names)])


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
ENGINE_LAYERS_JSON = "engine_layers.json"
ENGINE_LAYERS_TXT = "engine_layers.txt"
ORT_TRT_CACHE = "model_trt.ep"            # onnxruntime's TensorRT execution-provider context model
IR_XML = "model.xml"
IR_BIN = "model.bin"
MLPACKAGE = "model.mlpackage"

LAYER_REPORTS = (LAYER_REPORT, LAYER_REPORT_MD)
IN_PROGRESS = ".biformer-export-in-progress"   # marks a temporary artifact directory as ours (never hashed)
REPORT_FILES = (PARITY_JSON, PARITY_MD, MARGIN_PLOT)   # rewritten by every check, not hashed
# Written on the device after export (engine build, timing cache, the engine's layer dump): not hashed by the export.
DEVICE_FILES = (ENGINE_FILE, TIMING_CACHE, ENGINE_LAYERS_JSON, ENGINE_LAYERS_TXT, ORT_TRT_CACHE)
