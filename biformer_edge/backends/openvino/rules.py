"""What OpenVINO's CPU plugin needs told, torch-free: the precision hints and their spellings, the BRA routers found
by their module scope and marked to keep their precision, the plugin's capabilities, and the Snippets hazard (the
package doc says why each matters).
"""
from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from ...contract import IR_XML, ROUTER_MODULE
from ...errors import UserError
from . import OPENVINO

# The runtime attribute that keeps a node out of low-precision conversion, as the IR spells it.
KEEP_PRECISION_ATTR = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:bf16,f16"}
KEEP_PRECISION_KEY = "DisablePrecisionConversion_0"   # its key in a node's rt_info after read_model

# Accepted spellings of a precision hint -> the INFERENCE_PRECISION_HINT value OpenVINO takes ("auto": the rule of
# the package doc, resolved by the Session to f16 or f32).
PRECISION_HINTS = {"f32": "f32", "fp32": "f32", "float32": "f32",
                   "f16": "f16", "fp16": "f16", "float16": "f16",
                   "bf16": "bf16", "bfloat16": "bf16",
                   "auto": "auto"}

# The CPU plugin's OPTIMIZATION_CAPABILITIES entry that says it computes a precision natively.
NATIVE_CAPABILITY = {"f16": "FP16", "bf16": "BF16"}


def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise UserError(f"openvino is not installed: {OPENVINO.install_hint}") from None
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


def snippets_hazard(ov_model) -> bool:
    """True when the model holds a Transpose that permutes axes of equal size (input shape == output shape, order not
    the identity): the pattern that the CPU plugin's Snippets MHA fusion gets wrong after attention (package doc)."""
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
