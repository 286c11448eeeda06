"""Core ML: ``.mlpackage`` (ML Program) export from ``torch.export``, structural checks that run on Linux, and a
Session that runs only on macOS (Core ML's predict needs Apple's Core ML framework; coremltools converts anywhere).

FP16 programs keep each BRA router in FP32: coremltools' ``FP16ComputePrecision`` pass takes an ``op_selector``, and
the router ops are left out of it by name. coremltools names each MIL op after its ``torch.export`` node ('mean_1',
'topk'), which carries no module scope, so :func:`export_program` renames the nodes that run inside a router (their
``nn_module_stack`` names a ``RegionRouter``) to ``<module path>__<node>``, e.g.
``backbone_stages_0_0_attn_router__mean``; :func:`is_router_op` selects by that name. The program then casts q/k up to
fp32 before pooling and ``topk`` sees fp32 affinities.

Importing this module imports no torch (the Session runs on a Mac without it); the export functions import it.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract import INPUT_NAME, MLPACKAGE, ROUTER_MODULE, RunResult, routing_names
from ..errors import UserError
from .base import ExportContext, Session

if TYPE_CHECKING:
    from torch import nn

MAX_RANK = 5                                  # Core ML's tensor rank limit: BRA keeps every tensor at rank <= 5
GATHER_OPS = ("gather", "gather_along_axis", "gather_nd")
ROUTER_SCOPE_SEP = "__"                       # '<router module path, dots as _>__<torch.export node name>'
_ROUTER_OP_NAME = re.compile(rf"(?:^|_){ROUTER_MODULE}{ROUTER_SCOPE_SEP}")   # the scope ends with the router's name
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")

# MIL proto DataType names -> short names used in reports
_DTYPES = {"FLOAT16": "fp16", "FLOAT32": "fp32", "FLOAT64": "fp64", "BFLOAT16": "bf16", "INT8": "int8",
           "UINT8": "uint8", "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "INT64": "int64",
           "BOOL": "bool", "STRING": "string"}


@contextlib.contextmanager
def quiet_coremltools():
    """coremltools reports through Python warnings, ``logging``, tqdm bars on stderr and its native libraries
    ("Failed to load _MLModelProxy" off macOS): keep all of it off the user's stderr while it converts."""
    from ..console import captured_native_stderr
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), captured_native_stderr():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _coremltools():
    try:
        with quiet_coremltools():
            import coremltools as ct
    except ImportError:
        raise UserError("coremltools is not installed: pip install 'biformer-edge[coreml]'") from None
    return ct


# --------------------------------------------------------------------------------------------------------- router


def router_scope(module_path: str) -> str:
    """The op-name prefix of the router at ``module_path`` (relative to the model): 'backbone.stages.0.0.attn.router'
    -> 'backbone_stages_0_0_attn_router__'."""
    return re.sub(r"\W", "_", module_path) + ROUTER_SCOPE_SEP


def is_router_op(name: str) -> bool:
    """Whether a MIL op (or torch.export node) named ``name`` runs inside a BRA router (``attn.router``)."""
    return bool(_ROUTER_OP_NAME.search(name))


def name_router_nodes(program, routers: dict[str, str]) -> int:
    """Rename, in place, every node of ``program`` (an ExportedProgram) that runs inside a router module to
    :func:`router_scope` + its name. ``routers`` maps the module paths that ``nn_module_stack`` records to the paths
    used in names. Graph outputs keep their names (the signature refers to them; they are not MIL ops). Returns how
    many nodes were renamed."""
    keep = {getattr(spec.arg, "name", None) for spec in program.graph_signature.output_specs}
    renamed = 0
    for node in program.graph.nodes:
        if node.op != "call_function" or node.name in keep:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path = next((routers[p] for p, _ in reversed(list(stack.values())) if p in routers), None)
        if path is not None:
            node._rename(router_scope(path) + node.name)   # torch.fx keeps names unique and valid
            renamed += 1
    program.graph_module.recompile()
    return renamed


class _KeepRouterFP32:
    """``op_selector`` for ``FP16ComputePrecision``: every op goes to fp16 except the routers' (by name)."""

    def __init__(self):
        self.kept: set[str] = set()

    def __call__(self, op) -> bool:
        if is_router_op(op.name):
            if op.op_type != "const":
                self.kept.add(op.name)
            return False
        return True


# --------------------------------------------------------------------------------------------------------- export


def export_program(model: nn.Module, input_shape: tuple[int, int, int, int]):
    """``torch.export`` of the model plus its routing outputs, decomposed to core ATen (what ``ct.convert`` takes),
    with the router nodes named by their module (:func:`name_router_nodes`)."""
    import torch

    from ..models.bra import RegionRouter
    from ..models.routing import RoutingOutputs

    wrapper = RoutingOutputs(model).eval()
    x = torch.zeros(tuple(int(s) for s in input_shape), dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(wrapper, (x,)).run_decompositions({})
    routers = {f"model.{name}" if name else "model": name or "router"
               for name, module in model.named_modules() if isinstance(module, RegionRouter)}
    name_router_nodes(program, routers)
    return program


def convert_program(program, output_names: list[str], input_shape: tuple[int, int, int, int],
                    precision: str = "fp16", ios: int = 16, keep_router_fp32: bool = True, log=print):
    """ExportedProgram (from :func:`export_program`) -> ML Program (``ct.models.MLModel``; not loaded for prediction
    off macOS). FP16 compute precision leaves the router ops (:func:`is_router_op`) in FP32 when
    ``keep_router_fp32``."""
    ct = _coremltools()
    if ios not in (16, 17, 18):
        raise UserError(f"Core ML deployment target iOS{ios} is not supported: use 16, 17 or 18")
    selector = None
    if precision == "fp16":
        if keep_router_fp32:
            selector = _KeepRouterFP32()
            compute_precision = ct.transform.FP16ComputePrecision(op_selector=selector)
        else:
            compute_precision = ct.precision.FLOAT16
    elif precision == "fp32":
        compute_precision = ct.precision.FLOAT32
    else:
        raise UserError(f"Core ML export supports fp32 and fp16, not '{precision}'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            program, convert_to="mlprogram", source="pytorch",
            inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(int(s) for s in input_shape), dtype=np.float32)],
            outputs=[ct.TensorType(name=name) for name in output_names],
            compute_precision=compute_precision,
            minimum_deployment_target=getattr(ct.target, f"iOS{ios}"),
            skip_model_load=sys.platform != "darwin",
        )
    if selector is not None:
        if not selector.kept and bool(routing_names(output_names)):
            raise UserError("no op of the Core ML program is named as a BRA router op, so FP16 would lower the "
                            "router: convert a program made by export_program (it names the router ops)")
        log(f"coreml: {len(selector.kept)} router ops kept FP32")
    return mlmodel


def quantize_weights_8bit(mlmodel):
    """Data-free int8 weights: per-output-channel symmetric linear quantization (activations stay float)."""
    _coremltools()
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                      granularity="per_channel"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return linear_quantize_weights(mlmodel, config)


def router_op_names(mlmodel) -> list[str]:
    """Names of the non-const ops of an ML Program that run inside a BRA router (:func:`is_router_op`)."""
    spec = mlmodel.get_spec()
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    return sorted({_op_name(op) for op in _walk_ops(block) if op.type != "const" and is_router_op(_op_name(op))})


def quantize_activations_8bit(mlmodel, sample_data: list[dict], log=print):
    """W8A8's activation half (coremltools 9 ``linear_quantize_activations``): symmetric int8 activations calibrated
    by running ``sample_data`` through Core ML's predict, which exists only on macOS. The router ops are left out
    (their config is None), so the routing affinities stay FP32. Needs an iOS 17+ program (quantize/dequantize
    ops). Follow with :func:`quantize_weights_8bit`."""
    _coremltools()
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_activations

    router = router_op_names(mlmodel)
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric"),
                                op_name_configs={name: None for name in router})
    log(f"coreml: calibrating 8-bit activations on {len(sample_data)} batches, {len(router)} router ops left FP32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return linear_quantize_activations(mlmodel, config, sample_data)


def _int8(mlmodel, ctx: ExportContext, ios: int):
    """``--int8`` for Core ML: 8-bit per-channel weights on the FP16 program (router FP32); on macOS with iOS 17+,
    8-bit activations too (W8A8), calibrated on the export's calibration recipe."""
    note = "; --routing naive changes nothing here (Core ML keeps the router FP32)" if ctx.routing == "naive" else ""
    if sys.platform != "darwin" or ios < 17:
        mac = sys.platform == "darwin"
        ctx.log(f"coreml: int8 = 8-bit per-channel weights, FP16 activations; W8A8 (activation calibration) "
                f"{'needs --ios 17 or later' if mac else 'needs Core ML predict on macOS'}")
        ctx.checks["int8"] = {"ok": True, "summary": f"W8 per-channel, activations FP16 (W8A8 needs "
                                                     f"{'--ios 17+' if mac else 'macOS'}){note}"}
        return quantize_weights_8bit(mlmodel)
    if ctx.calibration is None:
        raise UserError("Core ML W8A8 needs calibration data: export through biformer-export (it passes --calib)")
    batches = ctx.calibration()
    mlmodel = quantize_activations_8bit(mlmodel, [{INPUT_NAME: np.ascontiguousarray(b, dtype=np.float32)}
                                                  for b in batches], log=ctx.log)
    ctx.checks["int8"] = {"ok": True, "summary": f"W8A8: 8-bit per-channel weights, 8-bit activations calibrated on "
                                                 f"{int(np.prod(batches.shape[:2]))} samples, router FP32{note}"}
    return quantize_weights_8bit(mlmodel)


def export(model: nn.Module, ctx: ExportContext) -> list[str]:
    """Write ``model.mlpackage`` into ``ctx.workdir`` (:func:`export_package`, with coremltools kept quiet)."""
    with quiet_coremltools():
        return export_package(model, ctx)


def export_package(model: nn.Module, ctx: ExportContext) -> list[str]:
    """Write ``model.mlpackage`` into ``ctx.workdir``.

    Options read from ``ctx.options``: ``ios`` (16 default, 17, 18: minimum deployment target), ``weights_8bit``
    (int8 per-channel weights). FP16 keeps the BRA routers FP32 unless the model's blocks have ``router_fp32``
    switched off. ``int8`` is the FP16 program with 8-bit per-channel weights (:func:`_int8`; W8A8 on macOS)."""
    from ..models.routing import RoutingOutputs, bra_blocks

    _coremltools()  # fail fast, before the slow torch.export
    ios = int(ctx.options.get("ios") or 16)
    keep = all(b.router_fp32 for b in bra_blocks(model))
    names = RoutingOutputs(model).output_names()
    program = export_program(model, ctx.input_shape)
    compute = "fp16" if ctx.precision == "int8" else ctx.precision
    mlmodel = convert_program(program, names, ctx.input_shape, compute, ios=ios, keep_router_fp32=keep, log=ctx.log)
    if ctx.precision == "int8":
        mlmodel = _int8(mlmodel, ctx, ios)
    elif ctx.options.get("weights_8bit"):
        mlmodel = quantize_weights_8bit(mlmodel)
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(workdir / MLPACKAGE))
    _stable_manifest(workdir / MLPACKAGE)
    problems = check_mlpackage(workdir / MLPACKAGE, names, expected_input=tuple(ctx.input_shape))
    if problems:
        raise UserError("the converted Core ML program failed its structural checks: " + "; ".join(problems)
                        + " (report it with the coremltools and torch versions)")
    return [MLPACKAGE]


def _stable_manifest(package: Path) -> None:
    """The package's ``Manifest.json`` keys its items by random UUIDs, so every save hashes differently. Re-key them
    with name-based UUIDs (uuid5 of the item path) so equal inputs give identical packages."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entries = manifest.get("itemInfoEntries", {})
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, "biformer-edge/" + item.get("path", old)))
               for old, item in entries.items()}
    manifest["itemInfoEntries"] = {renamed[old]: item for old, item in sorted(entries.items(),
                                                                             key=lambda kv: renamed[kv[0]])}
    if manifest.get("rootModelIdentifier") in renamed:
        manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4) + "\n")


# ------------------------------------------------------------------------------------------------------- inspect


def _package_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".mlpackage" and (path / MLPACKAGE).exists():
        path = path / MLPACKAGE
    if not path.exists():
        raise UserError(f"no Core ML package at {path}: export one with 'biformer-export --target coreml'")
    return path


def _value_type(vt) -> tuple[str | None, int | None, tuple | None]:
    """(dtype, rank, shape) of a MIL proto ValueType; dims that are not constants become None."""
    from coremltools.proto import MIL_pb2

    if vt.WhichOneof("type") != "tensorType":
        return None, None, None
    tt = vt.tensorType
    dtype = _DTYPES.get(MIL_pb2.DataType.Name(tt.dataType), MIL_pb2.DataType.Name(tt.dataType).lower())
    shape = tuple(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in tt.dimensions)
    return dtype, int(tt.rank), shape


def _walk_ops(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_ops(inner)


def _op_name(op) -> str:
    """A MIL proto op's name (its 'name' attribute, else its first output's)."""
    if "name" in op.attributes and op.attributes["name"].immediateValue.tensor.strings.values:
        return op.attributes["name"].immediateValue.tensor.strings.values[0]
    return op.outputs[0].name if op.outputs else ""


def inspect_mlpackage(path: str | Path) -> dict:
    """Structural facts of an ``.mlpackage`` read from its spec (works on Linux): op histogram of the main function,
    topk/gather presence, max tensor rank over all op outputs, input/output names and shapes, dtype of each topk
    input, and the ops named as router ops (:func:`is_router_op`) with the dtypes they compute in."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(_package_path(path)))
    if spec.WhichOneof("Type") != "mlProgram":
        raise UserError(f"{path} is not an ML Program (found {spec.WhichOneof('Type')})")
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    types: dict[str, tuple] = {}
    for inp in function.inputs:
        types[inp.name] = _value_type(inp.type)
    histogram: Counter = Counter()
    router_ops: Counter = Counter()
    max_rank, topk_inputs, router_dtypes = 0, [], set()
    for op in _walk_ops(block):
        histogram[op.type] += 1
        for out in op.outputs:
            types[out.name] = _value_type(out.type)
            if types[out.name][1] is not None:
                max_rank = max(max_rank, types[out.name][1])
        if op.type != "const" and is_router_op(_op_name(op)):
            router_ops[op.type] += 1
            router_dtypes.add(types[op.outputs[0].name][0])
    for op in _walk_ops(block):
        if op.type == "topk":
            args = op.inputs["x"].arguments
            name = args[0].name if args and args[0].WhichOneof("binding") == "name" else None
            topk_inputs.append(types.get(name, (None,))[0])
    inputs = {inp.name: types[inp.name][2] for inp in function.inputs}
    outputs = {name: types.get(name, (None, None, None))[2] for name in block.outputs}
    return {
        "spec_version": int(spec.specificationVersion),
        "opset": function.opset,
        "ops": dict(sorted(histogram.items())),
        "has_topk": histogram["topk"] > 0,
        "has_gather": any(histogram[g] for g in GATHER_OPS),
        "max_rank": max_rank,
        "inputs": inputs,
        "outputs": outputs,
        "topk_input_dtypes": topk_inputs,
        "router_ops": dict(sorted(router_ops.items())),       # non-const ops named as router ops
        "router_dtypes": sorted(d for d in router_dtypes if d),  # dtypes of their (first) outputs
    }


def check_mlpackage(path: str | Path, expected_outputs, expected_input: tuple | None = None) -> list[str]:
    """Problems found in an ``.mlpackage`` (empty list: none). ``expected_outputs``: output names, or a dict
    name -> shape (None: any shape). Checks: topk and a gather op present (one topk per routing output), every
    tensor of rank <= 5, input named ``images`` (of ``expected_input`` shape if given), outputs named and shaped
    as expected."""
    facts = inspect_mlpackage(path)
    expected = dict(expected_outputs) if isinstance(expected_outputs, dict) else {n: None for n in expected_outputs}
    problems = []
    if not facts["has_topk"]:
        problems.append("no topk op: the BRA routing was lost in conversion")
    if not facts["has_gather"]:
        problems.append("no gather op: the BRA region gather was lost in conversion")
    n_routing = len(routing_names(expected))
    if facts["ops"].get("topk", 0) < n_routing:
        problems.append(f"{facts['ops'].get('topk', 0)} topk ops for {n_routing} routing outputs")
    if facts["max_rank"] > MAX_RANK:
        problems.append(f"a tensor of rank {facts['max_rank']} (Core ML allows at most {MAX_RANK})")
    if list(facts["inputs"]) != [INPUT_NAME]:
        problems.append(f"inputs are {list(facts['inputs'])}, expected ['{INPUT_NAME}']")
    elif expected_input is not None and facts["inputs"][INPUT_NAME] != tuple(expected_input):
        problems.append(f"input shape {facts['inputs'][INPUT_NAME]}, expected {tuple(expected_input)}")
    missing = [n for n in expected if n not in facts["outputs"]]
    extra = [n for n in facts["outputs"] if n not in expected]
    if missing:
        problems.append(f"missing outputs {missing}")
    if extra:
        problems.append(f"unexpected outputs {extra}")
    for name, shape in expected.items():
        if shape is not None and name in facts["outputs"] and facts["outputs"][name] != tuple(shape):
            problems.append(f"output {name} has shape {facts['outputs'][name]}, expected {tuple(shape)}")
    return problems


# -------------------------------------------------------------------------------------------------------- session


class CoreMLSession(Session):
    """Runs ``model.mlpackage`` with Core ML (macOS only). ``compute_units``: CPU_ONLY (default, the parity
    reference on a Mac), CPU_AND_GPU, CPU_AND_NE or ALL (the Neural Engine computes in fp16 whatever the program
    says)."""

    backend = "coreml"

    def __init__(self, artifact_dir: str | Path, manifest: dict | None = None, compute_units: str = "CPU_ONLY"):
        if sys.platform != "darwin":
            raise UserError("Core ML runs only on macOS: copy the artifact to a Mac and run biformer-parity there; "
                            "on Linux the program was checked structurally")
        units = str(compute_units).upper()
        if units not in COMPUTE_UNITS:
            raise UserError(f"unknown Core ML compute units '{compute_units}': use one of {', '.join(COMPUTE_UNITS)}")
        ct = _coremltools()
        path = _package_path(artifact_dir)
        self.manifest = manifest or {}
        self.compute_units = units
        self.device = units.lower()
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, units))
        spec = self.model.get_spec()
        self.output_names = [o.name for o in spec.description.output]

    def run(self, x: np.ndarray):
        result = self.model.predict({INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
        return RunResult.from_outputs(self.output_names, [np.asarray(result[n]) for n in self.output_names])
