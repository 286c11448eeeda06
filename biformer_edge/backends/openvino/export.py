"""The OpenVINO artifact: ``ov.convert_model`` of the model (FP32 IR; FP16 weights with the routers marked FP32) or
of the Q/DQ ONNX (INT8: FakeQuantize), names stable across exports, and the INT8 facts of an IR: the precision each
layer states and the one the CPU plugin executed it in. Imports torch only inside the functions that convert.
"""
from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...contract import INPUT_NAME, IR_BIN, IR_XML, ONNX_FILE, ROUTER_MODULE, Int8Graph
from ..base import ExportContext
from . import OPENVINO
from .rules import _core, _openvino, keep_router_fp32, marked_nodes, router_nodes, router_scope, snippets_hazard
from .session import OpenVINOSession, executed_precision

if TYPE_CHECKING:  # annotations only: this module imports torch inside the export functions
    from torch import nn


def convert(model: nn.Module, input_shape: tuple[int, int, int, int]):
    """``ov.convert_model`` of the model plus its routing outputs, static shape, named ``images`` -> ``logits``,
    ``routing_0`` ..."""
    import torch

    from ...models.routing import RoutingOutputs

    ov = _openvino()
    wrapper = RoutingOutputs(model).eval()
    x = torch.zeros(tuple(int(s) for s in input_shape), dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on Python-int shapes
        ov_model = ov.convert_model(wrapper, example_input=x, input=[ov.PartialShape(list(x.shape))])
    names = wrapper.output_names()
    if len(ov_model.outputs) != len(names):
        raise RuntimeError(f"OpenVINO model has {len(ov_model.outputs)} outputs, expected {len(names)}")
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(ov_model.outputs, names):
        output.get_tensor().set_names({name})
    _stable_names(ov_model)
    return ov_model


_AUTO_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*_\d+")


def _stable_names(ov_model) -> None:
    """OpenVINO names the nodes it creates ``<Type>_<process-wide counter>`` (and models ``Model<counter>``), so a
    second export in the same process would write a different XML. Renumber them by topological position so that
    equal inputs give byte-identical IRs (same inputs, same hashes)."""
    ov_model.set_friendly_name("biformer")
    for i, op in enumerate(ov_model.get_ordered_ops()):
        if _AUTO_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")


def mark_routers(ov_model, model, keep_fp32: bool, ctx: ExportContext):
    """With ``keep_fp32`` (and the model's routers FP32), mark every router to stay FP32 in f16/bf16 compute; in any
    case note the CPU plugin's Snippets hazard. Returns the model to save."""
    from ...models.routing import bra_blocks

    blocks = bra_blocks(model)
    if keep_fp32 and all(b.router_fp32 for b in blocks):
        found = sum(n.get_type_name() == "TopK" for n in router_nodes(ov_model))
        if found != len(blocks):  # the router is found by its module name: never leave one unmarked silently
            raise RuntimeError(f"found {found} router TopK ops named '.../{ROUTER_MODULE}/...' in the OpenVINO model, "
                               f"but the model has {len(blocks)} BRA blocks")
        ov_model = keep_router_fp32(ov_model)
        ctx.log(f"openvino: {len(marked_nodes(ov_model))} router nodes kept FP32")
    if snippets_hazard(ov_model):
        ctx.log("openvino: a BRA block has as many heads as tokens per region; OpenVINO's CPU plugin needs "
                "SNIPPETS_MODE=DISABLE for this IR (OpenVINOSession sets it)")
    return ov_model


def export(model: nn.Module, ctx: ExportContext) -> list[str]:
    """Write ``model.xml``/``model.bin`` into ``ctx.workdir``. FP32: plain IR. FP16: weights compressed to FP16 and,
    unless the model's BRA blocks have ``router_fp32`` switched off, the routers marked to stay FP32. INT8
    (``model`` is the exporter's fake-quantized copy): :func:`export_int8`."""

    if ctx.precision == "int8":
        return export_int8(model, ctx)
    ov = _openvino()
    fp16 = ctx.precision == "fp16"
    ov_model = convert(model, ctx.input_shape)
    ov_model = mark_routers(ov_model, model, fp16, ctx)
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(workdir / IR_XML), compress_to_fp16=fp16)
    return [IR_XML, IR_BIN]


# ----------------------------------------------------------------------------------------------------------- int8

# Ops that only move data: a FakeQuantize behind them still quantizes the op they feed.
IR_PASS_THROUGH = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert")
# Ops of an IR whose inputs the layer report lists (the ONNX frontend turns a Conv with bias into Convolution + Add,
# a depthwise Conv into GroupConvolution, and fuses softmax(q k^T) v into ScaledDotProductAttention).
IR_COMPUTE_OPS = ("Convolution", "GroupConvolution", "MatMul", "ScaledDotProductAttention")


def convert_qdq(model: nn.Module, input_shape: tuple[int, int, int, int], opset: int, tmp: Path):
    """The INT8 IR: ``export_onnx`` of the fake-quantized model (the same Q/DQ ONNX the onnx/tensorrt targets write)
    converted by ``ov.convert_model``, which turns each Q/DQ pair into a FakeQuantize (weights: int8 constants with a
    dequantizing Convert/Multiply). Names ``images`` -> ``logits``, ``routing_i`` come from the ONNX. Returns
    (ov model, onnx proto)."""
    from ..onnx.export import export_onnx

    ov = _openvino()
    path = Path(tmp) / ONNX_FILE
    proto = export_onnx(model, path, input_shape, opset)
    ov_model = ov.convert_model(str(path))
    if ov_model.inputs[0].get_any_name() != INPUT_NAME:
        raise RuntimeError(f"the INT8 IR's input is '{ov_model.inputs[0].get_any_name()}', not '{INPUT_NAME}'")
    _name_quantized_layers(ov_model)
    _stable_names(ov_model)
    return ov_model, proto


def _name_quantized_layers(ov_model) -> None:
    """The ONNX frontend gives a Conv that a BatchNorm follows a counter name (``Convolution_123``): name it after the
    module whose input quantizer feeds it (``/model/.../downsample_layers.0.0/Conv`` from
    ``.../downsample_layers.0.0/input_quantizer/DequantizeLinear``), so the layer report names every layer."""
    taken = {op.get_friendly_name() for op in ov_model.get_ordered_ops()}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in IR_COMPUTE_OPS or not _AUTO_NAME.fullmatch(op.get_friendly_name()):
            continue
        node = op.input_value(0).get_node()
        while "/input_quantizer/" not in node.get_friendly_name() and node.get_type_name() in IR_PASS_THROUGH:
            node = node.input_value(0).get_node()
        scope, sep, _ = node.get_friendly_name().partition("/input_quantizer/")
        name = f"{scope}/{'MatMul' if op.get_type_name() == 'MatMul' else 'Conv'}"
        if sep and name not in taken:
            op.set_friendly_name(name)
            taken.add(name)


def _source(output):
    """The node behind ``output``, looking through ops that only move data."""
    node = output.get_node()
    while node.get_type_name() in IR_PASS_THROUGH:
        node = node.input_value(0).get_node()
    return node


def fake_quantize_into_topk(ov_model) -> list[str]:
    """FakeQuantize ops on any path into a TopK, walking back through the router's ops (:func:`router_scope`) and ops
    that only move data: empty for the QAR island, one per quantized affinity input for ``--routing naive``."""
    found = []
    for topk in (op for op in ov_model.get_ordered_ops() if op.get_type_name() == "TopK"):
        seen, queue = set(), [topk.input_value(0).get_node()]
        while queue:
            node = queue.pop()
            key = (node.get_type_name(), node.get_friendly_name())
            if key in seen:
                continue
            seen.add(key)
            if node.get_type_name() == "FakeQuantize":
                found.append(f"{node.get_friendly_name()} -> {topk.get_friendly_name()}")
            elif router_scope(node.get_friendly_name()) or node.get_type_name() in IR_PASS_THROUGH:
                queue.extend(i.get_source_output().get_node() for i in node.inputs())
    return found


def _weight_precision(output) -> tuple[str, int]:
    """(precision, parameter count) of a compute op's second input as the IR states it: int8 when it is a FakeQuantize
    or an int8 constant behind its dequantization (Convert, Subtract, Multiply by constants), float otherwise; the
    count is that of the constant behind it (0 for an activation)."""
    node = _source(output)
    if node.get_type_name() == "FakeQuantize":
        const = _source(node.input_value(0))
        return "int8", int(np.prod(const.get_output_shape(0))) if const.get_type_name() == "Constant" else 0
    while node.get_type_name() in ("Multiply", "Subtract"):  # dequantization: (int8 - zero point) * scale
        data = [_source(i.get_source_output()) for i in node.inputs()]
        rest = [d for d in data if d.get_type_name() != "Constant" or d.get_output_element_type(0).is_integral()]
        if len(rest) != 1:
            break
        node = rest[0]
    if node.get_type_name() == "Constant":
        params = int(np.prod(node.get_output_shape(0)))
        return ("int8" if node.get_output_element_type(0).is_integral() else "float"), params
    return "float", 0


def ir_layer_precision(ov_model) -> list[dict]:
    """One row per Convolution / GroupConvolution / MatMul / ScaledDotProductAttention of an IR, in the fields of
    :func:`biformer_edge.backends.onnx.layer_precision`: name, op, the precision of its activation input and of its
    weight (the second input: k for attention) as the graph states them, weight parameters, and whether it belongs
    to a router."""
    rows = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in IR_COMPUTE_OPS:
            continue
        act = "int8" if _source(op.input_value(0)).get_type_name() == "FakeQuantize" else "float"
        weight, params = _weight_precision(op.input_value(1))
        rows.append({"layer": op.get_friendly_name(), "op": op.get_type_name(), "input": act, "weight": weight,
                     "weight_params": params, "router": router_scope(op.get_friendly_name()) is not None})
    return rows


def executed_summary(rows: list[dict]) -> dict:
    """Counts of the report's layers by the precision OpenVINO executed them in (``executed``), INT8 kernels
    (runtime precision i8/u8) apart."""
    from collections import Counter

    counts = Counter(r.get("executed", "?") for r in rows)
    return {"by_precision": dict(sorted(counts.items())),
            "int8_layers": sum(n for p, n in counts.items() if p in ("i8", "u8")),
            "int8_weight_params": sum(r["weight_params"] for r in rows if r.get("executed") in ("i8", "u8"))}


def int8_graph(workdir: Path, precision_hint: str | None = None) -> Int8Graph:
    """The INT8 facts of the IR an export wrote: :func:`ir_layer_precision` plus what the CPU plugin executed each layer
    in under ``precision_hint`` (default: the one parity checks INT8 IRs in, compiled as :class:`OpenVINOSession` does):
    ``executed`` (the runtime precision: i8/u8 for INT8 kernels, f32, bf16) and ``kernel`` (the plugin's node type),
    and the FakeQuantize ops on any path into a TopK (:func:`fake_quantize_into_topk`)."""
    if precision_hint is None:
        from ...targets import load_profile
        precision_hint = OPENVINO.parity_hint(load_profile("openvino"), "int8")
    xml_path = Path(workdir) / IR_XML
    ov_model = _core().read_model(str(xml_path))
    rows = ir_layer_precision(ov_model)
    # The plugin may name a fused layer after the op that consumed it (MatMul + bias Add -> "<...>/Add").
    ops = {op.get_friendly_name(): op for op in ov_model.get_ordered_ops()}
    aliases = {}
    for row in rows:
        targets = list(ops[row["layer"]].output(0).get_target_inputs())
        aliases[row["layer"]] = [row["layer"]] + ([targets[0].get_node().get_friendly_name()] if len(targets) == 1
                                                  else [])
    session = OpenVINOSession(xml_path, precision_hint=precision_hint)
    executed = executed_precision(session.compiled, [n for names in aliases.values() for n in names])
    for row in rows:
        entry = next((executed[n] for n in aliases[row["layer"]] if n in executed), {})
        row["executed"] = entry.get("precision", "?")
        row["kernel"] = entry.get("kernel", "?")
    ex = {"cpu": str(_core().get_property("CPU", "FULL_DEVICE_NAME")), "precision_hint": session.precision_hint,
          "inference_precision": session.inference_precision, **executed_summary(rows)}
    fq = sum(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ordered_ops())
    note = (f"\nExecuted: OpenVINO CPU plugin ({ex['cpu']}), precision hint {ex['precision_hint']} (computes "
            f"{ex['inference_precision']}); layers by executed precision: "
            + ", ".join(f"{p} {n}" for p, n in ex["by_precision"].items())
            + f". i8/u8 are INT8 kernels; {fq} FakeQuantize in the IR.\n")
    return Int8Graph(rows=rows, into_topk=fake_quantize_into_topk(ov_model), quantizer="FakeQuantize",
                     graph="IR", topk=sum(op.get_type_name() == "TopK" for op in ov_model.get_ordered_ops()),
                     executed=ex, notes=[note])


def export_int8(model: nn.Module, ctx: ExportContext) -> list[str]:
    """INT8 IR from the fake-quantized ``model`` (:func:`convert_qdq`), the router's float ops marked to stay FP32
    under a bf16/f16 hint as in the FP16 IR (``--routing qar``). The exporter then checks the router island and
    writes the layer report from :func:`int8_graph`."""
    ov = _openvino()
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="biformer-ov-") as tmp:
        ov_model, _ = convert_qdq(model, ctx.input_shape, ctx.opset, Path(tmp))
        fq = sum(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ordered_ops())
        if not fq:
            raise RuntimeError("the INT8 IR holds no FakeQuantize: the model given was not fake-quantized")
        ov_model = mark_routers(ov_model, model, ctx.routing == "qar", ctx)
        ov.save_model(ov_model, str(workdir / IR_XML), compress_to_fp16=False)
    ctx.log(f"openvino: INT8 IR, {fq} FakeQuantize")
    return [IR_XML, IR_BIN]
