"""What an INT8 graph really is: which layers take INT8 inputs, and proof that no Q/DQ reaches the router's TopK.

Works on the Q/DQ ONNX (onnx only, no torch): every Conv / MatMul / Gemm is listed with the precision of its
activation input and of its weight as the graph states them (INT8 when fed by a DequantizeLinear of an int8
QuantizeLinear), its weight parameter count, and whether it belongs to a router. Runtimes that report what they
executed (OpenVINO's runtime model) add an ``executed`` column.
"""
from __future__ import annotations

from collections import deque

COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
PASS_THROUGH = ("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast")
ROUTER_SCOPE = "/router/"
LAYER_REPORT = "layer_precision.json"


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _source(name: str, producers: dict):
    """The node behind ``name``, looking through ops that only move data."""
    node = producers.get(name)
    while node is not None and node.op_type in PASS_THROUGH and node.input:
        node = producers.get(node.input[0])
    return node


def module_path(node_name: str) -> str:
    """The PyTorch module a TorchScript-exported node came from: '/model/backbone/stages.0/stages.0.0/pos_embed/Conv'
    -> 'backbone.stages.0.0.pos_embed' (ModuleList scopes repeat their parent's name with an index)."""
    segments = [seg for seg in node_name.split("/")[1:-1] if seg]
    if segments and segments[0] == "model":   # the RoutingOutputs wrapper
        segments = segments[1:]
    path, last = "", ""
    for seg in segments:
        if last and seg.startswith(last + "."):
            path = path[: len(path) - len(last)] + seg
        else:
            path = f"{path}.{seg}" if path else seg
        last = seg
    return path


def layer_precision(proto) -> list[dict]:
    """One row per Conv/MatMul/Gemm of ``proto``: name, op, input and weight precision, weight params, router."""
    from onnx import numpy_helper
    graph = proto.graph
    producers = _producers(graph)
    sizes = {init.name: int(numpy_helper.to_array(init).size) for init in graph.initializer}

    def precision(tensor: str) -> tuple[str, int]:
        node = _source(tensor, producers)
        if node is not None and node.op_type == "DequantizeLinear":
            q = _source(node.input[0], producers)
            weight = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else node.input[0]
            return "int8", sizes.get(weight, 0)
        return "float", sizes.get(tensor, 0) if node is None else 0

    rows = []
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS or len(node.input) < 2:
            continue
        act, _ = precision(node.input[0])
        weight, params = precision(node.input[1])
        rows.append({"layer": node.name, "module": module_path(node.name), "op": node.op_type, "input": act,
                     "weight": weight,
                     "weight_params": params, "router": ROUTER_SCOPE in node.name})
    return rows


def qdq_into_topk(proto) -> list[str]:
    """Q/DQ nodes on any path into a TopK (walking back through the router's ops): empty for the QAR island."""
    graph = proto.graph
    producers = _producers(graph)
    found = []
    for topk in (n for n in graph.node if n.op_type == "TopK"):
        seen, queue = set(), deque([topk.input[0]])
        while queue:
            node = producers.get(queue.popleft())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                found.append(f"{node.name} -> {topk.name}")
                continue
            if ROUTER_SCOPE in node.name or node.op_type in PASS_THROUGH:
                queue.extend(i for i in node.input if i)
    return found


def summarize(rows: list[dict]) -> dict:
    weights = [r for r in rows if r["weight_params"]]
    total = sum(r["weight_params"] for r in weights)
    both = sum(r["weight_params"] for r in weights if r["input"] == "int8" and r["weight"] == "int8")
    return {"layers": len(rows), "int8_layers": sum(r["input"] == "int8" and r["weight"] == "int8" for r in rows),
            "weight_params": total, "int8_weight_params": both,
            "int8_weight_share": round(both / total, 6) if total else 0.0,
            "float_layers_with_weights": [r["layer"] for r in weights if not (r["input"] == r["weight"] == "int8")]}


def render_markdown(rows: list[dict], summary: dict) -> str:
    executed = any("executed" in r for r in rows)
    head = "| layer | op | input | weight | weight params | router |" + (" executed |" if executed else "")
    lines = [f"# Layer precision ({summary['int8_layers']}/{summary['layers']} layers INT8 on both inputs, "
             f"{summary['int8_weight_share']:.2%} of weight parameters)", "", head,
             "|---" * (7 if executed else 6) + "|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['op']} | {r['input']} | {r['weight']} | {r['weight_params']} | "
                     f"{'yes' if r['router'] else ''} |" + (f" {r.get('executed', '')} |" if executed else ""))
    return "\n".join(lines) + "\n"


def check_int8_onnx(proto, ctx) -> dict:
    """The checks every INT8 ONNX artifact gets (onnx, jetson, tensorrt): the router island and the layer table.
    Writes ``layer_precision.json`` / ``.md`` into ``ctx.workdir`` and returns the summary for the manifest."""
    from ..artifact import write_file, write_json
    from ..errors import UserError

    routing = ctx.quant.routing if ctx.quant else "qar"
    into_topk = qdq_into_topk(proto)
    if routing == "qar" and into_topk:
        raise UserError(f"internal check failed: Q/DQ reaches the router's TopK ({into_topk[0]}); report it with "
                        f"--debug")
    ctx.checks["router_island"] = {
        "ok": True, "summary": ("no Q/DQ on any path into TopK (router FP32)" if routing == "qar" else
                                f"--routing naive: {len(into_topk)} Q/DQ paths into TopK (router quantized)")}
    rows = layer_precision(proto)
    summary = summarize(rows)
    write_json(ctx.workdir / LAYER_REPORT, {"summary": summary, "layers": rows})
    write_file(ctx.workdir / LAYER_REPORT.replace(".json", ".md"), render_markdown(rows, summary))
    ctx.checks["int8_layers"] = {"ok": True, "summary": f"{summary['int8_layers']}/{summary['layers']} layers INT8 "
                                 f"on both inputs, {summary['int8_weight_share']:.2%} of weight parameters"}
    return summary


# ------------------------------------------------------------------------------------------- OpenVINO: what executed

OPENVINO_SKIP_KERNELS = ("Reorder", "Const", "Input", "Parameter", "Output", "Result")


def openvino_runtime_layers(compiled_model) -> list[dict]:
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


def openvino_executed_precision(compiled_model, layers: list[str] | None = None) -> dict[str, dict]:
    """What OpenVINO executed each layer in: original layer name -> ``{"precision", "kernel", "outputs"}`` of the
    runtime node that computes it (:func:`openvino_runtime_layers`; reorders and constants are skipped). With
    ``layers`` (the model's own op names, e.g. an IR's friendly names), only those, found by exact name, else by a
    fused name inside their scope (``<layer>/DequantizationMultiply``: the plugin's low-precision transformations
    rename the op they quantize), else by the name without a trailing ``/WithoutBiases`` (the op a bias Add was split
    from); a layer found nowhere is left out."""
    exact: dict[str, dict] = {}
    for row in openvino_runtime_layers(compiled_model):
        if row["kernel"] in OPENVINO_SKIP_KERNELS:
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
