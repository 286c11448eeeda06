"""Mixed precision for TensorRT: the float layers of FP16 and INT8 engines in FP16, the router island and LayerNorm in
FP32, stated in the ONNX itself so that a strongly typed build (the only kind TensorRT 11 has) runs exactly that.

Why the graph states it: a strongly typed network computes every layer in the type of its inputs. An FP32 ONNX with
Q/DQ pairs builds INT8 where the pairs sit and FP32 everywhere else (the attention MatMuls, Softmax, GELU, residual
adds, the layers QAR keeps float), so such an INT8 engine is slower than an FP16 one. And LayerNormalization computes
in FP32 only in weakly typed networks: NvInfer.h (TensorRT 10.3, ``INormalizationLayer::setComputePrecision``) says
"The compute precision defaults to DataType::kFLOAT32" but "Strongly typed network rejects calls to this method since
the compute precision is typically controlled by casting the input tensors to the desired type" (TensorRT 11.1 drops
the method), so an FP16 graph keeps LayerNorm FP32 only with Casts around it.

NVIDIA ModelOpt's AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``, the conversion ModelOpt's own ONNX
quantization uses for its FP16 high-precision default) does the conversion: every node to FP16 except the nodes named
``.../router/...``, every LayerNormalization, and the nodes whose inputs or outputs exceed :data:`DATA_MAX` in
magnitude on the calibration inputs (measured by AutoCast's reference run of the FP32 graph). Graph inputs and outputs
stay FP32 (``keep_io_types``). Q/DQ graphs move to opset 19, where DequantizeLinear may carry FP16 scales and so feed
FP16 layers directly.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np

from ...contract import INPUT_NAME, ROUTER_MODULE
from ...errors import UserError

FP32_NODES = (rf".*/{ROUTER_MODULE}/.*",)      # the router island: region pooling, affinity, TopK
FP32_OP_TYPES = ("LayerNormalization",)
# AutoCast's default: a node whose FP32 inputs or outputs reach this magnitude on the calibration inputs stays FP32
# (FP16 tops out at 65504; the margin covers inputs that are larger than the calibration set's).
DATA_MAX = 512.0
INSTALL = "pip install nvidia-modelopt onnx-graphsurgeon onnxslim lief (or biformer-edge[all])"
# Ops whose float inputs are metadata or indices, not computed values: their input types say nothing of precision.
_SHAPE_OPS = ("Shape", "Size", "Constant", "ConstantOfShape", "Cast")


def autocast_missing() -> str | None:
    """Why AutoCast cannot run here (its optional ONNX dependencies), or None."""
    try:
        from modelopt.onnx.autocast import convert  # noqa: F401
    except ImportError as exc:
        return str(exc).splitlines()[0]
    return None


@contextlib.contextmanager
def _quiet_modelopt():
    """AutoCast logs every conversion step at INFO/WARNING ('Shared constants were detected ...'): keep the export's
    output to its own progress lines."""
    names = ("modelopt", "modelopt.onnx", "modelopt.onnx.autocast", "onnxscript")   # onnxscript: the opset upgrade
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def to_mixed_precision(onnx_path: Path, calibration: np.ndarray):
    """The mixed precision version of ``onnx_path`` (FP32, or FP32 with Q/DQ pairs) as an onnx.ModelProto.
    ``calibration``: (B, N, 3, H, W) float32 inputs for AutoCast's range measurement."""
    why = autocast_missing()
    if why:
        raise UserError(f"FP16 and INT8 TensorRT exports need NVIDIA ModelOpt's AutoCast ({why}): {INSTALL}")
    from modelopt.onnx.autocast.convert import convert_to_mixed_precision

    with tempfile.TemporaryDirectory(prefix="biformer-autocast-") as tmp, _quiet_modelopt():
        for i, batch in enumerate(np.asarray(calibration, dtype=np.float32)):
            np.savez(Path(tmp) / f"batch_{i:04d}.npz", **{INPUT_NAME: batch})
        return convert_to_mixed_precision(str(onnx_path), low_precision_type="fp16", nodes_to_exclude=list(FP32_NODES),
                                          op_types_to_exclude=list(FP32_OP_TYPES), data_max=DATA_MAX,
                                          keep_io_types=True, calibration_data=tmp, providers=["cpu"])


def float_precision(proto) -> dict:
    """What the graph states: how many compute nodes take FP16 and FP32 inputs, and the nodes that break the rules
    (a router node or a LayerNormalization with an FP16 input). ``problems`` is empty for a correct mixed graph."""
    import onnx
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    from ..onnx.export import tensor_types
    types = tensor_types(proto)
    counts = {"fp16": 0, "fp32": 0}
    problems, kept_fp32 = [], []
    router = f"/{ROUTER_MODULE}/"
    for node in proto.graph.node:
        if node.op_type in _SHAPE_OPS or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        # The first float input is the data: ONNX ops take their data inputs in one type (T), and the float inputs
        # after it that may differ are parameters (Resize's roi and scales).
        data = next((types[name] for name in node.input if name and types.get(name) in (fp16, fp32)), None)
        if data is None:
            continue
        precision = "fp16" if data == fp16 else "fp32"
        counts[precision] += 1
        must_be_fp32 = router in node.name or node.op_type in FP32_OP_TYPES
        if must_be_fp32 and precision == "fp16":
            problems.append(f"{node.op_type} '{node.name}' takes FP16 inputs")
        elif precision == "fp32" and not must_be_fp32:
            kept_fp32.append(node.name)
    return {"nodes": counts, "kept_fp32": kept_fp32, "problems": problems}


def synthetic_calibration(input_shape, scenes: int = 4, normalised: bool = True) -> np.ndarray:
    """(B, N, 3, H, W) float32 inputs for exports without calibration data (FP16): the calibration scene set, rendered,
    at least ``scenes`` images in whole batches. ``normalised``: as the model's preprocessing feeds them; else the RGB
    pixel values 0..255 (a graph that normalises its input itself: the DeepStream graph)."""
    from ...data.seeds import scene_set
    from ...data.synthetic import render_scene
    from ...preprocess import preprocess_all

    N, _, H, W = (int(d) for d in input_shape)
    count = max(1, -(-scenes // N)) * N
    images = [render_scene(seed, (H, W))[0] for seed in scene_set("calibration", count)]
    if normalised:
        return preprocess_all(images, (H, W)).reshape(-1, N, 3, H, W)
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32).reshape(-1, N, 3, H, W)
