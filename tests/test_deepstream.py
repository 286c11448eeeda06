"""biformer-export --target jetson --deepstream: the graph DeepStream's Gst-nvinfer runs and the deepstream/ files.

What DeepStream accepts is taken from NVIDIA's DeepStream 6.3 sources (the newest whose nvinfer source is public)
and NVIDIA-AI-IOT's sample configs (deepstream_tao_apps for DeepStream 7.0-8.0, deepstream_python_apps 1.2.0 for
7.1); each rule below names its file. DeepStream itself cannot run here (no GPU, no DeepStream): what a test cannot
show is what nvinfer does at run time, and docs/deepstream.md says so.
"""
import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from biformer_edge.cli import export_main, parity_main
from biformer_edge.contract import (
    DEEPSTREAM_FILES,
    DS_APP_CONFIG,
    DS_INFER_CONFIG,
    DS_LABELS,
    DS_PIPELINE,
    ENGINE_FILE,
    INPUT_NAME,
    MANIFEST,
    ONNX_FILE,
    OUTPUT_NAME,
    PARITY_JSON,
    PROBABILITIES_NAME,
    ROUTING_PREFIX,
    graph_input,
    graph_probabilities,
    resize_bilinear,
)
from biformer_edge.data.synthetic import CLASSES
from tests.helpers import SIZE, one_error_line, run_cli

H = W = int(SIZE[-1])

# gstnvinfer_property_parser.h (DeepStream 6.3): every key of the [property] group nvinfer parses. A key outside it
# is reported as unknown and ignored, so a misspelt key would silently not apply.
NVINFER_PROPERTY_KEYS = set("""
parse-func gie-unique-id process-mode interval labelfile-path gpu-id secondary-reinfer-interval output-tensor-meta
disable-output-host-copy auto-inc-mem max-gpu-mem-per enable-dla use-dla-core batch-size tensor-meta-pool-size
network-mode model-engine-file int8-calib-file workspace-size output-blob-names is-classifier network-type
force-implicit-batch-dim infer-dims output-io-formats layer-device-precision model-color-format net-scale-factor
offsets mean-file maintain-aspect-ratio symmetric-padding scaling-filter scaling-compute-hw network-input-order
input-tensor-from-meta custom-lib-path parse-bbox-func-name parse-bbox-instance-mask-func-name
engine-create-func-name parse-classifier-func-name custom-network-config model-file proto-file uff-file
uff-input-order input-dims uff-input-dims uff-input-blob-name tlt-encoded-model tlt-model-key onnx-file
num-detected-classes enable-dbscan cluster-mode crop-objects-to-roi-boundary classifier-type classifier-threshold
classifier-async-mode segmentation-threshold segmentation-output-order output-instance-mask input-object-min-width
input-object-min-height input-object-max-width input-object-max-height operate-on-gie-id operate-on-class-ids
filter-out-class-ids""".split())
# nvdsinfer_context.h (6.3) NvDsInferNetworkMode: FP32, INT8, FP16 in that order.
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
# nvdsinfer.h (6.3) NvDsInferDataType, as pyds 1.2.0 (DeepStream 7.1) binds it: FLOAT, HALF, INT8, INT32. Any other
# binding type makes TrtEngine::getLayerInfo fail ("Unknown data type for bound layer", nvdsinfer_model_builder.cpp).
NVDSINFER_TYPES = {"FLOAT", "HALF", "INT8", "INT32"}
# deepstream-app's groups and the keys each one parses, for the groups the artifact's config uses (DeepStream 6.3
# apps-common deepstream_config_file_parser.h / .c and deepstream-app's deepstream_app_config_parser.c macros).
DEEPSTREAM_APP_KEYS = {
    "application": {"enable-perf-measurement", "perf-measurement-interval-sec"},
    "tiled-display": {"enable", "rows", "columns", "width", "height", "gpu-id", "nvbuf-memory-type"},
    "source0": {"enable", "type", "uri", "num-sources", "gpu-id", "nvbuf-memory-type"},
    "streammux": {"gpu-id", "live-source", "batch-size", "batched-push-timeout", "width", "height"},
    "primary-gie": {"enable", "plugin-type", "gpu-id", "batch-size", "gie-unique-id", "config-file"},
    "segvisual": {"enable", "gpu-id", "batch-size", "width", "height", "nvbuf-memory-type"},
    "sink0": {"enable", "type", "container", "codec", "enc-type", "sync", "bitrate", "output-file", "source-id",
              "gpu-id"},
    "sink1": {"enable", "type", "container", "codec", "enc-type", "sync", "bitrate", "output-file", "source-id",
              "gpu-id"},
    "tests": {"file-loop"},
}


def key_file(path: Path) -> configparser.ConfigParser:
    """``path`` read as GLib's GKeyFile reads it (nvinfer: g_key_file_load_from_file with G_KEY_FILE_NONE): '=' is
    the only separator, '#' starts a comment only at the start of a line (';' does not, and nothing is an inline
    comment), keys are case-sensitive, no interpolation, and a key given twice is an error here (our files never do
    it). Lists are ';'-separated values, split by the caller."""
    parser = configparser.ConfigParser(delimiters=("=",), comment_prefixes=("#",), inline_comment_prefixes=None,
                                       interpolation=None, strict=True, empty_lines_in_values=False)
    parser.optionxform = str
    parser.read_string(path.read_text())
    return parser


def glib_python() -> str | None:
    """A Python with GLib's introspection bindings (gi), to parse with GLib's own GKeyFile; None when none."""
    probe = "import gi; gi.require_version('GLib', '2.0'); from gi.repository import GLib"
    for python in (sys.executable, "/usr/bin/python3"):
        if python and Path(python).exists() and subprocess.run([python, "-c", probe], capture_output=True,
                                                               env={**os.environ, "PYTHONPATH": ""}).returncode == 0:
            return python
    return None


def export(tmp_path_factory, name: str, *args) -> Path:
    out = tmp_path_factory.mktemp(name) / "demo"
    assert run_cli(export_main, ["--target", "jetson", "--deepstream", *SIZE, *args, "--output", out]) == 0
    return out


@pytest.fixture(scope="module")
def fp16(tmp_path_factory):
    return export(tmp_path_factory, "ds16", "--fp16")


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    return export(tmp_path_factory, "ds8", "--int8")


def property_group(artifact: Path) -> dict:
    return dict(key_file(artifact / DS_INFER_CONFIG)["property"])


def graph(artifact: Path):
    return onnx.load(str(artifact / ONNX_FILE))


def tensors(values) -> dict:
    return {v.name: (onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                     [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values}


# ------------------------------------------------------------------------------------------------------ the config
def test_infer_config_parses_as_a_key_file_and_matches_the_graph(fp16):
    prop = property_group(fp16)
    unknown = set(prop) - NVINFER_PROPERTY_KEYS
    assert not unknown, f"keys nvinfer does not parse: {unknown}"
    proto = graph(fp16)
    inputs, outputs = tensors(proto.graph.input), tensors(proto.graph.output)
    # infer-dims is c;h;w of the network input (an integer list of length 3, gstnvinfer_property_parser.cpp)
    assert [int(v) for v in prop["infer-dims"].split(";")] == inputs[INPUT_NAME][1][1:] == [3, H, W]
    assert int(prop["batch-size"]) == inputs[INPUT_NAME][1][0] == 1
    # every output-blob-name is a graph output; the segmentation parser reads the first output binding
    # (SegmentPostprocessor::fillSegmentationOutput: outputLayers[0], as float, CHW with segmentation-output-order 0)
    blobs = prop["output-blob-names"].split(";")
    assert blobs == [PROBABILITIES_NAME] and list(outputs)[0] == PROBABILITIES_NAME
    assert outputs[PROBABILITIES_NAME] == ("FLOAT", [1, int(prop["num-detected-classes"]), H, W])
    assert int(prop["num-detected-classes"]) == len(CLASSES)
    assert prop["segmentation-output-order"] == "0" and float(prop["segmentation-threshold"]) == 0.0
    # normalisation folded into the graph: one scalar net-scale-factor could not express a per-channel std
    assert float(prop["net-scale-factor"]) == 1.0 and [float(v) for v in prop["offsets"].split(";")] == [0, 0, 0]
    assert prop["model-color-format"] == "0" and prop["network-type"] == "2"
    assert int(prop["network-mode"]) == NETWORK_MODES["fp16"]
    # relative paths resolve against the config's folder (get_absolute_file_path)
    folder = (fp16 / DS_INFER_CONFIG).parent
    assert (folder / prop["model-engine-file"]).resolve() == (fp16 / ENGINE_FILE).resolve()
    assert (folder / prop["onnx-file"]).resolve() == (fp16 / ONNX_FILE).resolve()
    labels = (folder / prop["labelfile-path"]).read_text().splitlines()
    assert labels == list(CLASSES) and (folder / prop["labelfile-path"]).resolve() == (fp16 / DS_LABELS).resolve()
    assert not any(";" in name for name in labels)   # parseLabelsFile splits a line at ';'


def test_graph_io_is_what_nvinfer_binds(fp16, int8):
    for artifact in (fp16, int8):
        proto = graph(artifact)
        inputs, outputs = tensors(proto.graph.input), tensors(proto.graph.output)
        assert inputs == {INPUT_NAME: ("FLOAT", [1, 3, H, W])}   # nvinfer writes float pixels into it
        assert all(kind in NVDSINFER_TYPES for kind, _ in outputs.values()), outputs
        routing = {n: v for n, v in outputs.items() if n.startswith(ROUTING_PREFIX)}
        assert len(routing) == 4 and {kind for kind, _ in routing.values()} == {"INT32"}
        # probabilities first (the binding nvinfer's segmentation parser reads), then the model-resolution logits
        # parity compares (nvinfer copies every output binding to the host and parses only the first)
        assert list(outputs) == [PROBABILITIES_NAME, OUTPUT_NAME, *routing]
        assert outputs[PROBABILITIES_NAME] == ("FLOAT", [1, len(CLASSES), H, W])
        assert outputs[OUTPUT_NAME] == ("FLOAT", [1, len(CLASSES), H // 4, W // 4])
        manifest = json.loads((artifact / MANIFEST).read_text())
        assert manifest["graph_io"]["output_size"] == [H, W] and manifest["checks"]["deepstream"]["ok"]


def test_network_mode_follows_the_precision(int8):
    assert int(property_group(int8)["network-mode"]) == NETWORK_MODES["int8"]


def test_glib_reads_the_configs_as_configparser_does(fp16):
    python = glib_python()
    if python is None:
        pytest.skip("no Python with GLib's gi bindings here (apt install python3-gi)")
    script = ("import json, sys, gi; gi.require_version('GLib', '2.0'); from gi.repository import GLib\n"
              "out = {}\n"
              "for path in sys.argv[1:]:\n"
              "    kf = GLib.KeyFile(); kf.load_from_file(path, GLib.KeyFileFlags.NONE)\n"
              "    out[path] = {g: {k: kf.get_value(g, k) for k in kf.get_keys(g)[0]} for g in kf.get_groups()[0]}\n"
              "    if kf.has_group('property'):\n"
              "        out[path]['lists'] = [kf.get_integer_list('property', 'infer-dims'),\n"
              "                              kf.get_double_list('property', 'offsets'),\n"
              "                              kf.get_string_list('property', 'output-blob-names')]\n"
              "print(json.dumps(out))\n")
    paths = [str(fp16 / DS_INFER_CONFIG), str(fp16 / DS_APP_CONFIG)]
    proc = subprocess.run([python, "-c", script, *paths], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    glib = json.loads(proc.stdout)
    for path in paths:
        ours = {g: dict(key_file(Path(path))[g]) for g in key_file(Path(path)).sections()}
        assert {g: v for g, v in glib[path].items() if g != "lists"} == ours
    assert glib[paths[0]]["lists"] == [[3, H, W], [0.0, 0.0, 0.0], [PROBABILITIES_NAME]]


def test_deepstream_app_config_uses_known_keys_and_the_artifact(fp16):
    app = key_file(fp16 / DS_APP_CONFIG)
    assert set(app.sections()) == set(DEEPSTREAM_APP_KEYS)
    for group in app.sections():
        unknown = set(app[group]) - DEEPSTREAM_APP_KEYS[group]
        assert not unknown, f"[{group}] keys deepstream-app does not parse: {unknown}"
    folder = (fp16 / DS_APP_CONFIG).parent
    assert (folder / app["primary-gie"]["config-file"]).resolve() == (fp16 / DS_INFER_CONFIG).resolve()
    assert app["primary-gie"]["plugin-type"] == "0"   # nvinfer, not nvinferserver
    # nvsegvisual's size is the segmentation output size (deepstream_tao_apps configs/app/seg_app_config.yml)
    assert (int(app["segvisual"]["width"]), int(app["segvisual"]["height"])) == (W, H)
    assert app["segvisual"]["enable"] == "1"
    batch = property_group(fp16)["batch-size"]
    assert app["streammux"]["batch-size"] == app["primary-gie"]["batch-size"] == batch


def test_labels_fall_back_to_class_numbers_and_refuse_separators():
    from biformer_edge.backends.tensorrt.deepstream import class_names
    from biformer_edge.errors import UserError

    class Model:
        num_classes, spec = 3, None
    assert class_names(Model()) == ["class_0", "class_1", "class_2"]
    Model.spec = type("Spec", (), {"class_names": ("road", "side;walk", "sky")})()
    with pytest.raises(UserError, match="cannot be a DeepStream label"):
        class_names(Model())


# ------------------------------------------------------------------------------------------------------- the graph
def test_resize_matches_torch_bilinear():
    import torch
    import torch.nn.functional as F
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    for size in ((20, 28), (17, 9), (5, 7)):
        want = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False).numpy()
        np.testing.assert_allclose(resize_bilinear(x, size), want, atol=1e-6)


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory):
    """The FP32 DeepStream graph of the demo model (the wrapper exported and finished as the jetson export does,
    without mixed precision): (model, flavour, ctx, path of model.onnx)."""
    from biformer_edge.backends.base import ExportContext
    from biformer_edge.backends.onnx.export import export_onnx
    from biformer_edge.backends.tensorrt.deepstream import DeepStreamFlavour
    from biformer_edge.models import create_model

    workdir = tmp_path_factory.mktemp("ds32")
    model = create_model("biformer_seg_demo")
    ctx = ExportContext(workdir=workdir, target="jetson", precision="fp32", input_shape=(1, 3, H, W))
    flavour = DeepStreamFlavour(model, ctx)
    export_onnx(flavour.graph, workdir / ONNX_FILE, ctx.input_shape)
    flavour.finish(workdir / ONNX_FILE)
    return model, flavour, ctx, workdir / ONNX_FILE


def test_fp32_graph_folds_normalisation_and_softmax(fp32_graph):
    """The FP32 DeepStream graph on pixels equals the FP32 model on normalised input: its logits, and its
    probabilities as contract.graph_probabilities computes them (onnxruntime runs the graph; the reference is
    PyTorch)."""
    import onnxruntime as ort
    import torch

    from biformer_edge.parity.inputs import parity_inputs

    model, _, ctx, path = fp32_graph
    x = parity_inputs(ctx.input_shape, None, 2)[0].reshape(-1, 3, H, W)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runs = [session.run([PROBABILITIES_NAME, OUTPUT_NAME], {INPUT_NAME: graph_input(b[None], ctx.graph_io)})
            for b in x]
    probabilities, logits = (np.concatenate(outputs) for outputs in zip(*runs))
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4)
    np.testing.assert_allclose(probabilities, graph_probabilities(want, ctx.graph_io), atol=2e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert sorted(p.relative_to(path.parent).as_posix() for p in (path.parent / "deepstream").iterdir()) == \
        sorted(DEEPSTREAM_FILES)


def test_graph_takes_the_image_pixels_as_they_are(fp32_graph):
    """The pixel convention itself, with nothing of biformer-edge between the image and the graph: render_scene's
    uint8 RGB image cast to float32 NCHW (what nvinfer feeds with net-scale-factor 1 and offsets 0) into the exported
    ONNX through onnxruntime gives the FP32 model's output on preprocess(image), the model's own preprocessing.
    (Parity cannot show this: its sessions convert x * std + mean with the constants the graph folds.)"""
    import onnxruntime as ort
    import torch

    from biformer_edge.data.synthetic import render_scene
    from biformer_edge.preprocess import preprocess

    model, _, _, path = fp32_graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (0, 1):
        image = render_scene(seed, (H, W))[0]
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        pixels = image.transpose(2, 0, 1)[None].astype(np.float32)
        logits, = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})
        with torch.no_grad():
            want = model(torch.from_numpy(preprocess(image, (H, W))[None])).numpy()
        np.testing.assert_allclose(logits, want, atol=1e-4)
        # the check has teeth: BGR pixels, or pixels scaled to 0..1, give another output
        bgr, = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels[:, ::-1])})
        unit, = session.run([OUTPUT_NAME], {INPUT_NAME: pixels / 255})
        assert np.abs(bgr - want).max() > 0.1 and np.abs(unit - want).max() > 0.1


def test_layer_report_counts_weights_onnxsim_folded(fp32_graph):
    """onnxsim folds 1/std into the stem conv's weight and a BatchNorm into the next conv's, leaving each weight a
    Constant node: the layer report counts them like initializers (every conv's weight has its module's size)."""
    from biformer_edge.backends.onnx.export import layer_precision

    _, flavour, _, path = fp32_graph
    rows = [r for r in layer_precision(onnx.load(str(path))) if r["op"] == "Conv"]
    assert rows and rows[0]["module"] == "model.backbone.downsample_layers.0.0"
    for row in rows:
        assert row["weight_params"] == flavour.graph.get_submodule(row["module"]).weight.numel(), row


def test_mixed_precision_calibrates_on_pixels(tmp_path):
    """AutoCast measures ranges by running the graph on ctx.calibration: for a DeepStream graph those are pixels."""
    from biformer_edge.backends.base import ExportContext
    from biformer_edge.backends.tensorrt.deepstream import DeepStreamFlavour
    from biformer_edge.backends.tensorrt.precision import synthetic_calibration
    from biformer_edge.models import create_model
    from biformer_edge.parity.inputs import parity_inputs

    model = create_model("biformer_seg_demo")
    normalised = parity_inputs((1, 3, H, W), None, 2)[0]
    # without calibration data: the scenes the plain export calibrates on (precision.synthetic_calibration), as pixels
    for given, want in ((None, synthetic_calibration((1, 3, H, W))), (lambda: normalised, normalised)):
        ctx = ExportContext(workdir=tmp_path, target="jetson", precision="fp16", input_shape=(1, 3, H, W),
                            calibration=given)
        DeepStreamFlavour(model, ctx)
        pixels = ctx.calibration()
        assert pixels.shape[1:] == (1, 3, H, W) and pixels.dtype == np.float32
        assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3 and pixels.max() > 100
        np.testing.assert_allclose(pixels, np.stack([graph_input(b, ctx.graph_io) for b in want]), atol=1e-3)


# ------------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("which", ["fp16", "int8"])
def test_parity_passes_on_the_deepstream_graph(which, request):
    """Parity compares the graph's model-resolution logits as for every artifact (what the thresholds were set on),
    and the probabilities' class map at the input size against the FP32 logits resized alike."""
    from biformer_edge import metrics as m
    from biformer_edge.parity.check import PIXEL_PROBABILITIES, load_reference
    from biformer_edge.targets import open_session

    artifact = request.getfixturevalue(which)
    manifest = json.loads((artifact / MANIFEST).read_text())
    assert manifest["parity"]["verdict"] == "pass"
    assert run_cli(parity_main, [artifact]) == 0   # again from the stored reference, as on the device
    report = json.loads((artifact / PARITY_JSON).read_text())
    assert PIXEL_PROBABILITIES in report["compared_as"] and "pixel threshold" in report["compared_as"]
    metrics = report["backends"]["onnxruntime"]["metrics"]
    assert metrics["pixel"] >= 0.98 and metrics["routing"] >= 0.75 and metrics["cosine"] >= 0.99
    assert metrics[PIXEL_PROBABILITIES] >= report["thresholds"]["pixel"]
    # the cosine is that of the logits output against the stored FP32 logits, nothing converted
    ref = load_reference(artifact, manifest)
    session = open_session("onnxruntime", artifact, manifest)
    runs = [session.run(batch) for batch in ref["inputs"]]
    logits = np.stack([r.logits for r in runs])
    assert logits.shape == ref["logits"].shape and logits.shape[-2:] == (H // 4, W // 4)
    assert metrics["cosine"] == pytest.approx(m.cosine(ref["logits"].reshape(logits.shape), logits), abs=1e-9)
    assert all(r.probabilities.shape == (1, len(CLASSES), H, W) for r in runs)


def test_parity_fails_on_wrong_probabilities_with_right_logits(fp16, tmp_path):
    """What keeps the probabilities honest: a graph whose logits are right but whose softmax runs over the wrong axis
    (its class map is not the logits') fails parity on pixel_probabilities alone."""
    from biformer_edge.parity.check import PIXEL_PROBABILITIES, evaluate, load_reference
    from biformer_edge.targets import load_profile

    copy = tmp_path / "broken"
    shutil.copytree(fp16, copy)
    proto = graph(copy)
    producers = {out: n for n in proto.graph.node for out in n.output}
    softmax = producers[PROBABILITIES_NAME]
    while softmax.op_type == "Cast":   # the mixed precision graph's FP32 output
        softmax = producers[softmax.input[0]]
    assert softmax.op_type == "Softmax"
    axis, = [a for a in softmax.attribute if a.name == "axis"]
    axis.i = 3   # over the width instead of the classes
    onnx.save(proto, str(copy / ONNX_FILE))
    manifest = json.loads((copy / MANIFEST).read_text())   # evaluate() checks no hashes: the edit is the point
    report = evaluate(copy, manifest, load_profile("jetson"), load_reference(copy, manifest), ["onnxruntime"])
    entry = report["backends"]["onnxruntime"]
    assert entry["verdict"] == "fail" and report["verdict"] == "fail"
    assert [f.split()[0] for f in entry["failures"]] == [PIXEL_PROBABILITIES]
    assert entry["metrics"][PIXEL_PROBABILITIES] < 0.9 and entry["metrics"]["pixel"] == 1.0


def test_deepstream_files_are_hashed_like_the_model(fp16, tmp_path):
    manifest = json.loads((fp16 / MANIFEST).read_text())
    assert set(DEEPSTREAM_FILES) <= set(manifest["files"]) and set(DEEPSTREAM_FILES) <= set(manifest["artifacts"])
    assert os.access(fp16 / DS_PIPELINE, os.X_OK)
    copy = tmp_path / "copy"
    shutil.copytree(fp16, copy)
    (copy / DS_LABELS).write_text("edited\n")
    assert run_cli(parity_main, [copy]) == 2


# ----------------------------------------------------------------------------------------------------- refusals
def test_deepstream_is_refused_where_it_does_not_apply(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(export_main, ["--target", "tensorrt", "--deepstream", *SIZE, "--output", out]) == 2
    assert "--deepstream does not apply to --target tensorrt" in one_error_line(capsys)
    assert run_cli(export_main, ["--target", "jetson", "--deepstream", "--model", "biformer_tiny", *SIZE,
                                 "--output", out]) == 2
    assert "semantic segmentation" in one_error_line(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ the pipeline
def test_pipeline_script_checks_before_it_launches(fp16, tmp_path):
    """bash syntax, and the refusals it makes before starting GStreamer (exit 2, one line). With stand-ins that
    only record their arguments (nothing here claims what GStreamer does with them), the launch line it builds."""
    bash = shutil.which("bash")
    script = fp16 / DS_PIPELINE
    assert subprocess.run([bash, "-n", str(script)]).returncode == 0
    video = tmp_path / "in put %#?é.mp4"   # characters a file:// URI must percent-encode
    video.write_bytes(b"not decoded here")
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"   # a PATH with the script's tools and no GStreamer
    bin_dir.mkdir()
    tools.mkdir()
    for tool in ("dirname", "realpath"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": f"{bin_dir}:{tools}"}
    no_gst = subprocess.run([bash, str(script), str(video)], capture_output=True, text=True, env=env)
    assert no_gst.returncode == 2 and no_gst.stderr.count("\n") == 1 and "gst-launch-1.0" in no_gst.stderr
    (bin_dir / "gst-inspect-1.0").write_text("#!/bin/sh\ncase \"$1\" in nvv4l2h264enc) exit 1;; esac\nexit 0\n")
    (bin_dir / "gst-launch-1.0").write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    no_engine = subprocess.run([bash, str(script), str(video)], capture_output=True, text=True, env=env)
    assert no_engine.returncode == 2 and "build_engine.sh" in no_engine.stderr
    copy = tmp_path / "artifact"
    shutil.copytree(fp16, copy)
    (copy / ENGINE_FILE).write_bytes(b"plan")
    bad = subprocess.run([bash, str(copy / DS_PIPELINE), str(video), str(tmp_path / "out.avi")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and ".mp4" in bad.stderr
    ran = subprocess.run([bash, str(copy / DS_PIPELINE), str(video), str(tmp_path / "o u t.mp4")],
                         capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr
    argv = ran.stdout.splitlines()
    order = [argv.index(e) for e in ("uridecodebin", "nvstreammux", "nvinfer", "nvsegvisual", "x264enc", "filesink")]
    assert order == sorted(order)
    # the input as a percent-encoded file:// URI: the bash fallback (no python3 on this PATH) and python3's pathlib
    # write the same one
    uri = video.resolve().as_uri()
    assert "%20" in uri and "%25" in uri and "%23" in uri and "%3F" in uri and "%C3%A9" in uri
    assert f"uri={uri}" in argv and f"location={tmp_path / 'o u t.mp4'}" in argv
    (tools / "python3").symlink_to(sys.executable)
    with_python = subprocess.run([bash, str(copy / DS_PIPELINE), str(video)], capture_output=True, text=True, env=env)
    assert with_python.returncode == 0, with_python.stderr
    assert f"uri={uri}" in with_python.stdout.splitlines() and "nv3dsink" in with_python.stdout.splitlines()
    # filesrc, behind uridecodebin, turns a file:// URI back into a path with GLib's g_filename_from_uri
    # (gstreamer plugins/elements/gstfilesrc.c gst_file_src_uri_set_uri, 1.x): it must give the video's path back
    python = glib_python()
    if python is not None:
        back = subprocess.run([python, "-c", "import sys, gi; gi.require_version('GLib', '2.0'); from gi.repository "
                               "import GLib; print(GLib.filename_from_uri(sys.argv[1])[0])", uri],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
        assert back.returncode == 0 and back.stdout.rstrip("\n") == str(video.resolve()), back.stderr
    assert f"config-file-path={(copy / DS_INFER_CONFIG).resolve()}" in argv
    assert f"width={W}" in argv and f"height={H}" in argv and "original-background=true" in argv
