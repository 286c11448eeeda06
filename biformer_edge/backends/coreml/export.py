"""The Core ML artifact: ``torch.export`` of the model with its router nodes named by module, ``ct.convert`` to an ML
Program (FP16 with the routers FP32), 8-bit weights (and on macOS 8-bit activations), a package that hashes the same
for the same inputs, checked structurally. Imports torch only inside the functions that export.
"""
from __future__ import annotations

import json
import sys
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...contract import INPUT_NAME, MLPACKAGE, routing_names
from ...errors import UserError
from ..base import ExportContext
from . import COREML, IOS_VERSIONS
from .rules import _coremltools, check_mlpackage, is_router_op, quiet_coremltools, router_op_names, router_scope

if TYPE_CHECKING:
    from torch import nn


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

    from ...models.bra import RegionRouter
    from ...models.routing import RoutingOutputs

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
    if ios not in IOS_VERSIONS:
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

    Options (:class:`CoreMLOptions`): ``ios`` (minimum deployment target), ``weights_8bit`` (int8 per-channel
    weights). FP16 keeps the BRA routers FP32 unless the model's blocks have ``router_fp32``
    switched off. ``int8`` is the FP16 program with 8-bit per-channel weights (:func:`_int8`; W8A8 on macOS)."""
    from ...models.routing import RoutingOutputs, bra_blocks

    _coremltools()  # fail fast, before the slow torch.export
    options = COREML.read_options(ctx.options)
    ios = int(options.ios)
    keep = all(b.router_fp32 for b in bra_blocks(model))
    names = RoutingOutputs(model).output_names()
    program = export_program(model, ctx.input_shape)
    compute = "fp16" if ctx.precision == "int8" else ctx.precision
    mlmodel = convert_program(program, names, ctx.input_shape, compute, ios=ios, keep_router_fp32=keep, log=ctx.log)
    if ctx.precision == "int8":
        mlmodel = _int8(mlmodel, ctx, ios)
    elif options.weights_8bit:
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
