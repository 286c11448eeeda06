"""apps/video_segmentation.py end to end on small exported artifacts: outputs, timings, parity, bad input, atomicity."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
pytest.importorskip("openvino")

import biformer_edge as be  # noqa: E402
from biformer_edge.data import SceneClip  # noqa: E402
from biformer_edge.exporter import ExportRequest, export  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "apps" / "video_segmentation.py"


def _load_app():
    spec = importlib.util.spec_from_file_location("video_segmentation", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # apps/ is a plain folder, not a package (dataclasses need the module registered)
    spec.loader.exec_module(module)
    return module


vs = _load_app()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "demo.pth"
    torch.save(be.create_model("biformer_seg_demo", pretrained=False).state_dict(), path)
    return path


def _export(target, checkpoint, out):
    export(ExportRequest(target=target, model="biformer_seg_demo", checkpoint=str(checkpoint), output=str(out),
                         parity=False), log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def ov_artifact(checkpoint, tmp_path_factory):
    return _export("openvino", checkpoint, tmp_path_factory.mktemp("art") / "demo-openvino-fp32")


def run_app(*args):
    return vs.main([str(a) for a in args])


def read_video(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def only_outputs(folder, names):
    """Nothing but ``names`` in ``folder`` (no temporary files left behind)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_synthetic_clip_writes_video_sheet_and_timings(ov_artifact, tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert run_app("--artifact", ov_artifact, "--input", "synthetic", "--output", out, "--seconds", 2, "--fps", 2,
                   "--size", 96, 128) == 0
    only_outputs(tmp_path, ["demo.mp4", "demo.png", "demo.json"])
    frames = read_video(out)
    assert len(frames) == 4 and frames[0].shape == (96, 128, 3)
    sheet = cv2.imread(str(tmp_path / "demo.png"))
    assert sheet is not None and sheet.shape[0] > 4 * vs.SHEET_CELL and sheet.shape[1] > 3 * 100
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["backend"] == "openvino"  # chosen automatically: no TensorRT engine / GPU here
    assert summary["inference_precision"] == "f32" and summary["frames"] == 4
    assert set(summary["stage_ms"]) == set(vs.STAGES) and all(v >= 0 for v in summary["stage_ms"].values())
    assert summary["stage_ms"]["inference"] > 0 and summary["fps"] > 0
    assert summary["end_to_end_ms"] == pytest.approx(sum(summary["stage_ms"].values()), abs=0.01)
    assert 0 <= summary["flicker_rate"] <= 1 and summary["compare"] is None
    assert summary["model_input"] == [128, 128] and summary["model_output"] == [32, 32]
    printed = capsys.readouterr().out
    assert "end to end" in printed and "FPS" in printed and "inference" in printed


def test_compare_fp32_openvino_matches_reference(ov_artifact, tmp_path):
    out = tmp_path / "cmp.mp4"
    sheet = tmp_path / "sheets" / "s.png"
    sheet.parent.mkdir()
    assert run_app("--artifact", ov_artifact, "--input", "synthetic", "--output", out, "--frames", 3, "--compare",
                   "--sheet", sheet, "--backend", "ov", "--no-display-legend") == 0
    assert sheet.is_file() and len(read_video(out)) == 3
    cmp = json.loads(out.with_suffix(".json").read_text())["compare"]
    assert cmp["pixel_agreement_mean"] >= 0.999 and cmp["pixel_agreement_min"] >= 0.999
    assert len(cmp["pixel_agreement_per_frame"]) == 3 and cmp["reference_ms"] > 0
    assert 0 <= cmp["reference_flicker_rate"] <= 1 and "flicker_relative_diff" in cmp
    if cmp["pixel_agreement_min"] == 1.0:  # identical label maps flicker identically
        assert cmp["flicker_relative_diff"] in (0.0, None)


def test_video_file_input_is_read_and_resized(ov_artifact, tmp_path, capsys):
    src = tmp_path / "in" / "clip.avi"
    src.parent.mkdir()
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (100, 72))
    assert writer.isOpened()
    for image, _ in SceneClip(3, (72, 100), 3):
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out.mp4"
    assert run_app("--artifact", ov_artifact, "--input", src, "--output", out) == 0
    frames = read_video(out)
    assert len(frames) == 3 and frames[0].shape == (72, 100, 3)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["frame_size"] == [72, 100] and summary["output_fps"] == pytest.approx(12.0)
    assert "72x100 -> model 128x128" in capsys.readouterr().out


def test_frames_of_another_size_are_resized_with_one_note(ov_artifact, tmp_path, monkeypatch, capsys):
    class Mixed(vs.FrameSource):
        name, size, total = "mixed", (64, 80), 3

        def __init__(self):
            self.frames = [np.full((64, 80, 3), 90, np.uint8)] + [np.full((50, 60, 3), 160, np.uint8)] * 2

        def read(self):
            return self.frames.pop(0) if self.frames else None

    monkeypatch.setattr(vs, "open_source", lambda args: Mixed())
    monkeypatch.setattr(vs, "sheet_reference", lambda *a: "not computed in this test")
    out = tmp_path / "mixed.mp4"
    assert run_app("--artifact", ov_artifact, "--input", "synthetic", "--output", out) == 0
    assert [f.shape for f in read_video(out)] == [(64, 80, 3)] * 3
    assert json.loads(out.with_suffix(".json").read_text())["resized_frames"] == 2
    assert capsys.readouterr().out.count("resizing such frames") == 1


@pytest.mark.parametrize("kind", ["missing", "undecodable", "camera", "gstreamer"])
def test_bad_input_exits_2_and_leaves_nothing(ov_artifact, tmp_path, capsys, kind):
    src = {"missing": tmp_path / "nope.mp4", "undecodable": tmp_path / "in" / "noise.mp4", "camera": "37",
           "gstreamer": "videotestsrc num-buffers=0 ! nosuchelement ! appsink"}[kind]
    if kind == "undecodable":
        src.parent.mkdir()
        src.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert run_app("--artifact", ov_artifact, "--input", src, "--output", out_dir / "o.mp4") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    only_outputs(out_dir, [])


def test_artifact_errors(ov_artifact, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    assert run_app("--artifact", tmp_path, "--input", "synthetic", "--output", out) == 2
    assert "is not a biformer-edge artifact" in capsys.readouterr().err
    cls = tmp_path / "cls"
    cls.mkdir()
    manifest = json.loads((ov_artifact / "manifest.json").read_text())
    manifest.update(model="biformer_tiny", task="classification", num_classes=None)
    (cls / "manifest.json").write_text(json.dumps(manifest))
    assert run_app("--artifact", cls, "--input", "synthetic", "--output", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this demo needs a segmentation artifact;") and "classification model" in err
    assert run_app("--artifact", ov_artifact, "--input", "synthetic", "--output", tmp_path / "no" / "o.mp4") == 2
    assert "does not exist" in capsys.readouterr().err
    only_outputs(tmp_path, ["cls"])


def test_failure_or_interrupt_midway_leaves_no_output(ov_artifact, tmp_path, monkeypatch, capsys):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(vs, "sheet_reference", boom)  # after every frame was written to the temporary video
    out = tmp_path / "o.mp4"
    assert run_app("--artifact", ov_artifact, "--input", "synthetic", "--output", out, "--frames", 2) == 130
    assert "nothing was written" in capsys.readouterr().err
    only_outputs(tmp_path, [])


def test_onnxruntime_artifact_runs(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    art = _export("onnx", checkpoint, tmp_path / "demo-onnx")
    out = tmp_path / "ort.mp4"
    assert run_app("--artifact", art, "--input", "synthetic", "--output", out, "--frames", 2) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["backend"] == "onnxruntime" and summary["fps"] > 0 and len(read_video(out)) == 2
    shutil.rmtree(art)


def test_csi_pipeline_and_argument_checks():
    p = vs.csi_pipeline(1920, 1080, 30, sensor=1, flip=2)
    assert p.startswith("nvarguscamerasrc sensor-id=1 !") and "width=1920, height=1080, framerate=30/1" in p
    assert "flip-method=2" in p and p.rstrip().split("!")[-1].strip().startswith("appsink")
    assert vs.main(["--artifact", "x", "--input", "synthetic", "--output", "o.mp4", "--backend", "nope"]) == 2
    assert vs.main(["--artifact", "x", "--input", "synthetic", "--output", "o.mp4", "--frames", "0"]) == 2
