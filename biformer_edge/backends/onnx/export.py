"""The ONNX artifact: the TorchScript exporter at a fixed opset, onnxsim, onnx.checker, names stable across exports;
and the INT8 facts of a Q/DQ graph (which layers its Q/DQ pairs make INT8, which reach a router's TopK). Imports
torch only inside :func:`export_onnx`.
"""
from __future__ import annotations

import copy
import io
import warnings
from collections import defaultdict, deque
from pathlib import Path
from typing import TYPE_CHECKING

from ...contract import INPUT_NAME, ONNX_FILE, ROUTER_MODULE, Int8Graph
from ..base import ExportContext

if TYPE_CHECKING:
    from torch import nn


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int, int], opset: int = 17,
                fp16: bool = False, simplify: bool = True):
    """Trace ``model`` (plus its routing outputs) to ``path``. FP16 halves the weights and activations but keeps
    each BRA router in FP32 (explicit Casts in the graph). Returns the onnx.ModelProto written."""
    import onnx
    import torch

    from ...models.routing import RoutingOutputs

    dtype = torch.float16 if fp16 else torch.float32
    # A copy: casting the caller's module in place would make the FP32 reference that follows an FP16-weight one.
    wrapper = RoutingOutputs(copy.deepcopy(model).to(dtype)).eval()
    x = torch.zeros(input_shape, dtype=dtype)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation + tracer warnings on Python ints
        torch.onnx.export(wrapper, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=wrapper.output_names(), do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    if simplify:
        import onnxsim
        simplified, ok = onnxsim.simplify(proto)
        if ok:
            proto = simplified
            restore_scopes(proto)
    stable_initializer_names(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def stable_initializer_names(proto) -> None:
    """The TorchScript exporter names folded constants ``onnx::Op_<counter>`` after a process-wide counter, so the same
    model exported after other work in the process gets other names and other hashes. Rename them by position."""
    graph = proto.graph
    renamed = {init.name: f"const_{i}" for i, init in enumerate(graph.initializer) if init.name.startswith("onnx::")}
    if not renamed:
        return
    for init in graph.initializer:
        init.name = renamed.get(init.name, init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]


def restore_scopes(proto) -> int:
    """Give the nodes onnxsim creates (named without a scope, e.g. 'Reshape_1' where it folds a router's ReduceMean
    over one-token regions into a Reshape) the scope of the nodes that consume their outputs, or else of those that
    produce their inputs, when that scope is one: router ops stay named ``.../router/...``. Returns how many."""
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    taken = {node.name for node in graph.node}

    def one_scope(nodes) -> str | None:
        scopes = {n.name.rsplit("/", 1)[0] if n.name.startswith("/") else None for n in nodes}
        return scopes.pop() if len(scopes) == 1 else None

    renamed = 0
    for node in graph.node:
        if node.name.startswith("/"):
            continue
        scope = (one_scope([c for out in node.output for c in consumers[out]])
                 or one_scope([producer[i] for i in node.input if i in producer]))
        if not scope:
            continue
        name, k = f"{scope}/{node.op_type}", 0
        while name in taken:
            k += 1
            name = f"{scope}/{node.op_type}_{k}"
        taken.add(name)
        node.name = name
        renamed += 1
    return renamed


def graph_summary(proto) -> str:
    """'N nodes, TopK xK, Gather xG' for logs and manifests."""
    from collections import Counter
    ops = Counter(n.op_type for n in proto.graph.node)
    return f"{len(proto.graph.node)} nodes, TopK x{ops['TopK']}, Gather x{ops['Gather']}"


def export(model: nn.Module, ctx: ExportContext) -> list[str]:
    proto = export_onnx(model, ctx.workdir / ONNX_FILE, ctx.input_shape, ctx.opset, fp16=ctx.precision == "fp16")
    ctx.checks["onnx_checker"] = {"ok": True, "summary": f"onnx.checker full_check passed; {graph_summary(proto)}"}
    return [ONNX_FILE]   # INT8: ``model`` was fake-quantized, its TensorQuantizers export as Q/DQ pairs


# ------------------------------------------------------------------------------------------ INT8: the Q/DQ graph
# An INT8 ONNX states its precision in Q/DQ pairs: a Conv / MatMul / Gemm input is INT8 when a DequantizeLinear of an
# int8 QuantizeLinear feeds it (through ops that only move data). Router ops are named ``.../router/...``.

COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
PASS_THROUGH = ("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast")
ROUTER_SCOPE = f"/{ROUTER_MODULE}/"


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


def tensor_types(proto) -> dict[str, int]:
    """Element type of every tensor of ``proto`` (inputs, outputs, initializers, inferred intermediates)."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:   # Constant nodes' outputs are not in value_info after inference in every onnx version
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def layer_precision(proto) -> list[dict]:
    """One row per Conv/MatMul/Gemm of ``proto``: name, op, input and weight precision ("int8" behind a Q/DQ pair,
    else the tensor's own type: "fp16" or "fp32"), weight params, router."""
    import onnx
    from onnx import numpy_helper
    graph = proto.graph
    producers = _producers(graph)
    sizes = {init.name: int(numpy_helper.to_array(init).size) for init in graph.initializer}
    # onnxsim leaves some folded weights as Constant nodes (a Conv+BatchNorm fold; the DeepStream graph's 1/std
    # folded into the stem conv): their values are weights too
    sizes.update({node.output[0]: int(numpy_helper.to_array(attr.t).size) for node in graph.node
                  if node.op_type == "Constant" for attr in node.attribute if attr.name == "value"})
    types = tensor_types(proto)

    def weight_size(tensor: str) -> int:
        """The size of the constant weight behind ``tensor`` (through ops that only move data, and a Mul or Div of
        constants, e.g. a weight scaled by a folded normalisation that was not folded into one constant), or 0 for
        a computed tensor (an activation)."""
        node = producers.get(tensor)
        while node is not None and node.op_type in PASS_THROUGH and node.input:
            tensor, node = node.input[0], producers.get(node.input[0])
        if node is None or node.op_type == "Constant":
            return sizes.get(tensor, 0)
        if node.op_type in ("Mul", "Div"):
            operands = [weight_size(name) for name in node.input]
            return max(operands) if all(operands) else 0
        return 0
    float_names = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.FLOAT: "fp32",
                   onnx.TensorProto.BFLOAT16: "bf16"}

    def precision(tensor: str) -> tuple[str, int]:
        node = _source(tensor, producers)
        if node is not None and node.op_type == "DequantizeLinear":
            q = _source(node.input[0], producers)
            weight = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else node.input[0]
            return "int8", weight_size(weight)
        return float_names.get(types.get(tensor), "?"), weight_size(tensor)

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


def int8_graph(workdir: Path, file: str = ONNX_FILE):
    """The INT8 facts of the Q/DQ ONNX an export wrote (the exporter has quantization check and report them)."""
    import onnx

    proto = onnx.load(str(Path(workdir) / file))
    return Int8Graph(rows=layer_precision(proto), into_topk=qdq_into_topk(proto))
