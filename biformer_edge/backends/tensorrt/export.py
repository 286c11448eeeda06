"""The TensorRT artifact: model.onnx checked against the parser rules, the two build scripts rendered from
``export/templates``, the engine built in-process where TensorRT and a GPU are present (``--build``), and for INT8
the quantized ExportedProgram model.pt2 for Torch-TensorRT. Imports torch only inside the functions that export.
"""
from __future__ import annotations

import copy
import stat
import string
import warnings
from pathlib import Path

from ...contract import BUILD_PY, BUILD_SCRIPT, DEEPSTREAM_FILES, ENGINE_FILE, INPUT_NAME, ONNX_FILE, PROGRAM_FILE
from ...errors import UserError, first_line
from ...profiles import load_template_module, template_path
from ..base import ExportContext
from . import TENSORRT
from .rules import MAX_OPSET, MAX_RANK, MIN_OPSET, TOPK_MAX_K, assert_tensorrt_ready


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
    return load_template_module(BUILD_PY)


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
MIXED_PRECISION_BATCHES = 8   # enough calibration batches for AutoCast's range measurement


def _quantize_op(inputs, quantizer):
    """A ModelOpt quantizer as ``torch.ops.tensorrt.quantize_op``, the Q/DQ op Torch-TensorRT converts. ModelOpt emits
    it itself only for CUDA tensors; on a CPU its fake-quant checks the range in Python, which torch.export cannot
    trace ('Could not guard on data-dependent expression', tensor_quant.py ``if min_amax < 0``)."""
    import torch
    return torch.ops.tensorrt.quantize_op(inputs, quantizer.amax.detach(), quantizer.num_bits, 0, quantizer.unsigned,
                                          quantizer.narrow_range)


def export_quantized_program(qmodel, input_shape, path) -> dict:
    """torch.export the fake-quantized model (plus its routing outputs) to ``path`` (model.pt2) for Torch-TensorRT.
    Returns {"quantize_ops", "router_quantize_ops"}: the Q/DQ ops in the graph, and those inside a BRA router, and
    {"schema_version", "torch_version"}: what the saved file states (build_engine.py --torch-tensorrt compares the
    schema version with the device's torch before loading it)."""
    import torch
    from modelopt.torch.quantization.nn.modules import tensor_quantizer as tq
    from modelopt.torch.quantization.utils import export_torch_mode

    from ...models.routing import RoutingOutputs

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
    return {"quantize_ops": len(ops), "router_quantize_ops": len(in_router), **load_build_module().pt2_facts(path)}


def write_mixed_precision(onnx_path: Path, ctx: ExportContext):
    """Rewrite the FP32 (or Q/DQ) ``onnx_path`` as the mixed precision graph of :mod:`.precision`, check that it keeps
    the router island and LayerNorm FP32, and record what it states. Returns the new ModelProto."""
    import onnx

    from .precision import DATA_MAX, float_precision, synthetic_calibration, to_mixed_precision

    calibration = ctx.calibration() if ctx.calibration is not None else synthetic_calibration(ctx.input_shape)
    calibration = calibration[:MIXED_PRECISION_BATCHES]
    ctx.log(f"mixed precision (ModelOpt AutoCast): FP16 float layers, router and LayerNorm FP32, ranges measured on "
            f"{calibration.shape[0] * calibration.shape[1]} inputs")
    proto = to_mixed_precision(onnx_path, calibration)
    onnx.checker.check_model(proto, full_check=True)
    stated = float_precision(proto)
    if stated["problems"]:
        raise UserError(f"internal check failed: the mixed precision graph computes the router or LayerNorm in FP16 "
                        f"({stated['problems'][0]}); report it with --debug")
    onnx.save(proto, str(onnx_path))
    ctx.opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    by_range = len(stated["kept_fp32"])
    ctx.checks["mixed_precision"] = {"ok": True, "summary": (
        f"{stated['nodes']['fp16']} nodes compute in FP16, {stated['nodes']['fp32']} in FP32 (router island, "
        f"LayerNorm{f', {by_range} kept FP32 for values beyond {DATA_MAX:g}' if by_range else ''}); "
        f"input and outputs FP32; opset {ctx.opset}")}
    return proto


def export(model, ctx: ExportContext) -> list[str]:
    """Write model.onnx (checked for TensorRT), build_engine.sh and build_engine.py into ``ctx.workdir``, plus
    model.engine when ``ctx.options['build']`` is set, and for INT8 the quantized ExportedProgram model.pt2 (for
    ``build_engine.py --torch-tensorrt``). Options: :class:`TensorRTOptions`."""
    from ..onnx.export import export_onnx

    options = TENSORRT.read_options(ctx.options)
    # -- DeepStream flavour (deepstream.py): the model inside the graph nvinfer runs (pixels in, softmax out) --
    deepstream = None
    if options.deepstream:
        from .deepstream import DeepStreamFlavour
        deepstream = DeepStreamFlavour(model, ctx)
        model = deepstream.graph
    # --
    workspace_mib = int(options.workspace_mib)
    if options.build:
        why = _tensorrt_gpu_missing()
        if why:
            raise UserError(f"--build needs TensorRT and an NVIDIA GPU ({why}); copy the artifact to the device and "
                            f"run ./build_engine.sh there")

    workdir = Path(ctx.workdir)
    onnx_path = workdir / ONNX_FILE
    ctx.log(f"exporting {ONNX_FILE} ({ctx.precision}, opset {ctx.opset}, input {tuple(ctx.input_shape)})")
    proto = export_onnx(model, onnx_path, tuple(ctx.input_shape), ctx.opset)
    if ctx.precision in ("fp16", "int8"):
        proto = write_mixed_precision(onnx_path, ctx)
    if deepstream is not None:   # -- DeepStream flavour: I/O named and checked as nvinfer binds it, deepstream/ --
        proto = deepstream.finish(onnx_path)
    assert_tensorrt_ready(proto, what="the exported graph")
    ctx.checks["tensorrt_onnx"] = {"ok": True, "summary": (
        f"TensorRT 10/11 parser limits (opset {MIN_OPSET}-{MAX_OPSET}, TopK constant K < {TOPK_MAX_K} sorted, no INT8 "
        f"on TopK/Gather, rank <= {MAX_RANK}): no problems")}
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
            # schema_version: build_engine.py --torch-tensorrt refuses a device torch that cannot read it
            ctx.checks["torch_export"] = {"ok": True, "summary": (
                f"{PROGRAM_FILE}: torch.export with {found['quantize_ops']} tensorrt::quantize_op Q/DQ ops, "
                f"{found['router_quantize_ops']} inside routers; ExportedProgram schema {found['schema_version']} "
                f"(torch {found['torch_version']})"), "schema_version": found["schema_version"],
                "torch_version": found["torch_version"]}
            extra.append(PROGRAM_FILE)

    values = dict(model_name=getattr(model, "name", type(model).__name__), precision=ctx.precision,
                  input_name=INPUT_NAME, input_shape="x".join(str(int(d)) for d in ctx.input_shape),
                  workspace_mib=workspace_mib)
    written = [ONNX_FILE, *extra, *(DEEPSTREAM_FILES if deepstream is not None else ())]
    for name in (BUILD_SCRIPT, BUILD_PY):
        path = workdir / name
        path.write_text(render_template(name, **values))
        written.append(name)
    sh = workdir / BUILD_SCRIPT
    sh.chmod(sh.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    if options.build:
        ctx.log("building model.engine with TensorRT")
        try:
            load_build_module().build_engine(onnx_path, workdir / ENGINE_FILE, ctx.precision, workspace_mib,
                                             options.timing_cache, bool(options.tf32), log=ctx.log)
        except RuntimeError as exc:
            raise UserError(f"TensorRT engine build failed: {exc}") from None
        written.append(ENGINE_FILE)
    return written


def int8_graph(workdir: Path):
    """The INT8 facts of ``model.onnx``, the Q/DQ graph every engine is built from."""
    from ..onnx.export import int8_graph as onnx_int8_graph
    return onnx_int8_graph(workdir)
