"""The video demo (biformer_edge.video, run by apps/video_segmentation.py) end to end on small exported artifacts:
outputs, timings, parity, bad input, atomicity, refused outputs, SIGTERM, and running without torch."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
pytest.importorskip("openvino")

import biformer_edge as be  # noqa: E402
from biformer_edge import video  # noqa: E402
from biformer_edge.data import SceneClip  # noqa: E402
from biformer_edge.exporter import ExportRequest, export  # noqa: E402
from biformer_edge.video import pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "apps" / "video_segmentation.py"
JETSON = ROOT / "apps" / "jetson_camera.sh"


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


@pytest.fixture(scope="module")
def onnx_artifact(checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return _export("onnx", checkpoint, tmp_path_factory.mktemp("art") / "demo-onnx-fp32")


def run_app(*args):
    """biformer_edge.video.main in this process; its exit status."""
    with pytest.raises(SystemExit) as exc:
        video.main([str(a) for a in args])
    return exc.value.code


def run_script(*args, prelude="", timeout=300):
    """apps/video_segmentation.py in a fresh interpreter, after ``prelude`` (Python run first in that process)."""
    code = (f"import runpy, sys\n{prelude}\n"
            f"sys.argv = [{str(APP)!r}] + {[str(a) for a in args]!r}\n"
            f"runpy.run_path({str(APP)!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


NO_TORCH = "sys.modules['torch'] = None  # every 'import torch' fails"


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


def write_video(path, n=3, size=(72, 100), fps=12.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    assert writer.isOpened()
    for image, _ in SceneClip(3, size, n):
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def only_outputs(folder, names):
    """Nothing but ``names`` in ``folder`` (no temporary files left behind)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def one_error_line(err):
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_synthetic_clip_writes_video_sheet_and_timings(ov_artifact, tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert run_app("--artifact", ov_artifact, "--input", "synthetic", "--output", out, "--seconds", 2, "--fps", 2,
                   "--size", 96, 128) == 0
    only_outputs(tmp_path, ["demo.mp4", "demo.png", "demo.json"])
    frames = read_video(out)
    assert len(frames) == 4 and frames[0].shape == (96, 128, 3)
    sheet = cv2.imread(str(tmp_path / "demo.png"))
    assert sheet is not None and sheet.shape[0] > 4 * video.SHEET_CELL and sheet.shape[1] > 3 * 100
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["backend"] == "openvino"  # chosen automatically: no TensorRT engine / GPU here
    assert summary["inference_precision"] == "f32" and summary["frames"] == 4
    assert set(summary["stage_ms"]) == set(video.STAGES) and all(v >= 0 for v in summary["stage_ms"].values())
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
    dep, ref = cmp["deployed_flicker_rate"], cmp["reference_flicker_rate"]
    assert 0 <= ref <= 1 and 0 <= dep <= 1
    # a pixel that flickers in one stream but not the other disagrees in one of the two frames: the flicker rates
    # differ by at most twice the disagreement (zero for identical label maps)
    assert abs(dep - ref) <= 2 * (1 - cmp["pixel_agreement_min"]) + 1e-6
    rel = cmp["flicker_relative_diff"]
    assert rel == (pytest.approx((dep - ref) / ref, abs=1e-5) if ref > 0 else (0.0 if dep == 0 else None))


def test_video_file_input_is_read_and_resized(ov_artifact, tmp_path, capsys):
    src = tmp_path / "in" / "clip.avi"
    src.parent.mkdir()
    write_video(src)
    out = tmp_path / "out.mp4"
    assert run_app("--artifact", ov_artifact, "--input", src, "--output", out) == 0
    frames = read_video(out)
    assert len(frames) == 3 and frames[0].shape == (72, 100, 3)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["frame_size"] == [72, 100] and summary["output_fps"] == pytest.approx(12.0)
    assert "72x100 -> model 128x128" in capsys.readouterr().out


def test_frames_of_another_size_are_resized_with_one_note(ov_artifact, tmp_path, monkeypatch, capsys):
    class Mixed(video.FrameSource):
        name, size, total = "mixed", (64, 80), 3

        def __init__(self):
            self.frames = [np.full((64, 80, 3), 90, np.uint8)] + [np.full((50, 60, 3), 160, np.uint8)] * 2

        def read(self):
            return self.frames.pop(0) if self.frames else None

    monkeypatch.setattr(pipeline, "open_source", lambda args: Mixed())
    monkeypatch.setattr(pipeline, "sheet_reference", lambda *a: "not computed in this test")
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
    one_error_line(capsys.readouterr().err)
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


def test_manifest_path_leaving_the_artifact_is_refused(ov_artifact, tmp_path, capsys):
    art = tmp_path / "art"
    art.mkdir()
    for p in ov_artifact.iterdir():
        (art / p.name).write_bytes(p.read_bytes())
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["../outside.bin"] = {"sha256": "0" * 64, "bytes": 1}
    (art / "manifest.json").write_text(json.dumps(manifest))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert run_app("--artifact", art, "--input", "synthetic", "--output", out_dir / "o.mp4") == 2
    assert "outside the artifact" in one_error_line(capsys.readouterr().err)
    only_outputs(out_dir, [])


def test_failure_or_interrupt_midway_leaves_no_output(ov_artifact, tmp_path, monkeypatch, capsys):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "sheet_reference", boom)  # after every frame was written to the temporary video
    out = tmp_path / "o.mp4"
    assert run_app("--artifact", ov_artifact, "--input", "synthetic", "--output", out, "--frames", 2) == 130
    assert "nothing was written" in capsys.readouterr().err
    only_outputs(tmp_path, [])


def test_onnxruntime_artifact_runs(onnx_artifact, tmp_path):
    out = tmp_path / "ort.mp4"
    assert run_app("--artifact", onnx_artifact, "--input", "synthetic", "--output", out, "--frames", 2) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["backend"] == "onnxruntime" and summary["fps"] > 0 and len(read_video(out)) == 2


def test_csi_pipeline_and_argument_checks(capsys):
    p = video.csi_pipeline(1920, 1080, 30, sensor=1, flip=2)
    assert p.startswith("nvarguscamerasrc sensor-id=1 !") and "width=1920, height=1080, framerate=30/1" in p
    assert "flip-method=2" in p and p.rstrip().split("!")[-1].strip().startswith("appsink")
    base = ["--artifact", "x", "--input", "synthetic", "--output", "o.mp4"]
    assert run_app(*base, "--backend", "nope") == 2
    assert "unsupported backend 'nope'" in one_error_line(capsys.readouterr().err)
    assert run_app(*base, "--frames", "0") == 2
    one_error_line(capsys.readouterr().err)
    # runtime names and aliases come from biformer_edge.targets ('torch' runs the FP32 model)
    for alias, name in [("trt", "tensorrt"), ("ov", "openvino"), ("ORT", "onnxruntime"), ("onnx", "onnxruntime"),
                        ("pytorch", "torch"), ("coreml", "coreml")]:
        assert video.parse_args([*base, "--backend", alias]).backend == name


def test_output_equal_to_the_input_video_is_refused(tmp_path, ov_artifact):
    src = write_video(tmp_path / "clip.avi")
    before = src.read_bytes()
    r = run_script("--artifact", ov_artifact, "--input", src, "--output", src)
    assert r.returncode == 2, r.stderr
    assert "also an input of this run" in one_error_line(r.stderr)
    assert src.read_bytes() == before
    only_outputs(tmp_path, ["clip.avi"])


def test_output_aliasing_the_input_video_is_refused(tmp_path, ov_artifact, capsys):
    (tmp_path / "in").mkdir()
    src = write_video(tmp_path / "in" / "clip.avi")
    before = src.read_bytes()
    os.link(src, tmp_path / "hard.avi")
    cases = {
        "another spelling": ["--output", tmp_path / "in" / ".." / "in" / "clip.avi"],
        "relative": ["--output", os.path.relpath(src)],
        "hard link": ["--output", tmp_path / "hard.avi"],
        "sheet": ["--output", tmp_path / "o.mp4", "--sheet", src],
    }
    for what, extra in cases.items():
        assert run_app("--artifact", ov_artifact, "--input", src, *extra) == 2, what
        assert "also an input of this run" in one_error_line(capsys.readouterr().err), what
    assert src.read_bytes() == before
    only_outputs(tmp_path, ["in", "hard.avi"])
    only_outputs(tmp_path / "in", ["clip.avi"])


@pytest.mark.parametrize("points_at", ["a file", "the input", "nothing"])
def test_output_symlink_is_refused(tmp_path, ov_artifact, capsys, points_at):
    src = write_video(tmp_path / "clip.avi")
    before = src.read_bytes()
    target = {"a file": tmp_path / "keep.mp4", "the input": src, "nothing": tmp_path / "dangling.mp4"}[points_at]
    if points_at == "a file":
        target.write_bytes(b"keep me")
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    assert run_app("--artifact", ov_artifact, "--input", src, "--output", link) == 2
    assert "symbolic link" in one_error_line(capsys.readouterr().err)
    assert link.is_symlink() and os.readlink(link) == str(target) and src.read_bytes() == before
    if points_at == "a file":
        assert target.read_bytes() == b"keep me"
    only_outputs(tmp_path, ["clip.avi", "link.mp4"] + (["keep.mp4"] if points_at == "a file" else []))


def test_sigterm_midway_leaves_no_temporaries(onnx_artifact, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    log = tmp_path / "stdout.txt"
    args = ["--artifact", onnx_artifact, "--input", "synthetic", "--seconds", 600, "--size", 64, 64,
            "--output", out_dir / "demo.mp4"]
    with open(log, "w") as stdout:
        proc = subprocess.Popen([sys.executable, str(APP), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        # first progress: the frame loop has started (its log line) and the temporary video has data in it
        while not ("input synthetic" in log.read_text()
                   and any(p.suffix == ".mp4" and p.stat().st_size > 0 for p in out_dir.iterdir())):
            assert proc.poll() is None, f"the demo ended early ({proc.returncode}): {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the demo made no progress"
            time.sleep(0.1)
        assert len(list(out_dir.iterdir())) == 3  # the video, sheet and JSON temporaries
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err.startswith("terminated:") and err.count("\n") == 1, err
    only_outputs(out_dir, [])


def test_demo_needs_no_torch(ov_artifact, tmp_path):
    """The demo's own code (sources, pipeline, drawing, comparison) with every 'import torch' failing: a numpy
    session stands in for the runtime, so this holds whatever the runtime modules import."""
    fake = ("import numpy as np\n"
            "import biformer_edge.video.runtime as rt\n"
            "from biformer_edge.backends.base import RunResult, Session\n"
            "class Fake(Session):\n"
            "    def run(self, x):\n"
            "        logits = np.zeros((x.shape[0], 6, x.shape[2] // 4, x.shape[3] // 4), np.float32)\n"
            "        logits[:, 1, :8] = 1.0\n"
            "        return RunResult(logits)\n"
            "rt.open_session = lambda *a, **k: Fake()\n")
    out = tmp_path / "o.mp4"
    r = run_script("--artifact", ov_artifact, "--input", "synthetic", "--output", out, "--frames", 3,
                   prelude=NO_TORCH + "\n" + fake)
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["frames"] == 3 and any("PyTorch is not installed" in n for n in summary["notes"])
    # what needs the FP32 model says so in one line
    r = run_script("--artifact", ov_artifact, "--input", "synthetic", "--output", tmp_path / "c.mp4", "--frames", 2,
                   "--compare", prelude=NO_TORCH + "\n" + fake)
    assert r.returncode == 2 and "PyTorch is not installed" in one_error_line(r.stderr)
    only_outputs(tmp_path, ["o.mp4", "o.png", "o.json"])


def test_onnx_artifact_runs_without_torch(onnx_artifact, tmp_path):
    out = tmp_path / "o.mp4"
    r = run_script("--artifact", onnx_artifact, "--input", "synthetic", "--output", out, "--frames", 2,
                   prelude=NO_TORCH)
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["backend"] == "onnxruntime" and summary["frames"] == 2 and len(read_video(out)) == 2
    assert any("PyTorch is not installed" in n for n in summary["notes"])  # the sheet's FP32 column says why


def test_jetson_launcher_calls_the_demo(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    r = subprocess.run(["bash", str(JETSON), str(art), str(tmp_path / "c.mp4")], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2 and "model.engine not found" in r.stderr
    (art / "model.engine").write_bytes(b"not an engine")  # the launcher's flags reach the demo, which checks them
    r = subprocess.run(["bash", str(JETSON), str(art), str(tmp_path / "c.mp4")], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert r.returncode == 2 and "is not a biformer-edge artifact" in one_error_line(r.stderr)
    only_outputs(tmp_path, ["art"])
