"""OpenVINO: IR export (FP32, or FP16-compressed weights with every BRA router marked to stay FP32) and a CPU Session
that always sets its inference precision explicitly.

Why explicit: the CPU plugin picks bf16 by default on AVX512-BF16/AMX CPUs and f16 where AVX512-FP16 is present
(toolchain.md §3.1), so an unpinned run measures the CPU as much as the artifact. Where the CPU cannot compute in the
requested precision the plugin silently falls back to f32; the Session records both what was asked
(``precision_hint``) and what the compiled model reports (``inference_precision``).

CPU plugin defect worked around here: in OpenVINO 2026.4.1 the CPU plugin's Snippets MHA fusion computes wrong
results (5-40 % relative error in FP32) when a BRA block has as many heads as tokens per region (e.g.
``biformer_seg_demo`` at 256x256: stage 3 has 4 heads and 2x2-token regions), i.e. when the head-merging Transpose
after attention keeps the shape unchanged. The Session detects that pattern in the IR and compiles with
``SNIPPETS_MODE=DISABLE`` (then correct to 1e-6; not slower on the AVX2 CPU measured). Code that deploys the IR
with its own OpenVINO calls must set the same property.

Router precision island (DESIGN.md, QAR 1): OpenVINO 2026's ``DisablePrecisionConversion`` runtime attribute
(written as ``dynamic:bf16,f16``; the IR reader also maps the older ``precise`` attribute onto it) keeps a node in its
original precision: the CPU plugin gives such nodes ``keepOrigPrecision`` and skips them when it lowers the graph to
f16/bf16, and ``compress_to_fp16`` leaves their constants in f32. The Python API cannot create that attribute
(string values in ``rt_info`` are neither serialized nor understood), so :func:`keep_router_fp32` writes it into the
IR and reads the model back.
"""
from __future__ import annotations

import re
import tempfile
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .base import INPUT_NAME, ExportContext, Session
from .tracing import RoutingOutputs, bra_blocks

XML_NAME, BIN_NAME = "model.xml", "model.bin"

# The runtime attribute that keeps a node out of low-precision conversion, as the IR spells it.
KEEP_PRECISION_ATTR = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:bf16,f16"}
KEEP_PRECISION_KEY = "DisablePrecisionConversion_0"   # its key in a node's rt_info after read_model

# Accepted spellings of INFERENCE_PRECISION_HINT -> the value OpenVINO takes.
PRECISION_HINTS = {"f32": "f32", "fp32": "f32", "float32": "f32",
                   "f16": "f16", "fp16": "f16", "float16": "f16",
                   "bf16": "bf16", "bfloat16": "bf16"}

ROUTER_POOL_TYPE = "ReduceMean"   # region pooling of q/k: where a router's island starts
ROUTER_MAX_DEPTH = 8              # TopK -> MatMul -> Multiply -> Reshape -> ReduceMean is 4 deep; stay local


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


def router_nodes(ov_model) -> list:
    """The BRA routers of an OpenVINO model: for every TopK on a floating-point input, the nodes on its data paths
    back to the ReduceMeans that pool q and k into regions (affinity MatMul, scale Multiply, Reshapes; both ends
    included), plus the floating-point Constants feeding them. Paths that do not reach a ReduceMean within a few
    nodes are not part of a router and are left alone."""
    marked: dict[int, object] = {}
    reaches: dict[int, bool] = {}

    def visit(node, depth: int) -> bool:
        key = id(node)
        if key in reaches:
            return reaches[key]
        kind = node.get_type_name()
        if kind == ROUTER_POOL_TYPE:
            hit = True
        elif kind in ("Parameter", "Constant") or depth >= ROUTER_MAX_DEPTH:
            hit = False
        else:
            hit = False
            for inp in node.inputs():
                if visit(inp.get_source_output().get_node(), depth + 1):
                    hit = True
        reaches[key] = hit
        if hit:
            marked.setdefault(key, node)
            for inp in node.inputs():
                src = inp.get_source_output().get_node()
                if src.get_type_name() == "Constant" and src.get_output_element_type(0).is_real():
                    marked.setdefault(id(src), src)
        return hit

    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "TopK" and op.get_input_element_type(0).is_real():
            visit(op, 0)
    # keep the model's topological order (deterministic)
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
    equal inputs give byte-identical IRs (DESIGN.md: same inputs, same hashes)."""
    ov_model.set_friendly_name("biformer")
    for i, op in enumerate(ov_model.get_ordered_ops()):
        if _AUTO_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")


def export(model: nn.Module, ctx: ExportContext) -> list[str]:
    """Write ``model.xml``/``model.bin`` into ``ctx.workdir``. FP32: plain IR. FP16: weights compressed to FP16 and,
    unless the model's BRA blocks have ``router_fp32`` switched off, the routers marked to stay FP32."""
    ov = _openvino()
    fp16 = ctx.precision == "fp16"
    ov_model = convert(model, ctx.input_shape)
    blocks = bra_blocks(model)
    if fp16 and all(b.router_fp32 for b in blocks):
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


class OpenVINOSession(Session):
    """Runs ``model.xml`` on the CPU plugin with ``INFERENCE_PRECISION_HINT`` set explicitly (f32 for parity; f16 or
    bf16 to measure what those modes do), ``PERFORMANCE_HINT=LATENCY`` and optionally ``INFERENCE_NUM_THREADS``.

    ``snippets``: None (default) disables the CPU plugin's Snippets fusion only for models with the pattern it
    miscomputes (:func:`snippets_hazard`); True/False force it on/off. ``config`` records what was compiled with."""

    backend = "openvino"
    device = "cpu"

    def __init__(self, artifact_dir: str | Path, manifest: dict | None = None, precision_hint: str = "f32",
                 threads: int | None = None, snippets: bool | None = None):
        hint = PRECISION_HINTS.get(str(precision_hint).lower())
        if hint is None:
            raise UserError(f"unknown OpenVINO precision hint '{precision_hint}': use f32, f16 or bf16")
        ov = _openvino()
        core = ov.Core()
        self.manifest = manifest or {}
        self.precision_hint = hint
        ov_model = core.read_model(str(_model_path(artifact_dir)))
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if snippets is False or (snippets is None and snippets_hazard(ov_model)):
            config["SNIPPETS_MODE"] = "DISABLE"
        self.config = config
        self.compiled = core.compile_model(ov_model, "CPU", config)
        # What the plugin actually uses: f32 where the CPU lacks the requested low-precision ISA.
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.request = self.compiled.create_infer_request()
        self.input_shape = tuple(self.compiled.inputs[0].get_shape())
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def run(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self.input_shape:
            raise UserError(f"input shape {tuple(x.shape)} does not match the OpenVINO model's {self.input_shape}")
        result = self.request.infer({0: x})
        values = [np.array(result[o]) for o in self.compiled.outputs]
        return self.split_outputs(self.output_names, values)


# ---------------------------------------------------------------------------------------------------- measurement


def _routing_agreement(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Mean over blocks of mean over query regions of |topk_ref & topk| / k (sets, order ignored)."""
    per_block = []
    for a, b in zip(ref, got):
        k = a.shape[-1]
        a, b = a.reshape(-1, k), b.reshape(-1, k)
        per_block.append(np.mean([len(set(p.tolist()) & set(q.tolist())) / k for p, q in zip(a, b)]))
    return float(np.mean(per_block))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def measure_hints(model: nn.Module, input_shape: tuple[int, int, int, int], images: int = 4,
                  hints: tuple[str, ...] = ("f32", "f16", "bf16"), threads: int | None = None, seed: int = 0,
                  log=print) -> list[dict]:
    """Export FP32, FP16 and FP16-without-router-marks IRs of ``model`` and run each under each hint on
    ``images`` seeded random inputs; routing agreement and logits cosine against the FP32 PyTorch run.
    ``inference_precision`` says what the CPU actually used (f32 where it lacks bf16/f16 hardware)."""
    from .tracing import run_torch

    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(input_shape).astype(np.float32) for _ in range(images)]
    refs = [run_torch(model, x) for x in xs]
    rows = []
    with tempfile.TemporaryDirectory(prefix="biformer-ov-measure-") as tmp:
        variants = {"fp32": ("fp32", True), "fp16": ("fp16", True), "fp16-unmarked": ("fp16", False)}
        flags = [b.router_fp32 for b in bra_blocks(model)]
        for label, (precision, island) in variants.items():
            for b in bra_blocks(model):
                b.router_fp32 = island
            try:
                export(model, ExportContext(Path(tmp) / label, "openvino", precision, tuple(input_shape),
                                            log=lambda *a: None))
            finally:
                for b, f in zip(bra_blocks(model), flags):
                    b.router_fp32 = f
            for hint in hints:
                sess = OpenVINOSession(Path(tmp) / label, precision_hint=hint, threads=threads)
                outs = [sess.run(x) for x in xs]
                row = {"ir": label, "hint": hint, "inference_precision": sess.inference_precision,
                       "routing_agreement": float(np.mean([_routing_agreement(r.routing, o.routing)
                                                          for r, o in zip(refs, outs)])),
                       "cosine": float(np.mean([_cosine(r.logits, o.logits) for r, o in zip(refs, outs)]))}
                log(f"{row['ir']:>14} hint={hint:<5} ran={row['inference_precision']:<5} "
                    f"routing={row['routing_agreement']:.4f} cosine={row['cosine']:.7f}")
                rows.append(row)
    return rows


if __name__ == "__main__":  # python -m biformer_edge.backends.openvino biformer_tiny 224
    import argparse

    from .. import create_model

    parser = argparse.ArgumentParser(description="OpenVINO FP16 IR routing/cosine under f32/f16/bf16 hints")
    parser.add_argument("model")
    parser.add_argument("size", type=int)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--pretrained", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    measure_hints(create_model(args.model, pretrained=args.pretrained), (1, 3, args.size, args.size), args.images)
