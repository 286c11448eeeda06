"""TensorRT backend: the ONNX checker on small hand-built graphs, the artifact (ONNX + build scripts; INT8: Q/DQ ONNX,
layer report, quantized ExportedProgram) of a real export, both build scripts on stand-ins (a fake trtexec per
TensorRT version, a fake tensorrt module), the torch-free runtime (cuda-python buffers and TensorRTSession on
stand-ins here; on a real GPU where cuda-python sees one), and, where TensorRT and a GPU exist, the engine itself
against onnxruntime (Torch-TensorRT where installed)."""
from __future__ import annotations

import ctypes
import enum
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper, shape_inference  # noqa: E402

import biformer_edge as be  # noqa: E402
from biformer_edge.backends.base import ExportContext  # noqa: E402
from biformer_edge.backends.tensorrt import export as btrt_export  # noqa: E402
from biformer_edge.backends.tensorrt import session as btrt  # noqa: E402
from biformer_edge.backends.tensorrt.export import export, load_build_module  # noqa: E402
from biformer_edge.backends.tensorrt.rules import assert_tensorrt_ready, check_onnx  # noqa: E402
from biformer_edge.quant.settings import QuantSettings  # noqa: E402

INPUT_SHAPE = (1, 3, 128, 128)   # biformer_seg_demo has n_win=8: 128 keeps every stage divisible and the test fast


def topk_model(k=4, sorted_=1, axis=-1, k_const=True, feed=None, opset=17, op="TopK"):
    """x (1, 16, 16) -> [feed] -> TopK(k) -> values, indices."""
    nodes, inits, inputs = [], [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16])]
    src = "x"
    if feed == "dq":
        inits += [numpy_helper.from_array(np.ones((1, 16, 16), np.int8), "xq"),
                  numpy_helper.from_array(np.array(0.1, np.float32), "s")]
        nodes.append(helper.make_node("DequantizeLinear", ["xq", "s"], ["xdq"], name="dq"))
        src = "xdq"
    if k_const:
        inits.append(numpy_helper.from_array(np.array([k], np.int64), "k"))
    else:
        inputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    nodes.append(helper.make_node(op, [src, "k"], ["values", "indices"], name="router/TopK", axis=axis,
                                  sorted=sorted_))
    outputs = [helper.make_tensor_value_info("values", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("indices", TensorProto.INT64, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def one_line(problems, *words):
    assert problems, "expected a problem"
    assert any(all(w in p for w in words) for p in problems), problems


# --- check_onnx on hand-built graphs -----------------------------------------------------------------------------

def test_clean_topk_graph_passes():
    assert check_onnx(topk_model()) == []


def test_non_constant_k_is_rejected():
    one_line(check_onnx(topk_model(k_const=False)), "router/TopK", "constant K")


def test_k_above_trt_limit_is_rejected():
    big = topk_model(k=4000)
    big.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 8000
    one_line(check_onnx(big), "router/TopK", "K=4000", "3840")


def test_unsorted_topk_is_rejected():
    one_line(check_onnx(topk_model(sorted_=0)), "router/TopK", "sorted=0")


def test_topk_axis_outside_last_four_dims_is_rejected():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5, 6, 7])
    k = numpy_helper.from_array(np.array([1], np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="deep", axis=1)
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)], [k])
    one_line(check_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), "deep", "last")


def test_dequantize_into_topk_is_rejected():
    one_line(check_onnx(topk_model(feed="dq")), "router/TopK", "DequantizeLinear 'dq'")


@pytest.mark.parametrize("through_reshape", [False, True])
def test_dequantize_into_gather_data_is_rejected(through_reshape):
    data = numpy_helper.from_array(np.ones((8, 4), np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [3])
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], name="dq"),
             helper.make_node("Reshape", ["w", "shape"], ["w2"], name="reshape"),
             helper.make_node("Gather", ["w2" if through_reshape else "w", "idx"], ["rows"], name="kv_gather", axis=0)]
    shape = numpy_helper.from_array(np.array([8, 4], np.int64), "shape")
    graph = helper.make_graph(nodes, "g", [idx], [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)],
                              [data, scale, shape])
    problems = check_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    one_line(problems, "kv_gather", "DequantizeLinear 'dq'")


def test_int8_gather_input_is_rejected():
    data = helper.make_tensor_value_info("data", TensorProto.INT8, [8, 4])
    idx = numpy_helper.from_array(np.array([0, 2], np.int64), "idx")
    node = helper.make_node("Gather", ["data", "idx"], ["rows"], name="g8", axis=0)
    graph = helper.make_graph([node], "g", [data], [helper.make_tensor_value_info("rows", TensorProto.INT8, None)],
                              [idx])
    one_line(check_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), "g8", "8-bit")


def test_unsupported_op_is_rejected():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])
    node = helper.make_node("Unique", ["x"], ["y"], name="uniq")
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    one_line(check_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), "uniq", "not supported")


def test_custom_domain_op_needs_a_plugin():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])
    node = helper.make_node("FusedGelu", ["x"], ["y"], name="fg", domain="com.microsoft")
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    one_line(check_onnx(model), "fg", "plugin")


def test_opset_22_is_rejected():
    one_line(check_onnx(topk_model(opset=22)), "opset 22")
    assert check_onnx(topk_model(opset=22), max_opset=24) == []


def test_rank_above_8_is_rejected():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [512])
    shape = numpy_helper.from_array(np.full(9, 2, np.int64), "shape")
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="to9d")
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    one_line(check_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), "to9d", "rank 9")


def test_einsum_is_allowed_and_dla_needs_static_inputs():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4, 8])
    b = numpy_helper.from_array(np.ones((8, 5), np.float32), "b")
    node = helper.make_node("Einsum", ["a", "b"], ["y"], name="ein", equation="nij,jk->nik")
    graph = helper.make_graph([node], "g", [a], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert check_onnx(model) == []
    one_line(check_onnx(model, dla=True), "input 'a'", "dynamic", "Nx4x8")


def test_assert_tensorrt_ready_raises_user_error(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(topk_model(sorted_=0), str(path))
    with pytest.raises(be.UserError, match="sorted=0"):
        assert_tensorrt_ready(path)


# --- a real export -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return be.create_model("biformer_seg_demo", pretrained=False)


def quantized(model, shape=INPUT_SHAPE, routing="qar"):
    """(the ModelOpt fake-quantized copy of ``model``, its QuantSettings): 8 calibration samples, cached."""
    pytest.importorskip("modelopt", reason="INT8 needs nvidia-modelopt")
    from biformer_edge.quant.prepare import prepare_int8
    settings = QuantSettings(samples=8, routing=routing)
    return prepare_int8(model, settings, shape, log=lambda *a: None)[0].model, settings


def export_int8(model, workdir, target="jetson", options=None, **kw):
    qmodel, settings = quantized(model, **kw)
    from biformer_edge.quant.report import check_int8_graph
    ctx = ExportContext(workdir=workdir, target=target, precision="int8", input_shape=INPUT_SHAPE,
                        options=options or {}, log=lambda *a: None, routing=settings.routing)
    files = export(qmodel, ctx)   # then, as the exporter does, the router island and the layer report
    return ctx, files + check_int8_graph(workdir, btrt_export.int8_graph(workdir), settings.routing, ctx.checks)


@pytest.fixture(scope="module", params=["fp32", "fp16", "int8"])
def artifact(request, model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"trt-{request.param}")
    options = {"dla_core": 0, "workspace_mib": 1024}
    if request.param == "int8":
        return "int8", workdir, export_int8(model, workdir, options=options)[1]
    ctx = ExportContext(workdir=workdir, target="jetson", precision=request.param, input_shape=INPUT_SHAPE,
                        options=options, log=lambda *a: None)
    return request.param, workdir, export(model, ctx)


INT8_FILES = ["model.onnx", "model.pt2"]
LAYER_REPORTS = ["layer_precision.json", "layer_precision.md"]   # written by quant.report after the backend's files


def test_export_writes_checked_onnx_and_scripts(artifact):
    precision, workdir, files = artifact
    written = INT8_FILES if precision == "int8" else ["model.onnx"]
    assert files == [*written, "build_engine.sh", "build_engine.py", *(LAYER_REPORTS if precision == "int8" else [])]
    assert sorted(p.name for p in workdir.iterdir()) == sorted(files)
    assert check_onnx(workdir / "model.onnx", dla=True) == []
    assert os.access(workdir / "build_engine.sh", os.X_OK)
    for name in ("build_engine.sh", "build_engine.py"):
        text = (workdir / name).read_text()
        assert "@@" not in text and f'PRECISION="{precision}"' in text.replace(" = ", "=")
        assert "images' 1x3x128x128" in text


def test_fp16_export_keeps_the_router_fp32(artifact):
    precision, workdir, _ = artifact
    model = shape_inference.infer_shapes(onnx.load(str(workdir / "model.onnx")))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    producer = {o: n for n in g.node for o in n.output}
    topks = [n for n in g.node if n.op_type == "TopK"]
    assert len(topks) == 4                                             # one per BRA block
    assert types["images"] == (TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT)
    for topk in topks:
        assert types[topk.input[0]] == TensorProto.FLOAT, topk.name
        if precision == "fp16":                                        # the island starts at a Cast to FLOAT
            seen, stack, casts = set(), [topk.input[0]], []
            while stack:
                node = producer.get(stack.pop())
                if node is None or node.name in seen:
                    continue
                seen.add(node.name)
                if node.op_type == "Cast":
                    casts.append(helper.get_attribute_value(node.attribute[0]))
                    continue
                stack.extend(node.input)
            assert casts and set(casts) == {TensorProto.FLOAT}, topk.name


def test_build_sh_parses_and_py_help_runs_without_tensorrt(artifact, tmp_path):
    _, workdir, _ = artifact
    subprocess.run(["bash", "-n", str(workdir / "build_engine.sh")], check=True)
    out = subprocess.run([sys.executable, str(workdir / "build_engine.py"), "--help"], check=True,
                         capture_output=True, text=True).stdout
    assert "--dla-core" in out and "--workspace" in out and "default: 1024" in out
    probe = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('b', sys.argv[1]); "
             "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print('tensorrt' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe, str(workdir / "build_engine.py")], check=True,
                          capture_output=True, text=True).stdout.strip() == "False"


# Engine layer information as IEngineInspector / trtexec --exportLayerInfo write it with detailed verbosity: a Q/DQ
# convolution in INT8, the router's TopK in FP32 (TensorRT 10 lists 'Bindings', 11 'I/O Tensors').
LAYER_INFO = {"Layers": [
    {"Name": "/model/backbone/stem/Conv + /model/backbone/stem/Relu", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "x_q", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
     "Outputs": [{"Name": "y", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
    {"Name": "/model/backbone/stages.0.0/attn/router/TopK", "LayerType": "TopK",
     "Inputs": [{"Name": "a", "Format/Datatype": "Row major linear FP32 format (kLINEAR)"}],
     "Outputs": [{"Name": "v", "Format/Datatype": "Row major linear FP32 format (kLINEAR)"},
                 {"Name": "i", "Format/Datatype": "Row major linear Int32 format (kLINEAR)"}]}],
    "Bindings": ["images", "logits"]}

FAKE_TRTEXEC = """#!/usr/bin/env bash
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{banner}] [b1] # trtexec $*"
[ "$1" = --version ] && exit 0
printf '%s\\n' "$@" > "{log}"
for a in "$@"; do case "$a" in
    --saveEngine=*) echo plan > "${{a#--saveEngine=}}";;
    --exportLayerInfo=*) cat > "${{a#--exportLayerInfo=}}" <<'JSON'
{layers}
JSON
;;
esac; done
"""


@pytest.mark.parametrize("banner, strongly, dla", [("100300", True, True), ("101300", True, False),
                                                   ("110300", False, False), ("110401", False, True)])
def test_build_sh_flags_per_tensorrt_version(artifact, tmp_path, banner, strongly, dla):
    """FP16 and INT8 (explicit Q/DQ) build --stronglyTyped on TensorRT 10 and with no precision flag at all on 11
    (strongly typed only); never --fp16/--int8/--best/--calib; DLA where the version has it; the per-layer precision
    report next to the engine."""
    precision, workdir, _ = artifact
    log = tmp_path / "args"
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC.format(banner=banner, log=log, layers=json.dumps(LAYER_INFO)))
    fake.chmod(0o755)
    import shutil
    art = tmp_path / "art"
    shutil.copytree(workdir, art)
    run = subprocess.run([str(art / "build_engine.sh"), "--trtexec", str(fake), "--workspace", "512"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    args = log.read_text().split()
    assert f"--onnx={art}/model.onnx" in args and f"--saveEngine={art}/model.engine" in args
    assert "--memPoolSize=workspace:512" in args and f"--timingCacheFile={art}/timing.cache" in args
    assert not any(a.startswith(("--calib", "--fp16", "--int8", "--best", "--precisionConstraints")) for a in args)
    assert ("--stronglyTyped" in args) == (strongly and precision != "fp32")
    assert ("--useDLACore=0" in args) == ("--allowGPUFallback" in args) == (dla and precision != "fp32")
    assert "--profilingVerbosity=detailed" in args and f"--exportLayerInfo={art}/engine_layers.json" in args
    if not dla:
        assert "no DLA support" in run.stderr
    assert "biformer-parity" in run.stdout and (art / "model.engine").is_file()
    assert json.loads((art / "engine_layers.json").read_text()) == LAYER_INFO
    report = (art / "engine_layers.txt").read_text()
    assert "1 layers take INT8 inputs; router layers with INT8 inputs: 0 of 1" in report
    assert "engine_layers.txt (per-layer precision)" in run.stdout


def test_build_logic_helpers():
    mod = load_build_module()
    assert mod.parse_version("10.3.0.26") == (10, 3, 0)
    assert mod.parse_version("100300") == (10, 3, 0) and mod.parse_version("8601") == (8, 6, 0)
    assert mod.dla_supported((10, 3, 0)) and not mod.dla_supported((10, 8, 0))
    assert not mod.dla_supported((11, 3, 0)) and mod.dla_supported((11, 4, 1))
    assert mod.strongly_typed((11, 0, 0), "fp32") and mod.strongly_typed((10, 3, 0), "fp16")
    assert mod.strongly_typed((10, 3, 0), "int8") and mod.strongly_typed((11, 4, 1), "int8")
    assert not mod.strongly_typed((10, 3, 0), "fp32")


def test_int8_artifact_carries_the_quantized_program(artifact, tmp_path):
    """INT8: the Q/DQ ONNX keeps the router island, and model.pt2 (torch.export of the ModelOpt model) holds the same
    quantizers as tensorrt::quantize_op, none of them inside a router; --torch-tensorrt says what it needs."""
    precision, workdir, _ = artifact
    if precision != "int8":
        pytest.skip("INT8 artifact only")
    import modelopt.torch.quantization  # noqa: F401  registers tensorrt::quantize_op, which model.pt2 uses
    import torch
    program = torch.export.load(str(workdir / "model.pt2"))
    ops = [n for n in program.graph.nodes if n.op == "call_function" and "quantize_op" in str(n.target)]
    quantizers = json.loads((workdir / "layer_precision.json").read_text())["summary"]["int8_layers"]
    assert len(ops) >= 2 * quantizers > 0                 # an input and a weight quantizer per INT8 layer
    assert not [n for n in ops if "RegionRouter" in str(n.meta.get("nn_module_stack"))]
    assert [n for n in program.graph.nodes if n.op == "call_function" and "topk" in str(n.target)]
    assert len(program.graph_signature.output_specs) == 5   # logits + one routing output per BRA block
    onnx_model = onnx.load(str(workdir / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in onnx_model.graph.node)
    assert check_onnx(onnx_model, dla=True) == []
    if importlib.util.find_spec("torch_tensorrt") is None:
        run = subprocess.run([sys.executable, str(workdir / "build_engine.py"), "--torch-tensorrt"],
                             capture_output=True, text=True)
        assert run.returncode == 2 and "torch_tensorrt" in run.stderr and run.stderr.count("\n") == 1


@pytest.mark.parametrize("routing, in_router", [("qar", 0), ("naive", 8)])
def test_quantized_program_counts_router_quantizers(model, tmp_path, routing, in_router):
    """The island check of model.pt2 sees the router's quantizers where --routing naive puts them (q and k regions of
    4 routers), and none with QAR."""
    shape = (1, 3, 64, 64)
    qmodel, _ = quantized(model, shape=shape, routing=routing)
    found = btrt_export.export_quantized_program(qmodel, shape, tmp_path / "model.pt2")
    assert found["router_quantize_ops"] == in_router and found["quantize_ops"] > 80   # QAR keeps LN inputs float
    assert (tmp_path / "model.pt2").stat().st_size > 0


def fake_builder_tensorrt(version: str, seen: dict):
    """A stand-in 'tensorrt' with what build_engine() calls: builder, network flags, config, parser, runtime and the
    engine inspector (whose JSON is LAYER_INFO when the config asked for DETAILED verbosity). TensorRT 11 has no
    precision builder flags at all."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.BuilderFlag = enum.Enum("BuilderFlag", "TF32 GPU_FALLBACK" + (" FP16 INT8" if version < "11" else ""))
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY DETAILED NONE")
    trt.LayerInformationFormat = enum.Enum("LayerInformationFormat", "ONELINE JSON")
    trt.DeviceType = enum.Enum("DeviceType", "GPU DLA")

    class Config:
        profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
        default_device_type = trt.DeviceType.GPU

        def __init__(self):
            self.flags, self.cleared = set(), set()
            seen["config"] = self

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.cleared.add(flag)

        def create_timing_cache(self, data):
            return data

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"cache")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            seen["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            return b"plan"

    class Inspector:
        def get_engine_information(self, fmt):
            assert fmt == trt.LayerInformationFormat.JSON
            detailed = seen["config"].profiling_verbosity == trt.ProfilingVerbosity.DETAILED
            return json.dumps(LAYER_INFO if detailed else {"Layers": [x["Name"] for x in LAYER_INFO["Layers"]]})

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return types.SimpleNamespace(create_engine_inspector=Inspector) if data == b"plan" else None

    trt.Builder, trt.Runtime = Builder, Runtime
    trt.OnnxParser = type("OnnxParser", (), {"__init__": lambda self, network, logger: None,
                                             "parse_from_file": lambda self, path: True})
    return trt


@pytest.mark.parametrize("version, precision, dla_core", [("10.3.0", "int8", 0), ("10.3.0", "fp32", None),
                                                          ("11.4.1", "int8", 0), ("11.0.0", "int8", None),
                                                          ("10.13.0", "int8", 0)])
def test_python_build_is_strongly_typed_and_writes_layer_precisions(tmp_path, monkeypatch, version, precision,
                                                                    dla_core):
    seen = {}
    fake_tensorrt = fake_builder_tensorrt(version, seen)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    mod = load_build_module()
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "engine_layers.txt").write_text("an earlier engine\n")
    messages = []
    engine = mod.build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", precision, dla_core,
                              timing_cache=tmp_path / "timing.cache", log=messages.append)
    assert engine.read_bytes() == b"plan"
    config = seen["config"]
    strongly = bool(seen["network_flags"] & (1 << 5))
    assert strongly == (precision != "fp32" or version >= "11")
    assert not {f.name for f in config.flags} & {"FP16", "INT8"}          # never implicit precision / calibration
    assert config.profiling_verbosity == fake_tensorrt.ProfilingVerbosity.DETAILED
    on_dla = config.default_device_type == fake_tensorrt.DeviceType.DLA
    assert on_dla == (dla_core is not None and mod.dla_supported(mod.parse_version(version)))
    assert on_dla == (fake_tensorrt.BuilderFlag.GPU_FALLBACK in config.flags)
    assert json.loads((tmp_path / "engine_layers.json").read_text()) == LAYER_INFO
    report = (tmp_path / "engine_layers.txt").read_text()
    assert "an earlier engine" not in report and "[router]" in report
    assert any("router layers with INT8 inputs: 0 of 1" in m for m in messages)


def test_layer_report_reads_both_inspector_schemas():
    mod = load_build_module()
    rows, summary = mod.layer_report(json.dumps(LAYER_INFO))
    assert [(r["inputs"], r["outputs"], r["router"]) for r in rows] == [
        (["int8"], ["fp16"], False), (["fp32"], ["fp32", "int32"], True)]
    assert summary["int8_input_layers"] == 1 and summary["router_layers_with_int8_inputs"] == 0
    trt11 = {"Layers": [{"Name": "/m/attn/router/MatMul", "LayerType": "Myelin",
                         "Inputs": [{"Name": "q", "DataType": "Int8", "Format": "Row major linear"}], "Outputs": []}],
             "I/O Tensors": [{"Name": "images", "IOMode": "Input", "DataType": "Float"}]}
    rows, summary = mod.layer_report(trt11)
    assert rows[0]["inputs"] == ["int8"] and summary["router_layers_with_int8_inputs"] == 1
    rows, summary = mod.layer_report({"Layers": ["conv1", "topk"]})   # LAYER_NAMES_ONLY: names, no precisions
    assert [r["inputs"] for r in rows] == [[], []] and summary["layers"] == 2


def test_layer_report_reads_any_datatype_spelling_and_never_passes_vacuously():
    """IEngineInspector's JSON names a tensor's precision 'Format/Datatype' (with an execution context a full format
    text, without one an abbreviation such as 'Int8' or 'Half'); other tools spell it 'DataType' or 'Datatype'. All
    are read. A router whose layers state no precision at all is 'unknown', never a pass of the island check."""
    mod = load_build_module()
    for key in ("Format/Datatype", "DataType", "Datatype", "datatype"):
        info = {"Layers": [{"Name": "/m/attn/router/MatMul", "Inputs": [{"Name": "q", key: "Half"}]}]}
        summary = mod.layer_report(info)[1]
        assert summary["router_island"] == "fp32" and summary["router_layers_read"] == 1, key
    unread = {"Layers": [{"Name": "/m/attn/router/MatMul", "Inputs": [{"Name": "q", "Dimensions": [1, 4]}]},
                         {"Name": "/m/attn/router/TopK", "Inputs": []}]}
    rows, summary = mod.layer_report(unread)
    assert summary["router_layers_with_int8_inputs"] == 0 and summary["router_island"] == "unknown"
    assert "router layers with INT8 inputs: unknown" in mod.render_layer_report(rows, summary)
    quantized = {"Layers": [{"Name": "/m/attn/router/MatMul", "Inputs": [{"Name": "q", "Datatype": "Int8"}]}]}
    assert mod.layer_report(quantized)[1]["router_island"] == "int8 inputs"


def test_build_without_tensorrt_is_a_user_error(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # import tensorrt -> ImportError, even where it exists
    ctx = ExportContext(workdir=tmp_path, target="jetson", precision="fp32", input_shape=INPUT_SHAPE,
                        options={"build": True}, log=lambda *a: None)
    with pytest.raises(be.UserError, match="--build needs TensorRT and an NVIDIA GPU.*build_engine.sh"):
        export(model, ctx)
    assert list(tmp_path.iterdir()) == []                # failed before writing anything


def test_template_left_unrendered_is_a_user_error(tmp_path, monkeypatch):
    (tmp_path / "escaped.sh").write_text("A=@@precision B=@@@@dla_core\n")   # '@@@@' renders as a literal '@@'
    (tmp_path / "missing.sh").write_text("A=@@precision B=@@nothing\n")
    monkeypatch.setattr(btrt_export, "template_path", lambda name: tmp_path / name)
    with pytest.raises(be.UserError, match="still has an '@@' placeholder"):
        btrt_export.render_template("escaped.sh", precision="fp16")
    with pytest.raises(be.UserError, match="cannot render the template .*missing.sh.*nothing"):
        btrt_export.render_template("missing.sh", precision="fp16")
    assert btrt_export.render_template("missing.sh", precision="fp16", nothing=1) == "A=fp16 B=1\n"


def test_modules_import_without_torch():
    """A Jetson or a Mac loads Sessions with no torch installed."""
    probe = ("import sys; sys.modules['torch'] = None\n"
             "import biformer_edge.backends.onnx.session, biformer_edge.backends.tensorrt.session\n"
             "import biformer_edge.backends.tensorrt.rules, biformer_edge.backends.coreml.session\n"
             "from biformer_edge.backends.tensorrt.session import cuda_unavailable; cuda_unavailable()\n"
             "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m])")
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_session_without_tensorrt_is_a_user_error(tmp_path, monkeypatch):
    from biformer_edge.backends.tensorrt.session import TensorRTSession
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(be.UserError, match="TensorRT is not installed"):
        TensorRTSession(tmp_path)


# --- runtime without torch: cuda-python buffers and the session ---------------------------------------------------

class FakeCudart:
    """cuda-python's runtime API (the calls the backend makes) on host memory: every call returns (error, *values),
    'device' pointers are addresses of numpy blocks. ``fail`` names calls that return an error."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorNoDevice = 100

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, devices: int = 1, fail=(), mallocs: int | None = None):
        self.devices, self.fail, self.memory, self.streams = devices, set(fail), {}, set()
        self.mallocs = mallocs    # how many cudaMalloc calls succeed (None: all)

    def _result(self, call, *values):
        if call in self.fail:
            return (self.cudaError_t.cudaErrorInvalidValue, *[None] * len(values))
        return (self.cudaError_t.cudaSuccess, *values)

    def cudaGetDeviceCount(self):
        if not self.devices:
            return self.cudaError_t.cudaErrorNoDevice, 0
        return self._result("cudaGetDeviceCount", self.devices)

    def cudaMalloc(self, size):
        if self.mallocs is not None:
            if self.mallocs == 0:
                return self.cudaError_t.cudaErrorInvalidValue, None
            self.mallocs -= 1
        block = np.zeros(size, np.uint8)
        self.memory[block.ctypes.data] = block
        return self._result("cudaMalloc", block.ctypes.data)

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return self._result("cudaFree")

    def cudaStreamCreate(self):
        self.streams.add(7)
        return self._result("cudaStreamCreate", 7)

    def cudaStreamSynchronize(self, stream):
        return self._result("cudaStreamSynchronize")

    def cudaStreamDestroy(self, stream):
        self.streams.discard(stream)
        return self._result("cudaStreamDestroy")

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        assert stream in self.streams and kind in tuple(self.cudaMemcpyKind)
        ctypes.memmove(dst, src, count)
        return self._result("cudaMemcpyAsync")


def device_array(ptr: int, shape, dtype) -> np.ndarray:
    """A numpy view of 'device' memory of the fake runtime (host memory)."""
    dtype = np.dtype(dtype)
    raw = (ctypes.c_char * (int(np.prod(shape)) * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype).reshape(shape)


ENGINE_TENSORS = {"images": ("input", (1, 3, 4, 4), np.float16),      # an FP16 engine: float32 inputs are converted
                  "logits": ("output", (1, 3, 4, 4), np.float16),
                  "routing_0": ("output", (1, 4, 2), np.int64)}


def fake_tensorrt(tensors=ENGINE_TENSORS, execute=None):
    """A stand-in 'tensorrt' module: one engine (file content b'plan') with ``tensors`` (name -> (mode, shape, numpy
    dtype)); ``execute(addresses, stream)`` is execute_async_v3. TensorRT's dtypes are numpy dtypes here."""
    trt = types.ModuleType("tensorrt")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

    def nptype(dtype):
        if dtype == "bf16":
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return dtype
    trt.nptype = nptype

    class Context:
        def __init__(self):
            self.addresses = {}

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int) and set(self.addresses) == set(tensors)
            return execute(self.addresses, stream_handle)

    class Engine:
        num_io_tensors = len(tensors)

        def get_tensor_name(self, i):
            return list(tensors)[i]

        def get_tensor_shape(self, name):
            return tensors[name][1]

        def get_tensor_dtype(self, name):
            return tensors[name][2]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if tensors[name][0] == "input" else trt.TensorIOMode.OUTPUT

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"plan" else None

    trt.Runtime = Runtime
    return trt


def host_engine(addresses, stream):
    """execute_async_v3 of the fake engine on the fake runtime: logits = 2 * images, routing = fixed indices."""
    x = device_array(addresses["images"], (1, 3, 4, 4), np.float16)
    device_array(addresses["logits"], (1, 3, 4, 4), np.float16)[...] = 2 * x
    device_array(addresses["routing_0"], (1, 4, 2), np.int64)[...] = np.arange(8).reshape(1, 4, 2) % 4
    return True


@pytest.fixture
def fake_runtime(tmp_path, monkeypatch):
    """(artifact dir with a model.engine, the fake cudart): TensorRTSession runs on stand-ins, no GPU, no TensorRT."""
    cudart = FakeCudart()
    monkeypatch.setattr(btrt, "load_cudart", lambda: cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(execute=host_engine))
    (tmp_path / "model.engine").write_bytes(b"plan")
    return tmp_path, cudart


def test_cuda_unavailable_reasons(monkeypatch):
    monkeypatch.setattr(btrt, "load_cudart", lambda: None)
    assert btrt.cuda_unavailable() == "cuda-python is not installed (pip install cuda-python)"
    monkeypatch.setattr(btrt, "load_cudart", lambda: FakeCudart(devices=0))
    assert btrt.cuda_unavailable() == "no CUDA GPU (cudaErrorNoDevice)"
    monkeypatch.setattr(btrt, "load_cudart", lambda: FakeCudart(fail={"cudaGetDeviceCount"}))
    assert btrt.cuda_unavailable().startswith("no CUDA GPU")
    monkeypatch.setattr(btrt, "load_cudart", lambda: FakeCudart())
    assert btrt.cuda_unavailable() is None


def test_runtime_unavailable_asks_cuda_python(monkeypatch):
    from biformer_edge import targets
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())   # 'tensorrt is installed'
    monkeypatch.setattr(btrt, "load_cudart", lambda: None)
    assert targets.runtime_unavailable("tensorrt") == "cuda-python is not installed (pip install cuda-python)"


def test_session_runs_on_stand_ins(fake_runtime):
    artifact, cudart = fake_runtime
    session = btrt.TensorRTSession(artifact)
    assert session.input_name == "images" and session.output_names == ["logits", "routing_0"]
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    got = session.run(x)
    np.testing.assert_allclose(got.logits, 2 * x.astype(np.float16).astype(np.float32))
    assert got.logits.dtype == np.float32 and got.routing[0].dtype == np.int64
    assert got.routing[0].tolist() == [[[0, 1], [2, 3], [0, 1], [2, 3]]]
    again = session.run(-x)                        # buffers are reused, results are copies
    np.testing.assert_allclose(again.logits, -got.logits)
    session.close()
    assert cudart.memory == {} and cudart.streams == set()
    with pytest.raises(be.UserError, match="closed"):
        session.run(x)


def test_session_wrong_shape_and_failed_execute_are_user_errors(fake_runtime, monkeypatch):
    artifact, _ = fake_runtime
    session = btrt.TensorRTSession(artifact)
    with pytest.raises(be.UserError, match=r"input shape \(1, 3, 8, 8\) does not match .*\(1, 3, 4, 4\)"):
        session.run(np.zeros((1, 3, 8, 8), np.float32))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(execute=lambda addresses, stream: False))
    failing = btrt.TensorRTSession(artifact)
    with pytest.raises(be.UserError, match="execute_async_v3"):
        failing.run(np.zeros((1, 3, 4, 4), np.float32))


def test_session_cuda_errors_are_user_errors(fake_runtime, monkeypatch):
    artifact, cudart = fake_runtime
    session = btrt.TensorRTSession(artifact)
    cudart.fail.add("cudaStreamSynchronize")
    with pytest.raises(be.UserError, match="TensorRT run failed on the GPU: cudaStreamSynchronize failed: "
                                           "cudaErrorInvalidValue"):
        session.run(np.zeros((1, 3, 4, 4), np.float32))
    session.close()
    cudart.fail, cudart.mallocs = set(), 2         # the third tensor's allocation fails
    with pytest.raises(be.UserError, match="cannot set up the GPU buffers.*cudaMalloc failed"):
        btrt.TensorRTSession(artifact)
    assert cudart.memory == {} and cudart.streams == set()   # what was allocated before the failure is freed


def test_session_refuses_what_it_cannot_run(fake_runtime, monkeypatch):
    artifact, _ = fake_runtime
    monkeypatch.setattr(btrt, "load_cudart", lambda: None)
    with pytest.raises(be.UserError, match="cuda-python is not installed"):
        btrt.TensorRTSession(artifact)
    monkeypatch.setattr(btrt, "load_cudart", lambda: FakeCudart(devices=0))
    with pytest.raises(be.UserError, match="no CUDA GPU"):
        btrt.TensorRTSession(artifact)
    monkeypatch.setattr(btrt, "load_cudart", lambda: FakeCudart())
    (artifact / "model.engine").write_bytes(b"built elsewhere")
    with pytest.raises(be.UserError, match="another TensorRT version"):
        btrt.TensorRTSession(artifact)
    (artifact / "model.engine").write_bytes(b"plan")
    for tensors, match in (({**ENGINE_TENSORS, "images": ("input", (1, 3, -1, -1), np.float16)}, "dynamic dims"),
                           ({**ENGINE_TENSORS, "logits": ("output", (1, 3, 4, 4), "bf16")}, "numpy cannot hold"),
                           ({**ENGINE_TENSORS, "mask": ("input", (1, 1), np.float32)}, "has inputs")):
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(tensors, execute=host_engine))
        with pytest.raises(be.UserError, match=match):
            btrt.TensorRTSession(artifact)


def real_cudart():
    """cuda-python's runtime where it sees a GPU, else skip with the reason."""
    cudart = btrt.load_cudart()
    if cudart is None:
        pytest.skip("cuda-python is not installed")
    why = btrt.cuda_unavailable()
    if why:
        pytest.skip(why)
    return cudart


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_device_buffer_round_trip_on_gpu(dtype):
    real_cudart()
    stream = btrt.CudaStream()
    buf = btrt.DeviceBuffer((2, 3, 5), dtype)
    x = (np.arange(30).reshape(2, 3, 5) - 7).astype(np.float32)
    try:
        buf.upload(x, stream)
        buf.host[...] = 0                          # only the device still has the data
        stream.synchronize()
        buf.download(stream)
        stream.synchronize()
        assert buf.host.dtype == np.dtype(dtype) and np.array_equal(buf.host, x.astype(dtype))
        with pytest.raises(ValueError, match="shape"):
            buf.upload(np.zeros((3, 2, 5)), stream)
    finally:
        buf.free()
        buf.free()                                 # a second free is a no-op
        stream.close()


def test_session_io_on_gpu_without_tensorrt(tmp_path, monkeypatch):
    """TensorRTSession's buffers, copies and stream on a real GPU, with a stand-in engine that copies its input to
    'logits' and zeroes 'routing_0' on the device (no TensorRT needed)."""
    cudart = real_cudart()
    tensors = {"images": ("input", (1, 3, 8, 8), np.float32), "logits": ("output", (1, 3, 8, 8), np.float32),
               "routing_0": ("output", (1, 16, 4), np.int64)}

    def device_engine(addresses, stream):
        d2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        err, = cudart.cudaMemcpyAsync(addresses["logits"], addresses["images"], 3 * 64 * 4, d2d, stream)
        err2, = cudart.cudaMemsetAsync(addresses["routing_0"], 0, 16 * 4 * 8, stream)
        return err == err2 == cudart.cudaError_t.cudaSuccess

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(tensors, execute=device_engine))
    (tmp_path / "model.engine").write_bytes(b"plan")
    session = btrt.TensorRTSession(tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for sign in (1, -1):
        got = session.run(sign * x)
        assert np.array_equal(got.logits, sign * x) and got.routing[0].shape == (1, 16, 4)
        assert not got.routing[0].any()
    session.close()


# --- engine build and run: only where TensorRT and a CUDA GPU exist ------------------------------------------------

def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


# Routing floors are first guesses (random weights make near-tied affinities): tighten once measured on a GPU.
@pytest.mark.parametrize("precision, min_cosine, min_routing", [("fp32", 0.9999, 0.99), ("fp16", 0.999, 0.9)])
def test_engine_matches_onnxruntime(model, tmp_path, precision, min_cosine, min_routing):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (JetPack or NVIDIA's index, not PyPI)")
    why = btrt.cuda_unavailable()
    if why:
        pytest.skip(f"TensorRT needs a CUDA GPU: {why}")
    from biformer_edge.backends.onnx.session import OnnxSession
    from biformer_edge.backends.tensorrt.session import TensorRTSession

    ctx = ExportContext(workdir=tmp_path, target="tensorrt", precision=precision, input_shape=INPUT_SHAPE,
                        options={"build": True}, log=lambda *a: None)
    assert "model.engine" in export(model, ctx)
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    ref = OnnxSession(tmp_path / "model.onnx", providers=["CPUExecutionProvider"]).run(x)
    got = TensorRTSession(tmp_path).run(x)
    assert got.logits.shape == ref.logits.shape and len(got.routing) == len(ref.routing) == 4
    assert cosine(got.logits, ref.logits) >= min_cosine
    agreement = np.mean([np.mean(np.sort(g, -1) == np.sort(r, -1)) for g, r in zip(got.routing, ref.routing)])
    assert agreement >= min_routing


def test_int8_engine_matches_onnxruntime_and_keeps_the_router_fp32(model, tmp_path):
    """The strongly typed INT8 engine runs the Q/DQ graph like onnxruntime does, and its inspector says the router
    layers take no INT8 input. Floors are first guesses (random weights): tighten once measured on a GPU."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (JetPack or NVIDIA's index, not PyPI)")
    why = btrt.cuda_unavailable()
    if why:
        pytest.skip(f"TensorRT needs a CUDA GPU: {why}")
    from biformer_edge.backends.onnx.session import OnnxSession
    from biformer_edge.backends.tensorrt.session import TensorRTSession

    _, files = export_int8(model, tmp_path, target="tensorrt", options={"build": True})
    assert "model.engine" in files
    summary = load_build_module().layer_report((tmp_path / "engine_layers.json").read_text())[1]
    assert summary["int8_input_layers"] > 0 and summary["router_layers_with_int8_inputs"] == 0, summary
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    ref = OnnxSession(tmp_path / "model.onnx", providers=["CPUExecutionProvider"]).run(x)
    got = TensorRTSession(tmp_path).run(x)
    assert cosine(got.logits, ref.logits) >= 0.99
    agreement = np.mean([np.mean(np.sort(g, -1) == np.sort(r, -1)) for g, r in zip(got.routing, ref.routing)])
    assert agreement >= 0.9


def test_torch_tensorrt_compiles_the_quantized_program(model, tmp_path):
    pytest.importorskip("torch_tensorrt", reason="Torch-TensorRT is not installed")
    import torch
    if not torch.cuda.is_available():
        pytest.skip("Torch-TensorRT needs a CUDA GPU")
    export_int8(model, tmp_path)
    run = subprocess.run([sys.executable, str(tmp_path / "build_engine.py"), "--torch-tensorrt"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    compiled = torch.export.load(str(tmp_path / "model_trt.ep")).module()
    out = compiled(torch.zeros(INPUT_SHAPE, device="cuda"))
    assert out[0].shape[0] == 1 and len(out) == 5
