"""TensorRT (10.x and 11.x): an ONNX that TensorRT's parser accepts, the scripts that build the engine on the device,
an in-process build where TensorRT and a GPU are present, and a Session that runs ``model.engine``.

TensorRT cannot be installed on CPU machines (its libraries are not on PyPI's CPU wheels), so everything here
except the build and the Session works with onnx alone: :func:`check_onnx` catches what the onnx-tensorrt parser
would reject or mis-run before anyone copies the artifact to a Jetson. The Session needs TensorRT and NVIDIA's
cuda-python (device buffers, stream), not torch: importing this module imports neither.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import stat
import string
import warnings
from pathlib import Path

import numpy as np

from ..contract import BUILD_PY, BUILD_SCRIPT, ENGINE_FILE, INPUT_NAME, ONNX_FILE, PROGRAM_FILE, RunResult
from ..errors import UserError, first_line
from ..profiles import template_path
from .base import ExportContext, Session

DEFAULT_WORKSPACE_MIB = 2048
CUDA_PYTHON_MISSING = "cuda-python is not installed (pip install cuda-python)"

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


def check_onnx(proto_or_path, dla: bool = False, max_opset: int = MAX_OPSET) -> list[str]:
    """What would make TensorRT 10/11's ONNX parser reject this graph, or run its routing differently from the
    reference. Returns one line per problem, naming the node; empty when the graph is fine.

    Sources: onnx-tensorrt docs/operators.md (opsets, supported operators, TopK limits, no INT8 on TopK/Gather*),
    TensorRT ITopKLayer docs (axis in the last four dims), DLA docs (no dynamic dims), the router precision island of
    QAR (no Q/DQ into the router's TopK).
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

    if dla:
        initializers = {i.name for i in graph.initializer}
        for inp in graph.input:
            if inp.name in initializers:
                continue
            dims = inp.type.tensor_type.shape.dim
            if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                shape = "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
                problems.append(f"input '{inp.name}' has dynamic dims ({shape}); DLA needs static shapes")
    return problems


def assert_tensorrt_ready(path, dla: bool = False, max_opset: int = MAX_OPSET, what: str | None = None) -> None:
    """Raise UserError naming the first problems :func:`check_onnx` finds in ``path`` (a file or a ModelProto)."""
    problems = check_onnx(path, dla=dla, max_opset=max_opset)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{what or path} would not build with TensorRT: {'; '.join(problems[:3])}{more}")


# --- artifact -------------------------------------------------------------------------------------------------------

class _Template(string.Template):
    delimiter = "@@"  # '$' belongs to bash and would need escaping all over the script


def render_template(name: str, **values) -> str:
    path = template_path(name)
    try:
        text = _Template(path.read_text()).substitute({k: str(v) for k, v in values.items()})
    except (OSError, KeyError, ValueError) as exc:  # unreadable, a placeholder without a value, a malformed one
        raise UserError(f"cannot render the template {path} ({type(exc).__name__}: {exc}): reinstall "
                        f"biformer-edge") from None
    if "@@" in text:
        raise UserError(f"the template {path} still has an '@@' placeholder after rendering: reinstall biformer-edge")
    return text


def load_build_module():
    """The template build_engine.py as a module: the one implementation of the engine build."""
    spec = importlib.util.spec_from_file_location("biformer_edge_build_engine", template_path(BUILD_PY))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_cudart():
    """NVIDIA cuda-python's CUDA runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before cuda-python
    12.6), or None when cuda-python is not installed. Every call returns a tuple whose first item is the error code."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 12.x: "cuda.cudart is deprecated, use cuda.bindings.runtime"
            from cuda import cudart
        return cudart
    except ImportError:
        return None


def cuda_unavailable() -> str | None:
    """Why no CUDA GPU can run an engine here (TensorRT installed or not), or None."""
    cudart = load_cudart()
    if cudart is None:
        return CUDA_PYTHON_MISSING
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # the bindings could not reach a driver at all
        return f"no CUDA GPU ({exc})"
    if err != cudart.cudaError_t.cudaSuccess:
        name = _error_name(err)
        if name == "cudaErrorInsufficientDriver":  # cuda-python 13 needs a CUDA 13 driver (r580+)
            return (f"no CUDA GPU ({name}: no NVIDIA driver, or one older than this cuda-python needs; with a CUDA 12 "
                    f"driver, e.g. JetPack 6, pip install 'cuda-python>=12,<13')")
        return f"no CUDA GPU ({name})"
    return None if count else "no CUDA GPU"


def _tensorrt_gpu_missing() -> str | None:
    """Why an engine cannot be built here, or None when TensorRT can create a builder (it needs a CUDA device)."""
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt Python package is not installed"
    try:
        if trt.Builder(trt.Logger(trt.Logger.ERROR)) is None:
            return "TensorRT found no usable NVIDIA GPU"
    except Exception as exc:
        return f"TensorRT found no usable NVIDIA GPU ({exc})"
    return None


_EXPORT_BACKEND = "biformer_edge_trt_export"


def _quantize_op(inputs, quantizer):
    """A ModelOpt quantizer as ``torch.ops.tensorrt.quantize_op``, the Q/DQ op Torch-TensorRT converts. ModelOpt emits
    it itself only for CUDA tensors; on a CPU its fake-quant checks the range in Python, which torch.export cannot
    trace ('Could not guard on data-dependent expression', tensor_quant.py ``if min_amax < 0``)."""
    import torch
    return torch.ops.tensorrt.quantize_op(inputs, quantizer.amax.detach(), quantizer.num_bits, 0, quantizer.unsigned,
                                          quantizer.narrow_range)


def export_quantized_program(qmodel, input_shape, path) -> dict:
    """torch.export the fake-quantized model (plus its routing outputs) to ``path`` (model.pt2) for Torch-TensorRT.
    Returns {"quantize_ops", "router_quantize_ops"}: the Q/DQ ops in the graph, and those inside a BRA router."""
    import torch
    from modelopt.torch.quantization.nn.modules import tensor_quantizer as tq
    from modelopt.torch.quantization.utils import export_torch_mode

    from ..models.routing import RoutingOutputs

    if not tq.is_registered_quant_backend(_EXPORT_BACKEND):
        tq.register_quant_backend(_EXPORT_BACKEND, _quantize_op)
    wrapper = RoutingOutputs(copy.deepcopy(qmodel)).eval()
    for module in wrapper.modules():
        if isinstance(module, tq.TensorQuantizer) and module.is_enabled:
            module.backend = _EXPORT_BACKEND
    x = torch.zeros(tuple(int(d) for d in input_shape))
    with warnings.catch_warnings(), torch.no_grad(), export_torch_mode():
        warnings.simplefilter("ignore")  # 'last_routing was assigned during export': a debug attribute
        program = torch.export.export(wrapper, (x,), strict=False)
    torch.export.save(program, str(path))
    ops = [n for n in program.graph.nodes if n.op == "call_function" and "quantize_op" in str(n.target)]
    in_router = [n for n in ops if any("RegionRouter" in str(kind)
                                       for _, kind in (n.meta.get("nn_module_stack") or {}).values())]
    return {"quantize_ops": len(ops), "router_quantize_ops": len(in_router)}


def export(model, ctx: ExportContext) -> list[str]:
    """Write model.onnx (checked for TensorRT), build_engine.sh and build_engine.py into ``ctx.workdir``, plus
    model.engine when ``ctx.options['build']`` is set, and for INT8 the quantized ExportedProgram model.pt2 (for
    ``build_engine.py --torch-tensorrt``). Options read: build, dla_core, workspace_mib, timing_cache, tf32."""
    from .onnx import export_onnx

    options = ctx.options or {}
    dla_core = options.get("dla_core")
    dla_core = None if dla_core in (None, "") else int(dla_core)
    workspace_mib = int(options.get("workspace_mib") or DEFAULT_WORKSPACE_MIB)  # the exporter merged [defaults]
    if options.get("build"):
        why = _tensorrt_gpu_missing()
        if why:
            raise UserError(f"--build needs TensorRT and an NVIDIA GPU ({why}); copy the artifact to the device and "
                            f"run ./build_engine.sh there")

    workdir = Path(ctx.workdir)
    onnx_path = workdir / ONNX_FILE
    ctx.log(f"exporting {ONNX_FILE} ({ctx.precision}, opset {ctx.opset}, input {tuple(ctx.input_shape)})")
    proto = export_onnx(model, onnx_path, tuple(ctx.input_shape), ctx.opset, fp16=ctx.precision == "fp16")
    assert_tensorrt_ready(proto, dla=dla_core is not None, what="the exported graph")
    ctx.checks["tensorrt_onnx"] = {"ok": True, "summary": (
        f"TensorRT 10/11 parser limits (opset {MIN_OPSET}-{MAX_OPSET}, TopK constant K < {TOPK_MAX_K} sorted, no INT8 "
        f"on TopK/Gather, rank <= {MAX_RANK}{', static shapes for DLA' if dla_core is not None else ''}): no problems")}
    extra = []
    if ctx.precision == "int8":  # explicit Q/DQ: TensorRT builds it strongly typed, INT8 exactly where Q/DQ sit
        try:
            found = export_quantized_program(model, ctx.input_shape, workdir / PROGRAM_FILE)
        except Exception as exc:  # noqa: BLE001 - torch.export/ModelOpt raise anything; the ONNX path stands alone
            (workdir / PROGRAM_FILE).unlink(missing_ok=True)
            ctx.log(f"note: {PROGRAM_FILE} not written, torch.export failed: {type(exc).__name__}: "
                    f"{first_line(exc)}")
            ctx.checks["torch_export"] = {"ok": False, "summary": f"no {PROGRAM_FILE}: {type(exc).__name__}"}
        else:
            if ctx.routing == "qar" and found["router_quantize_ops"]:
                raise UserError(f"internal check failed: {found['router_quantize_ops']} quantize ops inside a router "
                                f"in {PROGRAM_FILE}; report it with --debug")
            ctx.checks["torch_export"] = {"ok": True, "summary": (
                f"{PROGRAM_FILE}: torch.export with {found['quantize_ops']} tensorrt::quantize_op Q/DQ ops, "
                f"{found['router_quantize_ops']} inside routers")}
            extra.append(PROGRAM_FILE)

    values = dict(model_name=getattr(model, "name", type(model).__name__), precision=ctx.precision,
                  input_name=INPUT_NAME, input_shape="x".join(str(int(d)) for d in ctx.input_shape),
                  dla_core="" if dla_core is None else dla_core, workspace_mib=workspace_mib)
    written = [ONNX_FILE, *extra]
    for name in (BUILD_SCRIPT, BUILD_PY):
        path = workdir / name
        path.write_text(render_template(name, **values))
        written.append(name)
    sh = workdir / BUILD_SCRIPT
    sh.chmod(sh.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    if options.get("build"):
        ctx.log("building model.engine with TensorRT")
        try:
            load_build_module().build_engine(onnx_path, workdir / ENGINE_FILE, ctx.precision, dla_core, workspace_mib,
                                             options.get("timing_cache"), bool(options.get("tf32")), log=ctx.log)
        except RuntimeError as exc:
            raise UserError(f"TensorRT engine build failed: {exc}") from None
        written.append(ENGINE_FILE)
    return written


def int8_graph(workdir: Path):
    """The INT8 facts of ``model.onnx``, the Q/DQ graph every engine is built from."""
    from .onnx import int8_graph as onnx_int8_graph
    return onnx_int8_graph(workdir)


# --- runtime --------------------------------------------------------------------------------------------------------
# Engine I/O goes through NVIDIA's cuda-python runtime bindings (no torch): a device allocation per tensor, a numpy
# host array beside it, one CUDA stream. Each cuda-python call returns (error, *values).

class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


def _error_name(err) -> str:
    return getattr(err, "name", None) or str(err)


def _cuda_call(cudart, what: str, result):
    """The value(s) of a cuda-python call after checking its error code (the first item of ``result``)."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise CudaError(f"{what} failed: {_error_name(err)}")
    return values[0] if len(values) == 1 else tuple(values)


def _require_cudart():
    cudart = load_cudart()
    if cudart is None:
        raise UserError(f"TensorRT runs here through cuda-python, and {CUDA_PYTHON_MISSING}")
    return cudart


class CudaStream:
    """One CUDA stream (``handle`` is what TensorRT's ``execute_async_v3`` takes)."""

    def __init__(self):
        self.cudart = _require_cudart()
        self.stream = _cuda_call(self.cudart, "cudaStreamCreate", self.cudart.cudaStreamCreate())

    @property
    def handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        _cuda_call(self.cudart, "cudaStreamSynchronize", self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            _cuda_call(self.cudart, "cudaStreamDestroy", self.cudart.cudaStreamDestroy(stream))


class DeviceBuffer:
    """A device allocation of one fixed-shape tensor and its numpy host copy ``host``; knows nothing of TensorRT.

    ``upload`` fills ``host`` from an array (converting it to the buffer's dtype) and queues the copy to the device;
    ``download`` queues the copy back into ``host``. Both are asynchronous on ``stream``: synchronize it before
    reading ``host``.
    """

    def __init__(self, shape, dtype):
        self.cudart = _require_cudart()
        self.host = np.zeros(tuple(int(d) for d in shape), dtype=np.dtype(dtype))
        self.nbytes = int(self.host.nbytes)
        self.ptr = _cuda_call(self.cudart, "cudaMalloc", self.cudart.cudaMalloc(max(self.nbytes, 1)))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.host.shape

    @property
    def dtype(self) -> np.dtype:
        return self.host.dtype

    def upload(self, array, stream: CudaStream) -> None:
        array = np.asarray(array)
        if array.shape != self.host.shape:
            raise ValueError(f"array of shape {array.shape} for a device buffer of shape {self.host.shape}")
        np.copyto(self.host, array, casting="unsafe")   # float32 -> float16 inputs of FP16 engines
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _cuda_call(self.cudart, "cudaMemcpyAsync (host to device)",
                   self.cudart.cudaMemcpyAsync(self.ptr, self.host.ctypes.data, self.nbytes, kind, stream.stream))

    def download(self, stream: CudaStream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(self.cudart, "cudaMemcpyAsync (device to host)",
                   self.cudart.cudaMemcpyAsync(self.host.ctypes.data, self.ptr, self.nbytes, kind, stream.stream))

    def free(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            _cuda_call(self.cudart, "cudaFree", self.cudart.cudaFree(ptr))


def numpy_dtype(trt, trt_dtype, name: str) -> np.dtype:
    """The numpy dtype of a TensorRT tensor type (``trt.nptype``)."""
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except (TypeError, KeyError):
        raise UserError(f"engine tensor '{name}' is of type {trt_dtype}, which numpy cannot hold: rebuild the engine "
                        f"from the exported model.onnx with ./build_engine.sh") from None


class TensorRTSession(Session):
    """Runs ``model.engine`` with the TensorRT 10/11 named-tensor API; cuda-python device buffers hold the I/O."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, artifact_dir, manifest: dict | None = None):
        artifact_dir = Path(artifact_dir)
        engine_path = artifact_dir / ENGINE_FILE
        self.buffers: dict[str, DeviceBuffer] = {}
        self.stream: CudaStream | None = None
        try:
            import tensorrt as trt
        except ImportError:
            raise UserError("TensorRT is not installed: on a Jetson 'sudo apt install python3-libnvinfer', on a GPU "
                            "host install TensorRT from NVIDIA; or check the ONNX with --backend onnxruntime") from None
        if not engine_path.is_file():
            raise UserError(f"{engine_path} not found: run ./build_engine.sh in {artifact_dir} on this device first")
        why = cuda_unavailable()
        if why:
            raise UserError(f"TensorRT cannot run {engine_path} here: {why}")

        self.manifest = manifest
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise UserError(f"cannot load {engine_path}: it was built by another TensorRT version or for another GPU; "
                            f"rebuild it here with ./build_engine.sh")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"TensorRT cannot create an execution context for {engine_path} (out of GPU memory?)")

        inputs, self.output_names = [], []
        try:
            self.stream = CudaStream()
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                shape = tuple(self.engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise UserError(f"{engine_path} has dynamic dims on '{name}' {shape}; biformer-edge builds static "
                                    f"engines: rebuild with ./build_engine.sh")
                buf = DeviceBuffer(shape, numpy_dtype(trt, self.engine.get_tensor_dtype(name), name))
                self.buffers[name] = buf
                if not self.context.set_tensor_address(name, buf.ptr):
                    raise UserError(f"TensorRT refused the device buffer of '{name}' in {engine_path}")
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    inputs.append(name)
                else:
                    self.output_names.append(name)
        except CudaError as exc:
            self.close()
            raise UserError(f"cannot set up the GPU buffers for {engine_path}: {exc}") from None
        except UserError:
            self.close()
            raise
        if len(inputs) != 1:
            self.close()
            raise UserError(f"{engine_path} has inputs {inputs}; a biformer-edge engine has one ('{INPUT_NAME}'): "
                            f"rebuild it from the exported model.onnx")
        self.input_name = inputs[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.buffers[self.input_name].shape

    def run(self, x: np.ndarray):
        if self.stream is None:
            raise UserError("this TensorRT session is closed")
        x = np.asarray(x)
        if tuple(x.shape) != self.input_shape:
            raise UserError(f"input shape {tuple(x.shape)} does not match the engine's input "
                            f"'{self.input_name}' {self.input_shape}: the engine is built for one static shape")
        try:
            self.buffers[self.input_name].upload(x, self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise UserError("TensorRT could not run the engine (execute_async_v3 returned False; see the TensorRT "
                                "messages above)")
            for name in self.output_names:
                self.buffers[name].download(self.stream)
            self.stream.synchronize()
        except CudaError as exc:
            raise UserError(f"TensorRT run failed on the GPU: {exc}") from None
        return RunResult.from_outputs(self.output_names, [self.buffers[n].host.copy() for n in self.output_names])

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the session is garbage-collected)."""
        self.context = None
        for buf in self.buffers.values():
            try:
                buf.free()
            except CudaError:
                pass
        self.buffers = {}
        if self.stream is not None:
            try:
                self.stream.close()
            except CudaError:
                pass
            self.stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the bindings may already be gone
            pass
