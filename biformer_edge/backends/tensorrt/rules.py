"""TensorRT's ONNX parser rules (TensorRT 10.x and 11.x), checked with onnx alone: :func:`check_onnx` catches what the
onnx-tensorrt parser would reject or mis-run before anyone copies the artifact to a Jetson. Imports neither torch
nor TensorRT (onnx inside the functions).
"""
from __future__ import annotations

import os

import numpy as np

from ...errors import UserError

# Opset range of the TensorRT 10.0 ONNX parser ("opset 9 to opset 20", onnx-tensorrt docs/operators.md), the oldest
# TensorRT 10 a Jetson may carry (JetPack 6 ships 10.x). Newer parsers go further (10.15: 24; 11.x: 25).
MIN_OPSET, MAX_OPSET = 9, 20
TOPK_MAX_K = 3840         # "K input must be less than 3840" (operators.md); ITopKLayer: k <= 3840, axis in last four
MAX_RANK = 8              # nvinfer1::Dims::MAX_DIMS

# Operators with "Y" in onnx-tensorrt docs/operators.md (TensorRT 10.15 matrix). Ops of opset > 20 in this list
# (Attention, RMSNormalization, RotaryEmbedding, TensorScatter) only parse on newer TensorRT; the opset check
# catches graphs that use them.
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh
Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu
Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Operators with "N" in the same matrix: named so the message can say "not supported" rather than "not listed".
UNSUPPORTED_OPS = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor CenterCropPad Col2Im Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength
SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
GATHER_OPS = ("Gather", "GatherElements", "GatherND")
# Ops that only move data: a Q/DQ behind them still reaches the consumer after TensorRT's Q/DQ propagation.
_DATA_MOVEMENT_OPS = ("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def _default_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _nodes(graph):
    """Every node, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _nodes(sub)


def check_onnx(proto_or_path, max_opset: int = MAX_OPSET) -> list[str]:
    """What would make TensorRT 10/11's ONNX parser reject this graph, or run its routing differently from the
    reference. Returns one line per problem, naming the node; empty when the graph is fine.

    Sources: onnx-tensorrt docs/operators.md (opsets, supported operators, TopK limits, no INT8 on TopK/Gather*),
    TensorRT ITopKLayer docs (axis in the last four dims), the router precision island of QAR (no Q/DQ into the
    router's TopK).
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(proto_or_path)) if isinstance(proto_or_path, (str, os.PathLike)) else proto_or_path
    problems: list[str] = []

    opset = _default_opset(model)
    if opset is None:
        problems.append("the model imports no default-domain ('ai.onnx') opset")
    elif not MIN_OPSET <= opset <= max_opset:
        problems.append(f"opset {opset} is outside {MIN_OPSET}..{max_opset}, the range TensorRT's ONNX parser "
                        f"supports: export with opset {min(max(opset, MIN_OPSET), max_opset)}")

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # a broken graph still gets the checks that need no shapes
        inferred = model
    graph = inferred.graph
    value_infos = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        value_infos.setdefault(init.name, onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    producer = {out: node for node in graph.node for out in node.output}

    def elem_type(name):
        vi = value_infos.get(name)
        return vi.type.tensor_type.elem_type if vi is not None else 0

    def rank(name):
        vi = value_infos.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        return len(vi.type.tensor_type.shape.dim)

    def qdq_source(name):
        """The Q/DQ node feeding ``name`` directly or through data-movement ops, else None."""
        node = producer.get(name)
        while node is not None and node.op_type in _DATA_MOVEMENT_OPS:
            node = producer.get(node.input[0])
        return node if node is not None and node.op_type in QDQ_OPS else None

    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    for index, node in enumerate(_nodes(model.graph)):
        label = f"{node.op_type} '{node.name or f'#{index}'}'"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: custom op of domain '{node.domain}' needs a TensorRT plugin")
            continue
        if node.op_type in UNSUPPORTED_OPS:
            problems.append(f"{label}: not supported by TensorRT's ONNX parser")
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems.append(f"{label}: not in TensorRT's ONNX operator support list")
            continue

        if node.op_type == "TopK":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("sorted", 1) != 1:
                problems.append(f"{label}: sorted={attrs['sorted']}; TensorRT requires sorted=1")
            k_name = node.input[1] if len(node.input) > 1 else None
            if k_name is None:
                k = attrs.get("k")          # opset < 10: K is an attribute
            elif k_name in constants:
                k = int(numpy_helper.to_array(constants[k_name]).reshape(-1)[0])
            else:
                k = None
                problems.append(f"{label}: K ('{k_name}') is computed at run time; TensorRT needs a constant K "
                                f"(an initializer or Constant)")
            if k is not None and k >= TOPK_MAX_K:
                problems.append(f"{label}: K={k}; TensorRT requires K < {TOPK_MAX_K}")
            r = rank(node.input[0])
            axis = attrs.get("axis", -1)
            if r is not None and (axis + r if axis < 0 else axis) < r - 4:
                problems.append(f"{label}: axis {axis} of a rank-{r} input; TensorRT's TopK reduces one of the last "
                                f"four dims only")

        if node.op_type == "TopK" or node.op_type in GATHER_OPS:
            what = "input" if node.op_type == "TopK" else "data input"
            source = qdq_source(node.input[0])
            if source is not None:
                problems.append(f"{label}: its {what} comes from {source.op_type} '{source.name}'; TensorRT has no "
                                f"INT8 {node.op_type}, and the router must stay FP32 (keep Q/DQ off this path)")
            elif elem_type(node.input[0]) in int8:
                problems.append(f"{label}: its {what} '{node.input[0]}' is 8-bit; TensorRT's {node.op_type} has no "
                                f"INT8 support")

        if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2] in constants:
            if np.any(numpy_helper.to_array(constants[node.input[2]]) != 0):
                problems.append(f"{label}: non-zero zero point; TensorRT supports symmetric quantization only")

    for name, vi in value_infos.items():
        r = rank(name)
        if r is not None and r > MAX_RANK:
            source = producer.get(name)
            where = f" (output of {source.op_type} '{source.name}')" if source is not None else ""
            problems.append(f"tensor '{name}'{where} has rank {r}; TensorRT supports at most {MAX_RANK} dims")
    return problems


def assert_tensorrt_ready(path, max_opset: int = MAX_OPSET, what: str | None = None) -> None:
    """Raise UserError naming the first problems :func:`check_onnx` finds in ``path`` (a file or a ModelProto)."""
    problems = check_onnx(path, max_opset=max_opset)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{what or path} would not build with TensorRT: {'; '.join(problems[:3])}{more}")
