"""FP16 and INT8 TensorRT artifacts state their precision in the graph (ModelOpt AutoCast): float layers FP16, the
router island and LayerNorm FP32, FP32 input and outputs; and the check that holds a graph to it can fail."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("modelopt.onnx.autocast.convert", reason="needs nvidia-modelopt with onnx-graphsurgeon, onnxslim, "
                    "lief, polygraphy (biformer-edge[all])")

from biformer_edge.backends.onnx.export import tensor_types  # noqa: E402
from biformer_edge.backends.tensorrt.precision import float_precision  # noqa: E402
from biformer_edge.cli import export_main  # noqa: E402
from tests.helpers import SIZE, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def jetson_fp16(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "jetson"
    assert run_cli(export_main, ["--target", "jetson", *SIZE, "--output", out]) == 0
    return out


def test_fp16_graph_keeps_router_and_layernorm_fp32_with_fp32_io(jetson_fp16):
    proto = onnx.load(str(jetson_fp16 / "model.onnx"))
    types = tensor_types(proto)
    assert {types[t.name] for t in (*proto.graph.input, *proto.graph.output)} <= {TensorProto.FLOAT, TensorProto.INT64}
    assert types[proto.graph.output[0].name] == TensorProto.FLOAT
    layernorms = [n for n in proto.graph.node if n.op_type == "LayerNormalization"]
    assert layernorms and all(types[n.input[0]] == TensorProto.FLOAT for n in layernorms)
    router_matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and "/router/" in n.name]
    assert router_matmuls and all(types[n.input[0]] == TensorProto.FLOAT for n in router_matmuls)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)   # no float32 conv left
    stated = float_precision(proto)
    assert stated["problems"] == [] and stated["nodes"]["fp16"] > stated["nodes"]["fp32"]
    manifest = json.loads((jetson_fp16 / "manifest.json").read_text())
    assert manifest["opset"] == 17 and manifest["checks"]["mixed_precision"]["ok"]
    assert manifest["parity"]["verdict"] == "pass"


def test_the_island_check_flags_a_router_or_layernorm_in_fp16():
    """A graph whose router MatMul and LayerNorm take FP16 inputs: exactly what AutoCast must never write."""
    f16 = TensorProto.FLOAT16
    nodes = [helper.make_node("MatMul", ["a", "b"], ["c"], name="/model/attn/router/MatMul"),
             helper.make_node("LayerNormalization", ["c", "g", "bias"], ["d"], name="/model/norm1/LayerNormalization",
                              axis=-1),
             helper.make_node("Relu", ["d"], ["y"], name="/model/act/Relu")]
    inits = [helper.make_tensor(n, f16, [4], np.ones(4, np.float16).tobytes(), raw=True) for n in ("g", "bias")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", f16, [4, 4]),
                                           helper.make_tensor_value_info("b", f16, [4, 4])],
                              [helper.make_tensor_value_info("y", f16, [4, 4])], inits)
    stated = float_precision(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert len(stated["problems"]) == 2 and "router/MatMul" in stated["problems"][0]
    assert stated["nodes"] == {"fp16": 3, "fp32": 0}
