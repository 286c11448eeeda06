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

from ..errors import UserError
from .base import INPUT_NAME, ExportContext, Session

if TYPE_CHECKING:  # annotations only: this module imports torch inside the export functions
    from torch import nn

XML_NAME, BIN_NAME = "model.xml", "model.bin"

# The runtime attribute that keeps a node out of low-precision conversion, as the IR spells it.
KEEP_PRECISION_ATTR = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:bf16,f16"}
KEEP_PRECISION_KEY = "DisablePrecisionConversion_0"   # its key in a node's rt_info after read_model

# Accepted spellings of a precision hint -> the INFERENCE_PRECISION_HINT value OpenVINO takes ("auto": the rule of
# the module doc, resolved by the Session to f16 or f32).
PRECISION_HINTS = {"f32": "f32", "fp32": "f32", "float32": "f32",
                   "f16": "f16", "fp16": "f16", "float16": "f16",
                   "bf16": "bf16", "bfloat16": "bf16",
                   "auto": "auto"}

# The CPU plugin's OPTIMIZATION_CAPABILITIES entry that says it computes a precision natively.
NATIVE_CAPABILITY = {"f16": "FP16", "bf16": "BF16"}

# BiLevelRoutingAttention.router: the attribute name of the RegionRouter submodule, the last component of the scope
# ov.convert_model gives its ops ("__module.model.backbone.stages.0.0.attn.router/aten::topk/TopK").
ROUTER_MODULE = "router"


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
    """The module scope of an op that ``ov.convert_model`` traced inside a BRA router (``__module.<path>.router`` of
    ``__module.<path>.router/aten::topk/TopK``), or None for any other op name."""
    scope, sep, _ = name.partition("/")
    return scope if sep and scope.rsplit(".", 1)[-1] == ROUTER_MODULE else None


def router_nodes(ov_model) -> list:
    """The BRA routers of an OpenVINO model, found by name: every op in a ``.router`` module scope
    (:func:`router_scope`: region pooling ReduceMeans, Reshapes, scale Multiply, affinity MatMul, TopK), plus the
    floating-point Constants feeding them (the scale; OpenVINO names Constants without a scope). In the model's
    topological order."""
    marked: dict[int, object] = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "Constant" or router_scope(op.get_friendly_name()) is None:
            continue
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
        xml = Path(tmp) / XML_NAME
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

    from .tracing import RoutingOutputs

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


def export(model: nn.Module, ctx: ExportContext) -> list[str]:
    """Write ``model.xml``/``model.bin`` into ``ctx.workdir``. FP32: plain IR. FP16: weights compressed to FP16 and,
    unless the model's BRA blocks have ``router_fp32`` switched off, the routers marked to stay FP32."""
    from .tracing import bra_blocks

    ov = _openvino()
    fp16 = ctx.precision == "fp16"
    ov_model = convert(model, ctx.input_shape)
    blocks = bra_blocks(model)
    if fp16 and all(b.router_fp32 for b in blocks):
        found = sum(n.get_type_name() == "TopK" for n in router_nodes(ov_model))
        if found != len(blocks):  # the router is found by its module name: never leave one unmarked silently
            raise RuntimeError(f"found {found} router TopK ops named '.../{ROUTER_MODULE}/...' in the OpenVINO model, "
                               f"but the model has {len(blocks)} BRA blocks")
        ov_model = keep_router_fp32(ov_model)
        ctx.log(f"openvino: {len(marked_nodes(ov_model))} router nodes kept FP32")
    if snippets_hazard(ov_model):
        ctx.log("openvino: a BRA block has as many heads as tokens per region; OpenVINO's CPU plugin needs "
                "SNIPPETS_MODE=DISABLE for this IR (OpenVINOSession sets it)")
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(workdir / XML_NAME), compress_to_fp16=fp16)
    return [XML_NAME, BIN_NAME]


# -------------------------------------------------------------------------------------------------------- session


def _model_path(artifact: str | Path) -> Path:
    path = Path(artifact)
    xml = path / XML_NAME if path.is_dir() else path
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

    def _computes(self) -> str:
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self.input_shape:
            raise UserError(f"input shape {tuple(x.shape)} does not match the OpenVINO model's {self.input_shape}")
        result = self.request.infer({0: x})
        values = [np.array(result[o]) for o in self.compiled.outputs]
        return self.split_outputs(self.output_names, values)
