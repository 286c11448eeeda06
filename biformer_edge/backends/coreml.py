"""Core ML: ``.mlpackage`` (ML Program) export from ``torch.export``, structural checks that run on Linux, and a
Session that runs only on macOS (Core ML's predict needs the Core ML framework; toolchain.md §3.7).

FP16 programs keep each BRA router in FP32: coremltools' ``FP16ComputePrecision`` pass takes an ``op_selector``, and
the router ops (the q/k region ``reduce_mean``s, the scale ``mul``, reshapes, the affinity ``matmul`` and ``topk``)
are left out of it, so the program casts q/k up to fp32 before pooling and ``topk`` sees fp32 affinities.
"""
from __future__ import annotations

import json
import sys
import uuid
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .base import INPUT_NAME, ExportContext, Session
from .tracing import RoutingOutputs, bra_blocks

PACKAGE_NAME = "model.mlpackage"
MAX_RANK = 5                                  # Core ML's tensor rank limit (DESIGN.md: export-clean BRA)
GATHER_OPS = ("gather", "gather_along_axis", "gather_nd")
ROUTER_POOL_OP = "reduce_mean"
ROUTER_MAX_DEPTH = 8
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")

# MIL proto DataType names -> short names used in reports
_DTYPES = {"FLOAT16": "fp16", "FLOAT32": "fp32", "FLOAT64": "fp64", "BFLOAT16": "bf16", "INT8": "int8",
           "UINT8": "uint8", "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "INT64": "int64",
           "BOOL": "bool", "STRING": "string"}


def _coremltools():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools as ct
    except ImportError:
        raise UserError("coremltools is not installed: pip install 'biformer-edge[coreml]'") from None
    return ct


# --------------------------------------------------------------------------------------------------------- router


def router_op_names(block) -> set[str]:
    """Names of the router ops of a MIL block: for every ``topk``, the ops on its input's data paths back to the
    ``reduce_mean``s that pool q/k into regions (both ends included). Paths that do not reach a ``reduce_mean``
    within a few ops are not part of a router."""
    reaches: dict[int, bool] = {}
    names: set[str] = set()

    def visit(op, depth: int) -> bool:
        if op is None:
            return False
        key = id(op)
        if key in reaches:
            return reaches[key]
        if op.op_type == ROUTER_POOL_OP:
            hit = True
        elif op.op_type == "const" or depth >= ROUTER_MAX_DEPTH:
            hit = False
        else:
            hit = False
            for var in _input_vars(op):
                if visit(var.op, depth + 1):
                    hit = True
        reaches[key] = hit
        if hit:
            names.add(op.name)
        return hit

    for op in block.operations:
        if op.op_type == "topk":
            names.add(op.name)
            visit(op.inputs["x"].op, 1)
    return names


def _input_vars(op):
    for value in op.inputs.values():
        for var in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(var, "op"):
                yield var


class _KeepRouterFP32:
    """``op_selector`` for ``FP16ComputePrecision``: every op goes to fp16 except the routers (computed once per
    block, on the first op the pass asks about)."""

    def __init__(self):
        self._router: dict[int, set[str]] = {}
        self.kept: set[str] = set()

    def __call__(self, op) -> bool:
        block = op.enclosing_block
        key = id(block)
        if key not in self._router:
            self._router[key] = router_op_names(block)
        if op.name in self._router[key]:
            self.kept.add(op.name)
            return False
        return True


# --------------------------------------------------------------------------------------------------------- export


def export_program(model: nn.Module, input_shape: tuple[int, int, int, int]):
    """``torch.export`` of the model plus its routing outputs, decomposed to core ATen (what ``ct.convert`` takes)."""
    wrapper = RoutingOutputs(model).eval()
    x = torch.zeros(tuple(int(s) for s in input_shape), dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(wrapper, (x,)).run_decompositions({})


def convert_program(program, output_names: list[str], input_shape: tuple[int, int, int, int],
                    precision: str = "fp16", ios: int = 16, keep_router_fp32: bool = True, log=print):
    """ExportedProgram -> ML Program (``ct.models.MLModel``; not loaded for prediction off macOS). FP16 compute
    precision leaves the router ops (:func:`router_op_names`) in FP32 when ``keep_router_fp32``."""
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


def export(model: nn.Module, ctx: ExportContext) -> list[str]:
    """Write ``model.mlpackage`` into ``ctx.workdir``.

    Options read from ``ctx.options``: ``ios`` (16 default, 17, 18: minimum deployment target), ``weights_8bit``
    (int8 per-channel weights). FP16 keeps the BRA routers FP32 unless the model's blocks have ``router_fp32``
    switched off."""
    _coremltools()  # fail fast, before the slow torch.export
    ios = int(ctx.options.get("ios") or 16)
    keep = all(b.router_fp32 for b in bra_blocks(model))
    names = RoutingOutputs(model).output_names()
    program = export_program(model, ctx.input_shape)
    mlmodel = convert_program(program, names, ctx.input_shape, ctx.precision, ios=ios, keep_router_fp32=keep,
                              log=ctx.log)
    if ctx.options.get("weights_8bit"):
        mlmodel = quantize_weights_8bit(mlmodel)
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(workdir / PACKAGE_NAME))
    _stable_manifest(workdir / PACKAGE_NAME)
    problems = check_mlpackage(workdir / PACKAGE_NAME, names, expected_input=tuple(ctx.input_shape))
    if problems:
        raise RuntimeError("Core ML program failed its structural checks: " + "; ".join(problems))
    return [PACKAGE_NAME]


def _stable_manifest(package: Path) -> None:
    """The package's ``Manifest.json`` keys its items by random UUIDs, so every save hashes differently. Re-key them
    with name-based UUIDs (uuid5 of the item path) so equal inputs give identical packages (DESIGN.md)."""
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
    if path.suffix != ".mlpackage" and (path / PACKAGE_NAME).exists():
        path = path / PACKAGE_NAME
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


def inspect_mlpackage(path: str | Path) -> dict:
    """Structural facts of an ``.mlpackage`` read from its spec (works on Linux): op histogram of the main function,
    topk/gather presence, max tensor rank over all op outputs, input/output names and shapes, dtype of each topk
    input."""
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
    max_rank, topk_inputs = 0, []
    for op in _walk_ops(block):
        histogram[op.type] += 1
        for out in op.outputs:
            types[out.name] = _value_type(out.type)
            if types[out.name][1] is not None:
                max_rank = max(max_rank, types[out.name][1])
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
    n_routing = sum(1 for n in expected if n.startswith("routing_"))
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
        return self.split_outputs(self.output_names, [np.asarray(result[n]) for n in self.output_names])
