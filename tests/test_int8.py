"""INT8 through explicit Q/DQ (ModelOpt): the router island, the layer report, calibration sources and its cache,
and bad calibration input. Small: the default model at 64x64, few calibration samples."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

pytest.importorskip("modelopt.torch.quantization")

from biformer_edge.backends.onnx.export import qdq_into_topk  # noqa: E402
from biformer_edge.cli import export_main  # noqa: E402
from tests.helpers import SIZE, run_cli  # noqa: E402

FEW = ["--calib-samples", "16"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BIFORMER_EDGE_CACHE", str(tmp_path_factory.getbasetemp() / "calib-cache"))


@pytest.fixture(scope="module")
def jetson_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "jetson"
    cache = tmp_path_factory.getbasetemp() / "calib-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIFORMER_EDGE_CACHE", str(cache))
        assert run_cli(export_main, ["--target", "jetson", "--int8", *SIZE, *FEW, "--output", out]) == 0
    return out


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_jetson_int8_artifact(jetson_int8):
    m = manifest(jetson_int8)
    q = m["quantization"]
    assert m["precision"] == "int8" and m["router_precision"] == "fp32" and q["routing"] == "qar"
    assert q["int8_weight_share"] >= 0.9 and "decode_head.conv_seg" in q["float_layers"]
    search = q["routing_search"]   # QAR: the fewest layers kept float for the calibration regret target
    assert search["max_regret"] == 0.002 and set(search["float_layers"]) <= set(q["float_layers"])
    assert search["met"] == (search["calibration_after"]["routing_regret"] <= 0.002
                             and search["calibration_after"]["routing_decisive"] >= 0.995)
    assert q["calibration"]["samples"] == 16 and q["toolkit"].startswith("nvidia-modelopt")
    assert {"model.onnx", "layer_precision.json", "layer_precision.md", "build_engine.sh"} <= set(m["files"])
    assert m["checks"]["router_island"]["ok"] and m["checks"]["tensorrt_onnx"]["ok"]
    import torch
    from torch._export.serde.schema import SCHEMA_VERSION  # what the device's torch must read (build_engine.py)
    assert m["checks"]["torch_export"]["schema_version"] == "{}.{}".format(*SCHEMA_VERSION)
    assert m["checks"]["torch_export"]["torch_version"] == torch.__version__
    report = json.loads((jetson_int8 / "parity.json").read_text())["backends"]["onnxruntime"]
    assert report["verdict"] == "pass" and len(report["routing_per_block"]) == 4


def test_qdq_graph_and_layer_report(jetson_int8):
    proto = onnx.load(str(jetson_int8 / "model.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    assert qdq_into_topk(proto) == []
    layers = json.loads((jetson_int8 / "layer_precision.json").read_text())
    rows = {r["layer"]: r for r in layers["layers"]}
    conv_seg = [r for name, r in rows.items() if "conv_seg" in name]
    assert conv_seg and conv_seg[0]["input"] == "fp16" and conv_seg[0]["weight"] == "fp16"   # float layers FP16
    assert all(not r["router"] or r["input"] == "fp32" for r in rows.values())   # the affinity MatMul stays FP32
    assert layers["summary"]["int8_weight_share"] >= 0.9


def test_reference_stays_fp32(jetson_int8):
    import torch

    from biformer_edge.models import create_model
    with np.load(jetson_int8 / "reference.npz") as ref:
        x, logits = ref["inputs"][0], ref["logits"][0]
    with torch.no_grad():
        expected = create_model("biformer_seg_demo")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_qar_keeps_layernorm_inputs_and_the_searched_layers_float(jetson_int8):
    rows = json.loads((jetson_int8 / "layer_precision.json").read_text())["layers"]
    floats = set(manifest(jetson_int8)["quantization"]["routing_search"]["float_layers"])
    onnx_float = {r["module"] for r in rows if r["input"] in ("fp16", "fp32") and r["weight"] == r["input"]}
    assert floats <= onnx_float, floats - onnx_float
    proto = onnx.load(str(jetson_int8 / "model.onnx"))
    producers = {o: n for n in proto.graph.node for o in n.output}
    for ln in (n for n in proto.graph.node if n.op_type == "LayerNormalization"):
        assert producers.get(ln.input[0]) is None or producers[ln.input[0]].op_type != "DequantizeLinear"


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_regret_target_outside_0_1_is_refused(value, tmp_path, capsys):
    assert run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, "--max-routing-regret", value, "--output",
                                 tmp_path / "o"]) == 2
    assert "--max-routing-regret must be in (0, 1]" in capsys.readouterr().err


def test_naive_routing_quantizes_the_router(tmp_path):
    out = tmp_path / "naive"
    assert run_cli(export_main, ["--target", "onnx", "--int8", "--routing", "naive", *SIZE, *FEW, "--output",
                                 out]) in (0, 1)
    m = manifest(out)
    assert m["routing"] == "naive" and m["router_precision"] == "int8 inputs"
    assert qdq_into_topk(onnx.load(str(out / "model.onnx")))
    assert "naive" in m["checks"]["router_island"]["summary"]


def test_calibration_cache_hit_gives_identical_artifact(jetson_int8, tmp_path, capsys):
    again = tmp_path / "again"
    assert run_cli(export_main, ["--target", "jetson", "--int8", *SIZE, *FEW, "--output", again]) == 0
    assert "reused from the cache" in capsys.readouterr().out
    first, second = manifest(jetson_int8), manifest(again)
    assert second["quantization"]["calibration"]["cache"] == "hit"
    assert first["files"]["model.onnx"] == second["files"]["model.onnx"]
    other = tmp_path / "other"   # other settings: another key, a fresh calibration
    assert run_cli(export_main, ["--target", "jetson", "--int8", *SIZE, "--calib-samples", "8", "--output",
                                 other, "--no-parity"]) == 0
    assert manifest(other)["quantization"]["calibration"]["cache"] == "miss"
    assert manifest(other)["quantization"]["calibration"]["cache_key"] != first["quantization"]["calibration"][
        "cache_key"]


def test_qar_search_does_not_depend_on_the_machines_load(jetson_int8, tmp_path, monkeypatch):
    """The keep-float search is bounded by work, not wall time: on a machine so slow that every clock reading is
    hours later, the same export makes the same choices (a wall-clock budget once ended the search early under load)."""
    import itertools
    import types

    import biformer_edge.quant.qar as qar
    clock = itertools.count(0.0, 3600.0)
    monkeypatch.setattr(qar, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setenv("BIFORMER_EDGE_CACHE", str(tmp_path / "cache"))   # a miss: the search runs again
    slow = tmp_path / "slow"
    assert run_cli(export_main, ["--target", "jetson", "--int8", *SIZE, *FEW, "--output", slow, "--no-parity"]) == 0
    first, again = (manifest(p)["quantization"]["routing_search"] for p in (jetson_int8, slow))
    assert again["float_groups"] == first["float_groups"] and again["trials"] == first["trials"] >= 1
    assert again["calibration_after"] == first["calibration_after"] and again["seconds"] >= 3600


def write_images(folder: Path) -> None:
    folder.mkdir()
    from biformer_edge.data import render_scene
    rgb = render_scene(3, (40, 48))[0]
    cv2.imwrite(str(folder / "color.png"), rgb[..., ::-1])
    cv2.imwrite(str(folder / "gray.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(folder / "alpha.png"), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 200, np.uint8)]))
    cv2.imwrite(str(folder / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)


def test_image_folder_and_video_calibration_with_conversion_notes(tmp_path, capsys):
    write_images(tmp_path / "imgs")
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    from biformer_edge.data import render_scene
    for i in range(12):
        writer.write(render_scene(i, (48, 64))[0][..., ::-1].copy())
    writer.release()
    out = tmp_path / "out"
    assert run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, "--calib", tmp_path / "imgs", video,
                                 "--calib-samples", "12", "--output", out, "--no-parity"]) == 0
    printed = capsys.readouterr().out
    for note in ("grayscale expanded to RGB", "alpha channel dropped", "16-bit scaled to 8-bit",
                 "warning: 12 calibration samples is few"):
        assert note in printed, note
    calib = manifest(out)["quantization"]["calibration"]
    assert calib["samples"] == 12 and calib["origin"] == "--calib"


def test_recipe_file_with_relative_sources(tmp_path):
    write_images(tmp_path / "imgs")
    (tmp_path / "r.toml").write_text('[calibration]\nsource = ["imgs"]\nsamples = 4\nmethod = "max"\n')
    out = tmp_path / "out"
    assert run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, "--calib", tmp_path / "r.toml",
                                 "--output", out, "--no-parity"]) == 0
    assert manifest(out)["quantization"]["calibration"]["source"] == [str((tmp_path / "imgs").resolve())]


def bad_recipe(tmp_path, name, text):
    (tmp_path / f"{name}.toml").write_text(text)
    return tmp_path / f"{name}.toml"


@pytest.mark.parametrize("case,message", [
    ("empty folder", "holds no images"),
    ("not images", "holds no images"),
    ("missing", "does not exist"),
    ("broken video", "cannot decode video"),
    ("broken image", "cannot decode image"),
    ("fewer than batch", "fewer than the batch of 2"),
    ("bad method", "method 'entropy' is not supported"),
    ("unknown key", "unknown key 'sample'"),
    ("not toml", "is unreadable"),
    ("zero samples", "must be >= 1"),
])
def test_bad_calibration_input_is_one_line_and_leaves_nothing(case, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "broken.mp4").write_bytes(b"\0" * 100)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    calib = {
        "empty folder": ["--calib", tmp_path / "empty"],
        "not images": ["--calib", tmp_path / "texts"],
        "missing": ["--calib", tmp_path / "nope"],
        "broken video": ["--calib", tmp_path / "broken.mp4"],
        "broken image": ["--calib", tmp_path / "imgs"],
        "fewer than batch": ["--batch", "2", "--calib-samples", "1"],
        "bad method": ["--calib", bad_recipe(tmp_path, "method", '[calibration]\nmethod = "entropy"\n')],
        "unknown key": ["--calib", bad_recipe(tmp_path, "key", "[calibration]\nsample = 3\n")],
        "not toml": ["--calib", bad_recipe(tmp_path, "syntax", "this is [not toml")],
        "zero samples": ["--calib-samples", "0"],
    }[case]
    out = tmp_path / "out"
    code = run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, *calib, "--output", out])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_int8_without_modelopt_is_one_line(tmp_path):
    code = ("import sys; sys.modules['modelopt'] = None\n"
            "from biformer_edge.cli import export_main\n"
            f"export_main(['--target', 'onnx', '--int8', '--output', {str(tmp_path / 'o')!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and "pip install 'biformer-edge[int8]'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


def weight_integers(path: Path) -> dict[str, int]:
    """Largest |integer| of each INT8 weight of a Q/DQ ONNX: QuantizeLinear of a float initializer (rounded with
    its scale, as the runtime folds it) or DequantizeLinear of an int8 initializer."""
    from onnx import numpy_helper
    proto = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    init.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    out = {}
    for node in proto.graph.node:
        if node.input and node.input[0] in init and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            data, scale = init[node.input[0]], init.get(node.input[1])
            if node.op_type == "QuantizeLinear" and data.dtype.kind == "f" and scale is not None and data.ndim > 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * data.ndim
                shape[axis] = -1
                q = np.round(data / (scale.reshape(shape) if scale.ndim else scale))
                out[node.input[0]] = int(np.abs(np.clip(q, -128, 127)).max())
            elif node.op_type == "DequantizeLinear" and data.dtype == np.int8 and data.ndim > 1:
                out[node.input[0]] = int(np.abs(data.astype(np.int32)).max())
    return out


def test_cpu_class_bounds_the_weights_and_is_recorded(jetson_int8, tmp_path, capsys):
    """CPU targets default to --cpu portable: weights |q| <= 64, which cannot saturate the 16-bit pair sums of CPUs
    without VNNI (biformer_edge/cpu.py); GPU targets keep the full 8-bit range. Both are in the manifest. On a CPU
    without VNNI the export says in one line that INT8 gains no speed there."""
    from biformer_edge.cpu import WEIGHT_BOUND, detect
    gpu = manifest(jetson_int8)["quantization"]
    assert gpu["cpu_class"] is None and gpu["weight_bound"] == 127
    full = weight_integers(jetson_int8 / "model.onnx")
    assert len(full) > 20 and max(full.values()) > 100
    out = tmp_path / "portable"
    capsys.readouterr()
    assert run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, *FEW, "--output", out]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "has no VNNI: INT8 runs here at" in line]
    assert len(notes) == (detect()["class"] == "avx2")
    q = manifest(out)["quantization"]
    assert q["cpu_class"] == "portable" and q["weight_bound"] == WEIGHT_BOUND["portable"] == 64
    assert "cannot saturate" in q["weight_range"]
    bounded = weight_integers(out / "model.onnx")
    assert len(bounded) > 20 and max(bounded.values()) <= 64
    assert sum(v >= 63 for v in bounded.values()) > len(bounded) // 2   # the bound is used, not just respected
    again = tmp_path / "again"   # from the calibration cache: bounded once, the same bytes
    assert run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, *FEW, "--output", again, "--no-parity"]) == 0
    assert manifest(again)["quantization"]["calibration"]["cache"] == "hit"
    assert manifest(again)["files"]["model.onnx"] == manifest(out)["files"]["model.onnx"]
    vnni = tmp_path / "vnni"
    assert run_cli(export_main, ["--target", "onnx", "--int8", "--cpu", "vnni", *SIZE, *FEW, "--output", vnni]) == 0
    assert manifest(vnni)["quantization"]["weight_bound"] == 127
    assert max(weight_integers(vnni / "model.onnx").values()) > 100
