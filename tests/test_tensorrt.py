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
from biformer_edge import targets  # noqa: E402
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


def test_einsum_is_allowed():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4, 8])
    b = numpy_helper.from_array(np.ones((8, 5), np.float32), "b")
    node = helper.make_node("Einsum", ["a", "b"], ["y"], name="ein", equation="nij,jk->nik")
    graph = helper.make_graph([node], "g", [a], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert check_onnx(model) == []


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
    options = {"workspace_mib": 1024}
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
    assert check_onnx(workdir / "model.onnx") == []
    assert os.access(workdir / "build_engine.sh", os.X_OK)
    for name in ("build_engine.sh", "build_engine.py"):
        text = (workdir / name).read_text()
        assert "@@" not in text and f'PRECISION="{precision}"' in text.replace(" = ", "=")
        assert "images' 1x3x128x128" in text


def test_export_keeps_the_router_and_layernorm_fp32(artifact):
    """FP32 input and outputs for every precision; in the mixed precision FP16/INT8 graphs the router island (each
    TopK and what feeds it) starts at Casts to FLOAT and every LayerNormalization computes in FP32."""
    precision, workdir, _ = artifact
    model = shape_inference.infer_shapes(onnx.load(str(workdir / "model.onnx")))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    producer = {o: n for n in g.node for o in n.output}
    topks = [n for n in g.node if n.op_type == "TopK"]
    assert len(topks) == 4                                             # one per BRA block
    assert types["images"] == TensorProto.FLOAT and types[g.output[0].name] == TensorProto.FLOAT
    for norm in (n for n in g.node if n.op_type == "LayerNormalization"):
        assert types[norm.input[0]] == TensorProto.FLOAT, norm.name
    for topk in topks:
        assert types[topk.input[0]] == TensorProto.FLOAT, topk.name
        if precision != "fp32":                                        # the island starts at a Cast to FLOAT
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

# trtexec stand-ins, one per TensorRT release a Jetson carries, each holding that release's own rules:
# - the banner '&&&& RUNNING TensorRT.trtexec [TensorRT vN]' comes first, before any option is parsed
#   (samples/common/logging.h defineTest, samples/trtexec/trtexec.cpp main; ' [bBUILD]' appended from v10.4.0 on);
#   N = NV_TENSORRT_VERSION: MAJOR*1000+MINOR*100+PATCH on 8.x (include/NvInferRuntimeBase.h v8.6.1,
#   NvInferRuntimeCommon.h 8.5.3), MAJOR*10000+MINOR*100+PATCH from 10.0 (NV_TENSORRT_VERSION_INT, v10.3.0, v11.1);
# - an option it does not parse fails the run ('Unknown option: ...', trtexec.cpp v8.6.1): the options parsed are
#   those of samples/common/sampleOptions.cpp at the tag (8.5.3/8.6.1: no --stronglyTyped; 10.x adds it; 11.1 has no
#   --fp16, --best, --precisionConstraints, --layerPrecisions);
# - the ONNX parser checks no upper opset bound (ModelImporter.cpp, onnx-tensorrt release/8.6-GA and 10.0-GA: it warns
#   only below opset 7; "up to Opset 17" in 8.6's docs/operators.md is a documentation statement, not a parser rule),
#   so the stand-in refuses no opset; LayerNormalization is 'N' in the 8.5 matrix, 'Y' from 8.6; a file that is no
#   ONNX model fails the run ('Failed to parse onnx file', samples/common/sampleEngines.cpp v10.3.0; trtexec returns
#   EXIT_FAILURE through reportFail) and no engine is saved;
# - --timingCacheFile: the file is loaded and attached with mismatches ignored from 10.3 on (setTimingCache(*cache,
#   true): samples/utils/timingCache.cpp v10.3.0, shared/utils/cacheUtils.cpp v10.16, v11.1), with the return value
#   unchecked and mismatches refused on 8.6 (setTimingCache(*timingCache, false), sampleEngines.cpp v8.6.1); after a
#   successful build, and only then, the file's cache is combined with the build's and written back
#   (updateTimingCacheFile, same files; on 8.6 ITimingCache::combine(..., false) refuses a mismatched one, NvInfer.h
#   v8.6.1). A cache entry here is one line naming the board and TensorRT it was measured on; the stand-in runs on
#   DEVICE and logs the entries it used to LOG.cache;
# - --useDLACore on 10.0-10.7 sets kFP16 and kPREFER_PRECISION_CONSTRAINTS (sampleEngines.cpp v10.3.0, DLA block), and
#   a strongly typed network refuses kFP16 at build (NVIDIA/TensorRT#4253); 10.8-11.3 have no DLA, so
#   getNbDLACores() is 0 ('Cannot create DLA engine, 0 not available').
FAKE_TRTEXEC = r'''#!{python}
import json, sys
import onnx
VERSION, BUILD, LOG, LAYERS, DEVICE = {version!r}, {build!r}, {log!r}, {layers!r}, {device!r}
major, minor, patch = VERSION
number = major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch
print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{{number}}]" + (f" [b{{BUILD}}]" if VERSION >= (10, 4, 0) else "")
      + " # trtexec " + " ".join(sys.argv[1:]))
with open(LOG + ".calls", "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
known = {{"--onnx", "--saveEngine", "--timingCacheFile", "--memPoolSize", "--skipInference", "--profilingVerbosity",
         "--exportLayerInfo", "--noTF32", "--fp16", "--int8", "--best", "--useDLACore", "--allowGPUFallback",
         "--precisionConstraints", "--layerPrecisions"}}
if major >= 10:
    known |= {{"--stronglyTyped"}}
if major >= 11:
    known -= {{"--fp16", "--best", "--precisionConstraints", "--layerPrecisions"}}
args = dict(a.split("=", 1) if "=" in a else (a, "") for a in sys.argv[1:])
unknown = [a for a in args if a not in known]
if unknown:
    print(f"[E] Unknown option: {{unknown[0]}}")
    sys.exit(1)
with open(LOG, "w") as f:
    f.write("\n".join(sys.argv[1:]) + "\n")
try:
    model = onnx.load(args["--onnx"])
except Exception:
    print("[E] Failed to parse onnx file")
    sys.exit(1)
if VERSION < (8, 6, 0) and any(n.op_type == "LayerNormalization" for n in model.graph.node):
    print("[E] [TRT] No importer registered for op: LayerNormalization")
    sys.exit(1)
if "--useDLACore" in args:
    if (10, 8, 0) <= VERSION < (11, 4, 1):
        print(f"[E] Cannot create DLA engine, {{args['--useDLACore']}} not available")
        sys.exit(1)
    if major == 10 and "--stronglyTyped" in args:
        print("[E] Error Code 3: API Usage Error (Parameter check failed, condition: "
              "!config.getFlag(BuilderFlag::kFP16). )")
        sys.exit(1)
entry = f"tactics measured on {{DEVICE}} by TensorRT {{'.'.join(map(str, VERSION))}}"
cache_file = args.get("--timingCacheFile")
try:
    with open(cache_file) as f:
        loaded = f.read().splitlines()
except (TypeError, OSError):
    loaded = []
used = loaded if major >= 10 or all(line == entry for line in loaded) else []
with open(LOG + ".cache", "w") as f:
    f.write("".join(line + "\n" for line in used))
with open(args["--saveEngine"], "w") as f:
    f.write("plan")
if cache_file:
    combined = loaded if loaded and not used else list(dict.fromkeys(loaded + [entry]))
    with open(cache_file, "w") as f:
        f.write("".join(line + "\n" for line in combined))
if "--exportLayerInfo" in args:
    with open(args["--exportLayerInfo"], "w") as f:
        f.write(LAYERS)
'''

# (version, build, JetPack it ships with)
TRT_RELEASES = {"8.5.2": ((8, 5, 2), 2, "JetPack 5.1"), "8.6.2": ((8, 6, 2), 3, "JetPack 6.0"),
                "10.3.0": ((10, 3, 0), 26, "JetPack 6.1/6.2"), "10.16.0": ((10, 16, 0), 72, "JetPack 7"),
                "11.1.0": ((11, 1, 0), 106, "JetPack 7")}


def fake_trtexec(tmp_path, release: str, device: str = "this board"):
    """A trtexec stand-in of ``release`` (TRT_RELEASES) on ``device`` and the file it logs its build arguments to."""
    version, build, _ = TRT_RELEASES[release]
    log = tmp_path / "args"
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC.format(python=sys.executable, version=version, build=build, log=str(log),
                                        layers=json.dumps(LAYER_INFO), device=device))
    fake.chmod(0o755)
    return fake, log


def copied_artifact(workdir, tmp_path):
    import shutil
    art = tmp_path / "art"
    shutil.copytree(workdir, art)
    return art


# What build_engine.sh must do with each artifact on each release: the flags of a strongly typed or weakly typed
# build, or a one-line refusal naming the JetPack. FP32 builds weakly typed (no precision flag: all FP32).
EXPECTED_SH = {("8.5.2", p): ("refused", "JetPack 5") for p in ("fp32", "fp16", "int8")}
EXPECTED_SH.update({("8.6.2", "fp32"): ("weakly typed", None), ("8.6.2", "fp16"): ("refused", "JetPack 6.0"),
                    ("8.6.2", "int8"): ("refused", "no strongly typed builds")})
EXPECTED_SH.update({(r, p): ("weakly typed" if p == "fp32" else "strongly typed", None)
                    for r in ("10.3.0", "10.16.0") for p in ("fp32", "fp16", "int8")})
EXPECTED_SH.update({("11.1.0", p): ("strongly typed", None) for p in ("fp32", "fp16", "int8")})


@pytest.mark.parametrize("release", list(TRT_RELEASES))
def test_build_sh_per_tensorrt_release(artifact, tmp_path, release):
    """build_engine.sh reads the release from trtexec's banner and passes only what that trtexec parses and builds:
    --stronglyTyped for FP16/INT8 on 10.x, no precision flag on 11.x (strongly typed only) or for FP32, --skipInference,
    --noTF32; never --fp16/--int8/--best/--calib or precision constraints. Where the release cannot build the artifact
    as exported it refuses in one line (exit 2) without running a build."""
    precision, workdir, _ = artifact
    art = copied_artifact(workdir, tmp_path)
    fake, log = fake_trtexec(tmp_path, release)
    run = subprocess.run([str(art / "build_engine.sh"), "--trtexec", str(fake), "--workspace", "512"],
                         capture_output=True, text=True)
    mode, words = EXPECTED_SH[(release, precision)]
    if mode == "refused":
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert words in run.stderr and "JetPack" in run.stderr, run.stderr
        assert not log.exists() and not (art / "model.engine").exists()
        return
    assert run.returncode == 0, run.stdout + run.stderr      # the stand-in accepted every option and built
    assert f"TensorRT {release} " in run.stdout and f"{mode} build" in run.stdout
    args = log.read_text().split()
    assert f"--onnx={art}/model.onnx" in args and f"--saveEngine={art}/model.engine.partial" in args
    assert "--memPoolSize=workspace:512" in args and f"--timingCacheFile={art}/timing.cache" in args
    assert "--skipInference" in args and "--noTF32" in args
    assert not any(a.startswith(("--calib", "--fp16", "--int8", "--best", "--precisionConstraints", "--layerPrecisions",
                                 "--useDLACore", "--allowGPUFallback")) for a in args)
    assert ("--stronglyTyped" in args) == (mode == "strongly typed" and not release.startswith("11."))
    assert "--profilingVerbosity=detailed" in args and f"--exportLayerInfo={art}/engine_layers.json" in args
    assert "biformer-parity" in run.stdout and (art / "model.engine").read_text() == "plan"
    assert not (art / "model.engine.partial").exists()
    assert json.loads((art / "engine_layers.json").read_text()) == LAYER_INFO
    report = (art / "engine_layers.txt").read_text()
    assert "1 layers take INT8 inputs; router layers with INT8 inputs: 0 of 1" in report
    assert "engine_layers.txt (per-layer precision)" in run.stdout


@pytest.mark.parametrize("release", ["10.3.0", "11.1.0"])
def test_build_sh_refuses_dla_in_one_line_before_running_trtexec(artifact, tmp_path, release):
    """On 10.3 trtexec --useDLACore with the --stronglyTyped build these graphs need fails (the stand-in holds that
    rule); 11.1 has no DLA. The script says why in one line and runs nothing."""
    precision, workdir, _ = artifact
    if precision != "fp16":
        pytest.skip("one artifact is enough")
    art = copied_artifact(workdir, tmp_path)
    fake, log = fake_trtexec(tmp_path, release)
    run = subprocess.run([str(art / "build_engine.sh"), "--trtexec", str(fake), "--dla-core", "0"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr == f"error: {load_build_module().DLA_REFUSAL}\n"
    assert "16 per core" in run.stderr and not (tmp_path / "args.calls").exists()


def test_build_sh_caps_the_workspace_to_the_machine_memory(artifact, tmp_path):
    precision, workdir, _ = artifact
    if precision != "fp32":
        pytest.skip("one artifact is enough")
    mod = load_build_module()
    total = mod.memory_total_mib()
    if total is None:
        pytest.skip("no /proc/meminfo here")
    art = copied_artifact(workdir, tmp_path)
    fake, log = fake_trtexec(tmp_path, "10.3.0")
    huge = total * 10
    run = subprocess.run([str(art / "build_engine.sh"), "--trtexec", str(fake), "--workspace", str(huge)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"--memPoolSize=workspace:{total // 4}" in log.read_text().split()
    assert f"workspace {huge} MiB capped to {total // 4} MiB" in run.stdout
    bad = subprocess.run([str(art / "build_engine.sh"), "--trtexec", str(fake), "--workspace", "lots"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "whole number of MiB" in bad.stderr


def test_build_sh_leaves_no_engine_after_a_failed_rebuild(artifact, tmp_path):
    """trtexec writes model.engine.partial, renamed to model.engine only after it succeeded; the engine and layer
    report of an earlier build are removed first, so a failed rebuild leaves no engine a check could pick up."""
    precision, workdir, _ = artifact
    if precision != "fp32":
        pytest.skip("one artifact is enough")
    art = copied_artifact(workdir, tmp_path)
    fake, _ = fake_trtexec(tmp_path, "10.3.0")
    build = [str(art / "build_engine.sh"), "--trtexec", str(fake), "--workspace", "512"]
    assert subprocess.run(build, capture_output=True, text=True).returncode == 0
    assert (art / "model.engine").read_text() == "plan" and (art / "engine_layers.txt").is_file()
    cache = (art / "timing.cache").read_text()
    (art / "model.onnx").write_bytes(b"not an ONNX model")          # the stand-in's parser fails, as trtexec's does
    run = subprocess.run(build, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "trtexec failed" in run.stderr, run.stderr
    assert "Failed to parse onnx file" in run.stdout
    for stale in ("model.engine", "model.engine.partial", "engine_layers.json", "engine_layers.txt"):
        assert not (art / stale).exists(), stale
    assert (art / "timing.cache").read_text() == cache               # trtexec writes the cache only after a build


def test_build_sh_starts_a_fresh_timing_cache_for_another_board_or_tensorrt(artifact, tmp_path):
    """trtexec 10.3+ uses a timing cache whatever device wrote it (the stand-in does too), so build_engine.sh keeps
    timing.cache.stamp (board model or GPU name, TensorRT version) and deletes a cache whose stamp differs or is
    missing before trtexec runs."""
    precision, workdir, _ = artifact
    if precision != "fp32":
        pytest.skip("one artifact is enough")
    art = copied_artifact(workdir, tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # nvidia-smi --query-gpu=name --format=csv,noheader: one line per GPU; a Jetson's device tree names the board
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H200'\necho 'NVIDIA H200'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    tree = "/proc/device-tree/model"
    board = open(tree).read().replace("\0", "") if os.access(tree, os.R_OK) else "NVIDIA H200"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cache, stamp = art / "timing.cache", art / "timing.cache.stamp"

    def build(release):
        fake, log = fake_trtexec(tmp_path, release)
        run = subprocess.run([str(art / "build_engine.sh"), "--trtexec", str(fake), "--workspace", "512"],
                             capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout, (tmp_path / "args.cache").read_text()     # what the stand-in loaded

    cache.write_text("tactics measured on another board by TensorRT 10.3.0\n")
    stamp.write_text("NVIDIA Jetson AGX Orin Developer Kit, TensorRT 10.3.0\n")
    out, loaded = build("10.3.0")
    assert "NVIDIA Jetson AGX Orin Developer Kit, TensorRT 10.3.0; starting a new timing cache" in out
    assert loaded == "" and cache.read_text() == "tactics measured on this board by TensorRT 10.3.0\n"
    assert stamp.read_text() == f"{board}, TensorRT 10.3.0\n"
    out, loaded = build("10.3.0")                                      # same board and TensorRT: reused
    assert "new timing cache" not in out and loaded == "tactics measured on this board by TensorRT 10.3.0\n"
    out, loaded = build("10.16.0")                                     # another TensorRT
    assert "starting a new timing cache" in out and loaded == "" and stamp.read_text().endswith("TensorRT 10.16.0\n")
    stamp.unlink()                                                     # a cache nobody can place
    out, loaded = build("10.16.0")
    assert "an unknown board; starting a new timing cache" in out and loaded == "" and stamp.is_file()


def test_build_logic_helpers(tmp_path):
    mod = load_build_module()
    assert mod.parse_version("10.3.0.26") == (10, 3, 0) and mod.parse_version("8.6.2.3") == (8, 6, 2)
    assert mod.parse_version("8602") == (8, 6, 2) and mod.parse_version("8503") == (8, 5, 3)   # 8: M*1000+m*100+p
    assert mod.parse_version("100300") == (10, 3, 0) and mod.parse_version("101600") == (10, 16, 0)
    assert mod.parse_version("110100") == (11, 1, 0)
    with pytest.raises(ValueError):
        mod.parse_version("86")
    for release, precision in EXPECTED_SH:
        mode, words = EXPECTED_SH[(release, precision)]
        if mode == "refused":
            with pytest.raises(mod.BuildRefused, match=words) as info:
                mod.build_mode(TRT_RELEASES[release][0], precision)
            assert "\n" not in str(info.value)
        else:
            assert mod.build_mode(TRT_RELEASES[release][0], precision) == mode, (release, precision)
    assert mod.fit_workspace(2048, 3600, log=lambda m: None) == 900       # Orin Nano 4GB: a quarter of MemTotal
    assert mod.fit_workspace(2048, 62000, log=lambda m: None) == 2048
    assert mod.fit_workspace(2048, None, log=lambda m: None) == 2048
    (tmp_path / "meminfo").write_text("MemTotal:        7964584 kB\nMemFree:          123 kB\n")
    assert mod.memory_total_mib(tmp_path / "meminfo") == 7777 and mod.memory_total_mib(tmp_path / "none") is None


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
    assert check_onnx(onnx_model) == []
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
    import torch
    from torch._export.serde.schema import SCHEMA_VERSION  # what the device's torch is compared with
    assert found["schema_version"] == "{}.{}".format(*SCHEMA_VERSION) and found["torch_version"] == torch.__version__
    assert (tmp_path / "model.pt2").stat().st_size > 0


def fake_builder_tensorrt(version: str, seen: dict):
    """A stand-in 'tensorrt' of ``version`` with what build_engine() calls, holding that release's rules:
    - NetworkDefinitionCreationFlag (include/NvInfer.h): 8.6 {EXPLICIT_BATCH: 0, EXPLICIT_PRECISION: 1}; 10.x
      {EXPLICIT_BATCH: 0 (ignored), STRONGLY_TYPED: 1}; 11.1 {STRONGLY_TYPED: 0 (deprecated, ignored)}, no
      EXPLICIT_BATCH; 8.6's ONNX parser refuses a network without EXPLICIT_BATCH (onnx-tensorrt release/8.6-GA
      ModelImporter.cpp) and checks no upper opset bound (same file: it warns only below opset 7); a file that is no
      ONNX model fails parseFromFile;
    - build_serialized_network returns None when the build fails (IBuilder::buildSerializedNetwork, NvInfer.h);
    - BuilderFlag: 11.x has no FP16, INT8, PREFER/OBEY_PRECISION_CONSTRAINTS; a strongly typed 10.x network fails
      the build with FP16/INT8 set ('condition: !config.getFlag(BuilderFlag::kFP16)', NVIDIA/TensorRT#4253);
    - IBuilderConfig::setTimingCache returns false for a cache of another device (include/NvInfer.h), here a blob
      that does not start with this device's tag;
    - the inspector's JSON is LAYER_INFO when the config asked for DETAILED verbosity."""
    release = tuple(int(p) for p in version.split(".")[:3])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    creation = ({"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1} if release < (10,) else
                {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if release < (11,) else {"STRONGLY_TYPED": 0})
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    precision_flags = " FP16 INT8 PREFER_PRECISION_CONSTRAINTS OBEY_PRECISION_CONSTRAINTS" if release < (11,) else ""
    trt.BuilderFlag = enum.Enum("BuilderFlag", "TF32 GPU_FALLBACK" + precision_flags)
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY DETAILED NONE")
    trt.LayerInformationFormat = enum.Enum("LayerInformationFormat", "ONELINE JSON")
    trt.DeviceType = enum.Enum("DeviceType", "GPU DLA")
    device_tag = b"this-device:"

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return device_tag + b"tactics"

    class Config:
        profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
        default_device_type = trt.DeviceType.GPU

        def __init__(self):
            self.flags, self.cleared, self.cache = set(), set(), None
            seen["config"] = self

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.cleared.add(flag)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.data and not cache.data.startswith(device_tag) and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Network:
        def __init__(self, flags):
            self.flags = flags

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            seen["network_flags"] = flags
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            strongly = "STRONGLY_TYPED" in creation and network.flags & (1 << creation["STRONGLY_TYPED"])
            if strongly and release < (11,) and {f.name for f in config.flags} & {"FP16", "INT8"}:
                seen["error"] = "API Usage Error (Parameter check failed, condition: !config.getFlag(kFP16))"
                return None
            return b"plan"

    class Parser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            if release < (10,) and not self.network.flags & (1 << creation["EXPLICIT_BATCH"]):
                self.errors.append("This version of the ONNX parser only supports TensorRT INetworkDefinitions with "
                                   "an explicit batch dimension")
            try:
                onnx.load(path)
            except Exception:
                self.errors.append("Failed to parse ONNX model")
            return not self.errors

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

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

    trt.Builder, trt.Runtime, trt.OnnxParser = Builder, Runtime, Parser
    return trt


@pytest.mark.parametrize("release, precision", list(EXPECTED_SH))
def test_python_build_per_tensorrt_release(tmp_path, monkeypatch, release, precision):
    """build_engine() creates the network each release needs (EXPLICIT_BATCH on 8.6, STRONGLY_TYPED for FP16/INT8 on
    10.x, nothing on 11.x), sets no precision flag, and refuses in one line what build_engine.sh refuses."""
    seen = {}
    fake = fake_builder_tensorrt(release, seen)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    mod = load_build_module()
    onnx.save(topk_model(opset=19 if precision == "int8" else 17), str(tmp_path / "model.onnx"))
    (tmp_path / "engine_layers.txt").write_text("an earlier engine\n")
    messages = []
    mode, words = EXPECTED_SH[(release, precision)]
    if mode == "refused":
        with pytest.raises(mod.BuildRefused, match=words):
            mod.build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", precision, log=messages.append)
        assert "network_flags" not in seen and not (tmp_path / "model.engine").exists()
        return
    engine = mod.build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", precision,
                              timing_cache=tmp_path / "timing.cache", log=messages.append)
    assert engine.read_bytes() == b"plan" and "error" not in seen      # the stand-in parsed and built it
    flags = seen["network_flags"]
    names = {f.name for f in fake.NetworkDefinitionCreationFlag if flags & (1 << f.value)}
    expected = {"EXPLICIT_BATCH"} if release.startswith("8.") else set()
    if mode == "strongly typed" and release.startswith("10."):
        expected.add("STRONGLY_TYPED")
    assert names == expected, names
    config = seen["config"]
    assert not {f.name for f in config.flags} & {"FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"}
    assert config.default_device_type == fake.DeviceType.GPU and "TF32" in {f.name for f in config.cleared}
    assert config.profiling_verbosity == fake.ProfilingVerbosity.DETAILED
    assert any(f"{mode} build" in m for m in messages)
    assert json.loads((tmp_path / "engine_layers.json").read_text()) == LAYER_INFO
    report = (tmp_path / "engine_layers.txt").read_text()
    assert "an earlier engine" not in report and "[router]" in report
    assert any("router layers with INT8 inputs: 0 of 1" in m for m in messages)


def test_python_build_refuses_dla_and_old_releases_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_builder_tensorrt("10.3.0", {}))
    mod = load_build_module()
    onnx.save(topk_model(), str(tmp_path / "model.onnx"))
    common = ["--onnx", str(tmp_path / "model.onnx"), "--engine", str(tmp_path / "model.engine"),
              "--timing-cache", str(tmp_path / "timing.cache")]
    assert mod.main([*common, "--precision", "fp16", "--dla-core", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {mod.DLA_REFUSAL}\n" and not (tmp_path / "model.engine").exists()
    with pytest.raises(be.UserError) as refused:                      # biformer-export --dla-core says the same
        targets.check_options("jetson", "fp16", {"dla_core": 0})
    assert str(refused.value) == f"--dla-core: {mod.DLA_REFUSAL}"
    monkeypatch.setitem(sys.modules, "tensorrt", fake_builder_tensorrt("8.6.2", {}))
    assert mod.main([*common, "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "JetPack 6.0" in err and "--fp32" in err
    assert mod.main([*common, "--precision", "fp32"]) == 0 and (tmp_path / "model.engine").is_file()


def test_python_build_replaces_a_timing_cache_of_another_device(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_builder_tensorrt("10.3.0", seen))
    mod = load_build_module()
    onnx.save(topk_model(), str(tmp_path / "model.onnx"))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"orin-agx:tactics")          # another board's cache: setTimingCache returns false
    messages = []
    mod.build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", "fp16", timing_cache=cache,
                     log=messages.append)
    assert any("another device or TensorRT version" in m for m in messages)
    assert seen["config"].cache.data == b"" and cache.read_bytes() == b"this-device:tactics"
    messages.clear()
    mod.build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", "fp16", timing_cache=cache,
                     log=messages.append)                     # this device's cache is used as it is
    assert seen["config"].cache.data == b"this-device:tactics" and not any("another" in m for m in messages)


def test_python_build_leaves_no_engine_after_a_failed_rebuild(tmp_path, monkeypatch):
    """build_engine() removes the earlier engine and layer report before it parses, and writes the plan to
    model.engine.partial renamed into place: a parse or build failure leaves no engine."""
    seen = {}
    fake = fake_builder_tensorrt("10.3.0", seen)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    mod = load_build_module()
    onnx_path, engine = tmp_path / "model.onnx", tmp_path / "model.engine"
    onnx.save(topk_model(), str(onnx_path))
    quiet = {"log": lambda m: None}
    assert mod.build_engine(onnx_path, engine, "fp16", **quiet).read_bytes() == b"plan"
    onnx_path.write_bytes(b"not an ONNX model")
    with pytest.raises(RuntimeError, match="cannot parse"):
        mod.build_engine(onnx_path, engine, "fp16", **quiet)
    assert not engine.exists() and not (tmp_path / "engine_layers.json").exists()
    onnx.save(topk_model(), str(onnx_path))
    mod.build_engine(onnx_path, engine, "fp16", **quiet)
    monkeypatch.setattr(fake.Builder, "build_serialized_network", lambda self, network, config: None)
    with pytest.raises(RuntimeError, match="engine build failed"):
        mod.build_engine(onnx_path, engine, "fp16", **quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_python_build_refuses_a_bad_workspace_or_timing_cache_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_builder_tensorrt("10.3.0", {}))
    mod = load_build_module()
    onnx.save(topk_model(), str(tmp_path / "model.onnx"))
    common = ["--onnx", str(tmp_path / "model.onnx"), "--engine", str(tmp_path / "model.engine")]
    for workspace in ("0", "-5", "lots"):
        with pytest.raises(SystemExit) as exited:
            mod.main([*common, "--workspace", workspace])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.count("\n") == 1 and "--workspace" in err, err
    (tmp_path / "caches").mkdir()
    for cache, words in ((tmp_path / "caches", "is a directory"), (tmp_path / "none" / "t.cache", "does not exist")):
        assert mod.main([*common, "--timing-cache", str(cache)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "model.engine").exists()
    assert mod.main([*common, "--timing-cache", str(tmp_path / "caches" / "t.cache")]) == 0
    assert (tmp_path / "caches" / "t.cache").read_bytes() == b"this-device:tactics"


def fake_torch_tensorrt_compile(version: str, seen: dict):
    """torch_tensorrt.dynamo.compile of ``version`` as far as typing goes (pytorch/TensorRT
    py/torch_tensorrt/dynamo/_compiler.py at the tags): 2.5 takes enabled_precisions and has no use_explicit_typing;
    2.6-2.12 take both and raise AssertionError when use_explicit_typing is set with enabled_precisions other than
    {float32}; 2.13 takes neither and swallows unknown keywords in **kwargs."""
    import torch
    release = tuple(int(p) for p in version.split(".")[:2])
    f32 = {torch.float32}

    def compile_25(program, inputs=None, *, enabled_precisions=f32, workspace_size=0, min_block_size=5, **kwargs):
        seen.update(kwargs, enabled_precisions=enabled_precisions)
        return program

    def compile_26(program, inputs=None, *, enabled_precisions=f32, workspace_size=0, min_block_size=5,
                   use_explicit_typing=release >= (2, 10), **kwargs):
        if use_explicit_typing and set(enabled_precisions) != f32:
            raise AssertionError("use_explicit_typing was set to True, however found that enabled_precisions was "
                                 "also specified")
        seen.update(kwargs, enabled_precisions=enabled_precisions, use_explicit_typing=use_explicit_typing)
        return program

    def compile_213(program, inputs=None, *, workspace_size=0, min_block_size=5, **kwargs):
        seen.update(kwargs, strongly_typed=True)      # _TRTInterpreter v2.13.0: STRONGLY_TYPED always
        return program

    return compile_25 if release < (2, 6) else compile_26 if release < (2, 13) else compile_213


@pytest.mark.parametrize("version", ["2.4.1", "2.5.0", "2.6.0", "2.9.0", "2.12.1", "2.13.0"])
def test_torch_tensorrt_typing_per_release(version):
    """The typing arguments build_engine.py passes keep every float layer FP32 and the Q/DQ as the program states:
    no FP16 in enabled_precisions on 2.5, explicit typing on 2.6-2.12, nothing on 2.13 (where a stale argument would
    be swallowed silently); before 2.5 there is no quantize_op converter: refused in one line."""
    import torch
    mod = load_build_module()
    if version == "2.4.1":
        with pytest.raises(mod.BuildRefused, match="quantize_op.*2.5"):
            mod.torch_tensorrt_typing(version)
        return
    typing = mod.torch_tensorrt_typing(version)
    if "enabled_precisions" in typing:
        typing["enabled_precisions"] = {getattr(torch, n) for n in typing["enabled_precisions"]}
    seen = {}
    fake_torch_tensorrt_compile(version, seen)("program", inputs=[], min_block_size=1, workspace_size=1, **typing)
    expected = {"2.5.0": {"enabled_precisions": {torch.float32, torch.int8}},
                "2.13.0": {"strongly_typed": True}}.get(version, {"enabled_precisions": {torch.float32},
                                                                   "use_explicit_typing": True})
    assert seen == expected


def saved_program(path, schema=None):
    """A small real model.pt2 (torch.export.save); ``schema`` (major, minor) rewrites what it states."""
    import zipfile

    import torch

    class AddOne(torch.nn.Module):
        def forward(self, x):
            return x + 1

    torch.export.save(torch.export.export(AddOne(), (torch.zeros(2),)), str(path))
    if schema is not None:
        with zipfile.ZipFile(path) as src:
            entries = {n: src.read(n) for n in src.namelist()}
        for name in entries:
            if name.endswith("models/model.json"):
                program = json.loads(entries[name])
                program["schema_version"] = {"major": schema[0], "minor": schema[1]}
                entries[name] = json.dumps(program).encode()
        with zipfile.ZipFile(path, "w") as dst:
            for name, data in entries.items():
                dst.writestr(name, data)
    return path


def test_pt2_schema_is_read_from_the_file_and_compared_before_loading(tmp_path):
    """model.pt2 states the ExportedProgram schema torch.export.save wrote; build_engine.py --torch-tensorrt refuses
    in one line a program this torch's deserializer would refuse (another schema major) or may misread (a newer
    minor), before importing Torch-TensorRT or touching the GPU."""
    import torch
    from torch._export.serde.schema import SCHEMA_VERSION
    mod = load_build_module()
    facts = mod.pt2_facts(saved_program(tmp_path / "model.pt2"))
    assert facts == {"schema_version": f"{SCHEMA_VERSION[0]}.{SCHEMA_VERSION[1]}", "torch_version": torch.__version__}
    assert mod.pt2_schema_problem(facts, tuple(SCHEMA_VERSION), torch.__version__) is None
    assert mod.pt2_schema_problem(facts, (SCHEMA_VERSION[0], SCHEMA_VERSION[1] + 1), "2.14") is None
    assert "install torch" in mod.pt2_schema_problem(facts, (SCHEMA_VERSION[0] - 1, 99), "2.5.0")
    assert "install torch" in mod.pt2_schema_problem(facts, (SCHEMA_VERSION[0], SCHEMA_VERSION[1] - 1), "2.12.0")
    (tmp_path / "not.pt2").write_bytes(b"PK garbage")
    with pytest.raises(ValueError, match="cannot read"):
        mod.pt2_facts(tmp_path / "not.pt2")

    art = tmp_path / "art"
    art.mkdir()
    script = art / "build_engine.py"
    script.write_text(btrt_export.render_template("build_engine.py", model_name="m", precision="int8",
                                                  input_name="images", input_shape="1x3x8x8", workspace_mib=256))
    saved_program(art / "model.pt2", schema=(SCHEMA_VERSION[0] + 1, 0))
    probe = ("import runpy, sys; sys.modules['torch_tensorrt'] = None; sys.argv = [sys.argv[1], '--torch-tensorrt'];"
             " runpy.run_path(sys.argv[0], run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", probe, str(script)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"schema {SCHEMA_VERSION[0] + 1}.0" in run.stderr and "./build_engine.sh" in run.stderr


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


def test_layer_report_prefers_the_datatype_over_the_format_text():
    """A format text names a layout ('Row major linear FP32 format') that need not be the tensor's datatype: where a
    datatype key states one, it decides; the format is read only where none does."""
    mod = load_build_module()
    half = {"Name": "q", "Format": "Row major linear FP32 format (kLINEAR)", "Datatype": "Half"}
    assert mod.tensor_precision(half) == "fp16"
    assert mod.tensor_precision({"Name": "q", "Format": "Row major linear FP32 format (kLINEAR)"}) == "fp32"
    assert mod.tensor_precision({"Format": "Channel major FP16 format", "DataType": "?"}) == "fp16"
    assert mod.tensor_precision({"Name": "q", "Dimensions": [1, 4]}) == "?"


def test_layer_report_counts_fused_layers_with_router_ops_apart(tmp_path):
    """A Myelin layer '{ForeignNode[first...last]}' whose name shows a router op also holds other ops: its INT8
    inputs are reported apart, never as router layers with INT8 inputs."""
    mod = load_build_module()
    info = {"Layers": [
        {"Name": "{ForeignNode[/model/stages.0.0/attn/qkv/MatMul.../model/stages.0.0/attn/router/Softmax]}",
         "LayerType": "Myelin", "Inputs": [{"Name": "x", "Format/Datatype": "Int8"}]},
        {"Name": "/model/stages.0.0/attn/router/TopK", "LayerType": "TopK",
         "Inputs": [{"Name": "a", "Format/Datatype": "Row major linear FP32 format (kLINEAR)"}]}]}
    rows, summary = mod.layer_report(info)
    assert [(r["router"], r["fused_router"]) for r in rows] == [(False, True), (True, False)]
    assert summary["router_layers"] == 1 and summary["router_layers_with_int8_inputs"] == 0
    assert summary["fused_router_layers"] == summary["fused_router_layers_with_int8_inputs"] == 1
    assert summary["router_island"] == "fp32"
    text = mod.render_layer_report(rows, summary)
    assert "router layers with INT8 inputs: 0 of 1" in text and "[fused, contains router ops]" in text
    assert "1 fused layers contain router ops" in text
    messages = []
    mod.write_layer_report(json.dumps(info), tmp_path, log=messages.append)
    assert not any(m.startswith("warning") for m in messages) and any("fused layers" in m for m in messages)


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


CUDA_MISSING = ("cuda-python is not installed (pip install cuda-python; on a Jetson the jetson extra with its "
                "JetPack's constraints file)")


def test_cuda_unavailable_reasons(monkeypatch):
    monkeypatch.setattr(btrt, "load_cudart", lambda: None)
    assert btrt.cuda_unavailable() == CUDA_MISSING
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
    assert targets.runtime_unavailable("tensorrt") == CUDA_MISSING


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


# --- the Jetson's power mode in benchmark reports ---------------------------------------------------------------------

def test_bench_records_the_jetson_power_mode_and_gpu_clock(tmp_path, monkeypatch):
    """biformer-bench states the power mode by the name `nvpmodel -q` prints (its numbers differ by board: mode 0 is
    MAXN on an AGX Orin, 15W on an Orin Nano) and whether jetson_clocks pinned the GPU clock; nothing off a Jetson."""
    from biformer_edge.bench import report
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert report.jetson_power(tmp_path / "devfreq") is None
    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "nvpmodel"
    tool.write_text("#!/bin/sh\n[ \"$1\" = -q ] && printf 'NV Power Mode: 15W\\n0\\n'\n")
    tool.chmod(0o755)
    gpu = tmp_path / "devfreq" / "17000000.gpu"
    gpu.mkdir(parents=True)
    for name, hz in (("cur", 624750000), ("min", 306000000), ("max", 624750000)):
        (gpu / f"{name}_freq").write_text(f"{hz}\n")
    (tmp_path / "devfreq" / "17000000.nvdla0").mkdir()   # not the GPU
    assert report.jetson_power(tmp_path / "devfreq") == "power mode NV Power Mode: 15W 0; GPU 624 MHz, DVFS 306-624 MHz"
    (gpu / "min_freq").write_text("624750000\n")
    assert report.jetson_power(tmp_path / "devfreq").endswith("GPU 624 MHz, pinned (jetson_clocks)")
    meta = {"threads": 1, "runs": 1, "warmup": 0, "cpu": "ARMv8", "cores": 6, "load_start": "0", "load_end": "0",
            "versions": "", "weights": "", "jetson_power": "power mode NV Power Mode: MAXN 0; GPU clock unknown"}
    assert "Jetson: power mode NV Power Mode: MAXN 0; GPU clock unknown" in report.header_lines(meta)
