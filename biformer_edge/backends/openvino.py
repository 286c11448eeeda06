"""OpenVINO: IR export (FP32, or FP16-compressed weights with every BRA router marked to stay FP32) and a CPU Session
that always sets its inference precision explicitly.

Why explicit: the CPU plugin picks bf16 by default on AVX512-BF16/AMX CPUs and f16 where AVX512-FP16 is present
(OpenVINO's CPU plugin documentation; measured in README "OpenVINO precision"), so an unpinned run measures the CPU
as much as the artifact. An explicit hint is not always
honoured either: the plugin computes an ``f16`` hint in f16 only where its ``OPTIMIZATION_CAPABILITIES`` list FP16;
where they list BF16 but not FP16 (AMD Zen 4/5, Intel Cooper Lake) it computes the ``f16`` hint in **bf16**, elsewhere
in f32. The Session records what was asked (``requested_hint``), what it set (``precision_hint``) and what the
compiled model reports (``inference_precision``).

Precision rule (measured, benchmarks/openvino_precision.py): ``auto`` computes in f16 only where the CPU computes f16
natively (capabilities list FP16 *and* the compiled model reports f16) and in f32 everywhere else (FP16 weights, f32
compute). Never in bf16: bf16's 8-bit mantissa perturbs every feature the routers pool, so routing flips although the
router island itself runs f32 (biformer_seg_demo 0.968 at 128, 0.989 at 256; biformer_tiny 0.952; keeping the whole
attention block f32 as well recovers nothing), and an FP16 artifact checked in bf16 misses its FP16 thresholds. bf16 is
a choice a user makes explicitly (``precision_hint="bf16"``, ``biformer-parity --ov-precision bf16``), checked against
its own thresholds (``[thresholds.bf16]`` in export/openvino.toml).

CPU plugin defect worked around here: in OpenVINO 2026.4.1 the CPU plugin's Snippets MHA fusion computes wrong
results (5-40 % relative error in FP32) when a BRA block has as many heads as tokens per region (e.g.
``biformer_seg_demo`` at 256x256: stage 3 has 4 heads and 2x2-token regions), i.e. when the head-merging Transpose
after attention keeps the shape unchanged. The Session detects that pattern in the IR and compiles with
``SNIPPETS_MODE=DISABLE`` (then correct to 1e-6; not slower on the AVX2 CPU measured). Code that deploys the IR
with its own OpenVINO calls must set the same property.

Router precision island (QAR, README): OpenVINO 2026's ``DisablePrecisionConversion`` runtime attribute
(written as ``dynamic:bf16,f16``; the IR reader also maps the older ``precise`` attribute onto it) keeps a node in its
original precision: the CPU plugin gives such nodes ``keepOrigPrecision`` and skips them when it lowers the graph to
f16/bf16, and ``compress_to_fp16`` leaves their constants in f32. The Python API cannot create that attribute
(string values in ``rt_info`` are neither serialized nor understood), so :func:`keep_router_fp32` writes it into the
IR and reads the model back. The router is found by name: ``ov.convert_model`` names every op of a submodule
``__module.<path>/aten::<op>/<Type>``, and BRA's router is the parameter-free submodule ``attn.router``
(``RegionRouter``), so its ops are ``__module.....attn.router/aten::mean/ReduceMean`` ... ``.../aten::topk/TopK``.
Under a bf16 hint OpenVINO 2026.4.1 keeps the marked affinity MatMul and TopK in f32 but fuses the scale Multiply into
the q-pooling ReduceMean and emits that fused node's output in bf16: the island is f32 from the pooled q/k on.

INT8 (``--int8``): the exporter's fake-quantized model (ModelOpt, the same quantization as every other target) goes
through the same Q/DQ ONNX as the onnx/tensorrt targets and ``ov.convert_model``, which turns each Q/DQ pair into a
FakeQuantize; the CPU plugin's low-precision transformations then run those layers in INT8 kernels (FullyConnected
i8, Convolution u8). Chosen over NNCF's PTQ of the FP32 IR by measurement (benchmarks/int8_openvino.py,
biformer_tiny 224, 2 threads, AMD Zen 4): Q/DQ 1.34x the FP32 IR with the f32 hint, NNCF (router ignored) 1.39x; both
under 1.4x, because about half the FP32 time is data movement and element-wise work that INT8 leaves in float
(Transpose/Reorder/Split of the region gather, the attention Subgraph). The router island is checked on the IR
(:func:`fake_quantize_into_topk`) and, for ``--routing qar``, the router's float ops are marked to stay FP32 as in the
FP16 IR, so a bf16 hint (float layers bf16, INT8 layers INT8) leaves the affinity f32. ``layer_precision.json``/``.md``
list per Conv/MatMul/attention op the precision the IR states and the one the CPU plugin executed it in (runtime
model, f32 hint).

INT8 weights and the CPU class (``--cpu``, :mod:`biformer_edge.cpu`): on CPUs without VNNI the plugin's INT8 kernels
(oneDNN ``jit_avx2_I8``, ``jit_gemm_i8``) sum pairs of u8 x s8 products in saturating 16-bit lanes, which full 8-bit
weights overflow (random-weight test model: cosine 0.966 instead of 0.999). The default ``--cpu portable`` bounds the
weights to |q| <= 64 so the IR is accurate on every class; :meth:`OpenVINOSession.executed` reports the kernels the
plugin chose, whose names carry the ISA.

This module imports no torch: sessions run where only OpenVINO is installed; the export functions import it.
"""
from __future__ import annotations

import re
import tempfile
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract import INPUT_NAME, IR_BIN, IR_XML, ONNX_FILE, ROUTER_MODULE, Int8Graph, RunResult
from ..errors import UserError
from .base import ExportContext, Session

if TYPE_CHECKING:  # annotations only: this module imports torch inside the export functions
    from torch import nn


# The runtime attribute that keeps a node out of low-precision conversion, as the IR spells it.
KEEP_PRECISION_ATTR = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:bf16,f16"}
KEEP_PRECISION_KEY = "DisablePrecisionConversion_0"   # its key in a node's rt_info after read_model

# Accepted spellings of a precision hint -> the INFERENCE_PRECISION_HINT value OpenVINO takes ("auto": the rule of
# the module doc, resolved by the Session to f16 or f32).
PRECISION_HINTS = {"f32": "f32", "fp32": "f32", "float32": "f32",
                   "f16": "f16", "fp16": "f16", "float16": "f16",
                   "bf16": "bf16", "bfloat16": "bf16",
                   "auto": "auto"}

# Runtime-model layer types that do a model's multiply-accumulate work (what OpenVINOSession.executed counts).
RUNTIME_COMPUTE_KERNELS = ("Convolution", "FullyConnected", "MatMul", "ScaledDotProductAttention", "Deconvolution")

# The CPU plugin's OPTIMIZATION_CAPABILITIES entry that says it computes a precision natively.
NATIVE_CAPABILITY = {"f16": "FP16", "bf16": "BF16"}

def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise UserError("openvino is not installed: pip install 'biformer-edge[openvino]'") from None
    return ov


def _core():
    ov = _openvino()
    core = ov.Core()
    core.set_property({"ENABLE_MMAP": False})  # models read here outlive the temporary files they came from
    return core


# --------------------------------------------------------------------------------------------------------- router


def router_scope(name: str) -> str | None:
    """The module scope of an op traced inside a BRA router, or None for any other op name. Two spellings: what
    ``ov.convert_model`` gives a PyTorch module (``__module.<path>.router`` of
    ``__module.<path>.router/aten::topk/TopK``) and what its ONNX frontend keeps of the TorchScript exporter's node
    names (``/model/.../attn/router`` of ``/model/.../attn/router/MatMul``; the INT8 IR comes from the Q/DQ ONNX).
    Ops of a submodule of the router (``.../router/k_region_quantizer/...``: ``--routing naive``'s quantizers) are not
    the router's."""
    if name.startswith("/"):
        scope = name.rsplit("/", 1)[0]
        return scope if scope.rsplit("/", 1)[-1] == ROUTER_MODULE else None
    scope, sep, _ = name.partition("/")
    return scope if sep and scope.rsplit(".", 1)[-1] == ROUTER_MODULE else None


def router_nodes(ov_model) -> list:
    """The BRA routers of an OpenVINO model, found by name: every op in a ``.router`` module scope
    (:func:`router_scope`: region pooling ReduceMeans, Reshapes, scale Multiply, affinity MatMul, TopK), plus the
    floating-point Constants feeding them (the scale; OpenVINO names Constants without a scope). In the model's
    topological order. A TopK fed by a router op counts too: the ONNX frontend names the TopK whose indices are a
    model output after that output (``routing_0``)."""
    marked: dict[int, object] = {}
    scoped: set[str] = set()
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            continue
        if router_scope(op.get_friendly_name()) is None and not (
                op.get_type_name() == "TopK" and op.input_value(0).get_node().get_friendly_name() in scoped):
            continue
        scoped.add(op.get_friendly_name())
        for inp in op.inputs():
            src = inp.get_source_output().get_node()
            if src.get_type_name() == "Constant" and src.get_output_element_type(0).is_real():
                marked.setdefault(id(src), src)
        marked.setdefault(id(op), op)
    order = {id(op): i for i, op in enumerate(ov_model.get_ordered_ops())}
    return sorted(marked.values(), key=lambda n: order[id(n)])


def marked_nodes(ov_model) -> list:
    """Nodes carrying the keep-original-precision attribute (as read back from an IR)."""
    return [op for op in ov_model.get_ordered_ops() if KEEP_PRECISION_KEY in op.get_rt_info()]


def _mark_layers(xml_path: Path, names: set[str]) -> int:
    """Add the keep-precision attribute to the rt_info of every layer of the IR whose name is in ``names``."""
    tree = ET.parse(xml_path)
    count = 0
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") not in names:
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.Element("rt_info")
            data = layer.find("data")
            layer.insert(list(layer).index(data) + 1 if data is not None else 0, rt)
        if not any(a.get("name") == KEEP_PRECISION_ATTR["name"] for a in rt.findall("attribute")):
            ET.SubElement(rt, "attribute", dict(KEEP_PRECISION_ATTR))
        count += 1
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return count


def keep_router_fp32(ov_model):
    """Return a copy of ``ov_model`` whose router nodes (:func:`router_nodes`) carry OpenVINO's
    ``DisablePrecisionConversion`` attribute, so they stay FP32 when the IR is saved with ``compress_to_fp16`` and
    when a plugin runs the model in f16/bf16. ``ov_model`` itself is not changed (the attribute can only be attached
    through the IR reader)."""
    ov = _openvino()
    nodes = router_nodes(ov_model)
    if not nodes:
        return ov_model
    names = {n.get_friendly_name() for n in nodes}
    with tempfile.TemporaryDirectory(prefix="biformer-ov-") as tmp:
        xml = Path(tmp) / IR_XML
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        _mark_layers(xml, names)
        marked = _core().read_model(str(xml))
    found = {n.get_friendly_name() for n in marked_nodes(marked)}
    if not names <= found:
        raise RuntimeError(f"OpenVINO did not keep the router precision marks on {sorted(names - found)[:3]}")
    return marked


# --------------------------------------------------------------------------------------------------------- export


def convert(model: nn.Module, input_shape: tuple[int, int, int, int]):
    """``ov.convert_model`` of the model plus its routing outputs, static shape, named ``images`` -> ``logits``,
    ``routing_0`` ..."""
    import torch

    from ..models.routing import RoutingOutputs

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
    from ..models.routing import bra_blocks

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
    from .onnx import export_onnx

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


SKIP_KERNELS = ("Reorder", "Const", "Input", "Parameter", "Output", "Result")


def runtime_layers(compiled_model) -> list[dict]:
    """The nodes OpenVINO's plugin executes (``compiled_model.get_runtime_model()``), in execution order: ``kernel``
    (rt_info ``layerType``, e.g. FullyConnected, Convolution, Subgraph), ``precision`` (``runtimePrecision``: the
    precision the kernel computes in, e.g. i8/u8 for INT8 kernels, f32, bf16), ``outputs`` (``outputPrecisions``)
    and ``names``: the original layers fused into it (``originalLayersNames``)."""
    rows = []
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def get(key):
            return info[key].astype(str) if key in info else ""
        names = [n for n in get("originalLayersNames").split(",") if n]
        rows.append({"name": op.get_friendly_name(), "kernel": get("layerType"), "precision": get("runtimePrecision"),
                     "outputs": get("outputPrecisions"), "names": names})
    return rows


def executed_precision(compiled_model, layers: list[str] | None = None) -> dict[str, dict]:
    """What OpenVINO executed each layer in: original layer name -> ``{"precision", "kernel", "outputs"}`` of the
    runtime node that computes it (:func:`runtime_layers`; reorders and constants are skipped). With
    ``layers`` (the model's own op names, e.g. an IR's friendly names), only those, found by exact name, else by a
    fused name inside their scope (``<layer>/DequantizationMultiply``: the plugin's low-precision transformations
    rename the op they quantize), else by the name without a trailing ``/WithoutBiases`` (the op a bias Add was split
    from); a layer found nowhere is left out."""
    exact: dict[str, dict] = {}
    for row in runtime_layers(compiled_model):
        if row["kernel"] in SKIP_KERNELS:
            continue
        entry = {"precision": row["precision"], "kernel": row["kernel"], "outputs": row["outputs"]}
        for name in row["names"]:
            exact.setdefault(name, entry)
    if layers is None:
        return exact
    out = {}
    for layer in layers:
        entry = exact.get(layer)
        if entry is None:
            entry = next((v for k, v in exact.items() if k.startswith(layer + "/")), None)
        if entry is None and layer.endswith("/WithoutBiases"):
            entry = exact.get(layer.rsplit("/", 1)[0])
        if entry is not None:
            out[layer] = entry
    return out


def executed_summary(rows: list[dict]) -> dict:
    """Counts of the report's layers by the precision OpenVINO executed them in (``executed``), INT8 kernels
    (runtime precision i8/u8) apart."""
    from collections import Counter

    counts = Counter(r.get("executed", "?") for r in rows)
    return {"by_precision": dict(sorted(counts.items())),
            "int8_layers": sum(n for p, n in counts.items() if p in ("i8", "u8")),
            "int8_weight_params": sum(r["weight_params"] for r in rows if r.get("executed") in ("i8", "u8"))}


def int8_graph(workdir: Path, precision_hint: str = "f32") -> Int8Graph:
    """The INT8 facts of the IR an export wrote: :func:`ir_layer_precision` plus what the CPU plugin executed each layer
    in under ``precision_hint`` (f32: parity's default for INT8, compiled as :class:`OpenVINOSession` does):
    ``executed`` (the runtime precision: i8/u8 for INT8 kernels, f32, bf16) and ``kernel`` (the plugin's node type),
    and the FakeQuantize ops on any path into a TopK (:func:`fake_quantize_into_topk`)."""
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
                     where=" of the IR", topk=sum(op.get_type_name() == "TopK" for op in ov_model.get_ordered_ops()),
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


# -------------------------------------------------------------------------------------------------------- session


def _model_path(artifact: str | Path) -> Path:
    path = Path(artifact)
    xml = path / IR_XML if path.is_dir() else path
    if not xml.is_file():
        raise UserError(f"no OpenVINO model at {xml}: export one with 'biformer-export --target openvino'")
    return xml


def snippets_hazard(ov_model) -> bool:
    """True when the model holds a Transpose that permutes axes of equal size (input shape == output shape, order not
    the identity): the pattern that the CPU plugin's Snippets MHA fusion gets wrong after attention (module doc)."""
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "Transpose":
            continue
        order_node = op.input_value(1).get_node()
        if order_node.get_type_name() != "Constant":
            continue
        order = [int(v) for v in order_node.get_data().ravel()]
        in_shape, out_shape = op.get_input_partial_shape(0), op.get_output_partial_shape(0)
        if order != sorted(order) and in_shape.is_static and in_shape == out_shape:
            return True
    return False


def cpu_capabilities(core=None) -> list[str]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` (e.g. ``['BF16', 'FP32', 'INT8', ...]``): FP16/BF16 are listed
    where it computes those natively."""
    core = core or _openvino().Core()
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def canonical_hint(precision_hint: str) -> str:
    """``precision_hint`` in OpenVINO's spelling (f32, f16, bf16) or ``auto``; UserError for anything else."""
    hint = PRECISION_HINTS.get(str(precision_hint).lower())
    if hint is None:
        raise UserError(f"unknown OpenVINO precision hint '{precision_hint}': use auto, f32, f16 or bf16")
    return hint


class OpenVINOSession(Session):
    """Runs ``model.xml`` on the CPU plugin with ``INFERENCE_PRECISION_HINT`` set explicitly, ``PERFORMANCE_HINT=
    LATENCY`` and optionally ``INFERENCE_NUM_THREADS``.

    ``precision_hint``: ``f32`` (default), ``f16`` or ``bf16`` are passed to the plugin as they are (it may compute
    an f16 hint in bf16 or f32, a bf16 hint in f32: see ``inference_precision``); ``auto`` computes in f16 where the
    CPU does so natively and in f32 elsewhere, never in bf16 (module doc). Attributes: ``requested_hint`` (what was
    asked, canonical spelling), ``precision_hint`` (the hint set), ``inference_precision`` (what the compiled model
    reports it computes in).

    ``snippets``: None (default) disables the CPU plugin's Snippets fusion only for models with the pattern it
    miscomputes (:func:`snippets_hazard`); True/False force it on/off. ``config`` records what was compiled with."""

    backend = "openvino"
    device = "cpu"

    def __init__(self, artifact_dir: str | Path, manifest: dict | None = None, precision_hint: str = "f32",
                 threads: int | None = None, snippets: bool | None = None):
        requested = canonical_hint(precision_hint)
        ov = _openvino()
        core = ov.Core()
        self.manifest = manifest or {}
        self.requested_hint = requested
        ov_model = core.read_model(str(_model_path(artifact_dir)))
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if snippets is False or (snippets is None and snippets_hazard(ov_model)):
            config["SNIPPETS_MODE"] = "DISABLE"
        hint = requested
        if requested == "auto":
            hint = "f16" if NATIVE_CAPABILITY["f16"] in cpu_capabilities(core) else "f32"
        self.compiled = core.compile_model(ov_model, "CPU", {**config, "INFERENCE_PRECISION_HINT": hint})
        if requested == "auto" and hint != "f32" and self._computes() != hint:
            # listed as native but not honoured for this model: the rule says f32, not what the plugin chose
            hint = "f32"
            self.compiled = core.compile_model(ov_model, "CPU", {**config, "INFERENCE_PRECISION_HINT": hint})
        self.precision_hint = hint
        self.config = {"INFERENCE_PRECISION_HINT": hint, **config}
        # What the plugin actually computes in: an f16 hint runs in bf16 or f32 on CPUs without native f16.
        self.inference_precision = self._computes()
        self.request = self.compiled.create_infer_request()
        self.input_shape = tuple(self.compiled.inputs[0].get_shape())
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def executed(self) -> dict:
        """What the CPU plugin compiled the compute layers into (its runtime model): counts by runtime precision
        (i8/u8 are INT8 kernels) and, for the INT8 ones, the oneDNN kernels by name, which carry the ISA they were
        chosen for (``jit_avx2_I8``, ``brgconv_avx512_core_vnni``, ``brgemm_avx512_amx``...)."""
        from collections import Counter
        by_precision, int8_kernels = Counter(), Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" not in info or info["layerType"].astype(str) not in RUNTIME_COMPUTE_KERNELS:
                continue
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            by_precision[precision] += 1
            if precision in ("i8", "u8"):
                int8_kernels[info["primitiveType"].astype(str) if "primitiveType" in info else "?"] += 1
        return {"by_precision": dict(sorted(by_precision.items())), "int8_kernels": dict(sorted(int8_kernels.items()))}

    def _computes(self) -> str:
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self.input_shape:
            raise UserError(f"input shape {tuple(x.shape)} does not match the OpenVINO model's {self.input_shape}")
        result = self.request.infer({0: x})
        values = [np.array(result[o]) for o in self.compiled.outputs]
        return RunResult.from_outputs(self.output_names, values)
