"""The video demo (biformer_edge.video, run by apps/video_segmentation.py) end to end on small exported artifacts:
outputs, timings, parity, bad input, atomicity, refused outputs, SIGTERM, running without torch, and the label maps
it draws at the frame size (--upsample: bilinear scores then argmax, or nearest; DeepStream outputs at full size)."""
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
from biformer_edge.contract import resize_bilinear  # noqa: E402
from biformer_edge.data import SceneClip  # noqa: E402
from biformer_edge.exporter import ExportRequest, export  # noqa: E402
from biformer_edge.metrics import to_labels  # noqa: E402
from biformer_edge.preprocess import preprocess  # noqa: E402
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
    assert summary["upsample"] == "bilinear"   # the default: scores resized to the frame, then argmax
    assert summary["display_labels"] == "scores 32x32 resized bilinearly to 96x128, then argmax"
    assert 0 <= summary["upsample_ms"] <= summary["stage_ms"]["postprocess"]
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
    assert cmp["compared_at"] == [32, 32]   # parity's definition: the model's output, not the upsampled frame
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


# ------------------------------------------------------------------------------------ label maps at the frame size


def ramp_logits(h=8, w=8, slope_y=0.5, offset=5.1):
    """Two classes whose score difference is the linear ramp x + slope_y * y - offset over the (h, w) output cells:
    a straight, slanted boundary between them, away from the left and right borders (where clamping bends it).
    Bilinear interpolation of a linear function is that function at the (border-clamped) source coordinate, so the
    labels a bilinear resize + argmax must give are known exactly."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([np.zeros((h, w), np.float32), x + slope_y * y - offset])


def source_coordinate(n_out, n_in):
    """Half-pixel centres clamped at the border (torch interpolate bilinear, align_corners=False; cv2 INTER_LINEAR)."""
    return np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)


def boundary_columns(labels):
    """Per row, the first column of class 1 (each row of a ramp map is 0...0 1...1)."""
    assert (np.diff(labels.astype(int), axis=1) >= 0).all()
    return (labels == 0).sum(axis=1)


def test_bilinear_gives_the_smooth_boundary_of_a_ramp_and_nearest_gives_4_pixel_steps():
    scores = ramp_logits()
    labels = to_labels(scores[None])[0].astype(np.uint8)
    size = (32, 32)                                    # 4x: the model's output is 1/4 of its input
    uy, ux = source_coordinate(32, 8), source_coordinate(32, 8)
    diff = ux[None, :] + 0.5 * uy[:, None] - 5.1
    assert np.abs(diff).min() > 1e-3                    # no pixel near a tie: float rounding cannot flip one
    bilinear = video.DisplayLabels("bilinear", (8, 8), size)(scores, labels)
    np.testing.assert_array_equal(bilinear, (diff > 0).astype(np.uint8))
    nearest = video.DisplayLabels("nearest", (8, 8), size)(scores, labels)
    np.testing.assert_array_equal(nearest, np.kron(labels, np.ones((4, 4), np.uint8)))
    smooth, steps = np.diff(boundary_columns(bilinear)), np.diff(boundary_columns(nearest))
    assert set(np.abs(smooth).tolist()) <= {0, 1} and (smooth != 0).sum() >= 8   # moves a pixel at a time
    assert set(np.abs(steps).tolist()) == {0, 4}                                 # a staircase of 4x4 blocks
    assert (bilinear != nearest).any() and bilinear.shape == nearest.shape == size


@pytest.mark.parametrize("shape,size", [((6, 32, 32), (256, 256)), ((6, 32, 32), (72, 100)), ((5, 1, 7), (9, 30)),
                                        ((3, 16, 12), (8, 6)), ((300, 6, 5), (25, 17))])
def test_bilinear_labels_are_the_argmax_of_torch_bilinear_resize(shape, size):
    """What mmseg does (resize(..., mode='bilinear', align_corners=False) then argmax), computed by torch, equals the
    demo's numpy/OpenCV labels wherever the top two classes are not within float rounding of each other; the class
    pruning (candidate_classes) changes no label against resizing every class. Covers upsampling, downsampling, a
    one-row map and more classes than a uint8 holds."""
    rng = np.random.default_rng(sum(shape) + sum(size))
    for smooth in (False, True):
        scores = rng.standard_normal(shape).astype(np.float32)
        if smooth:   # larger regions, and half the classes far below the rest: those never win (pruned)
            scores = np.cumsum(np.cumsum(scores, axis=1), axis=2)
            scores[shape[0] // 2:] -= 2 * np.abs(scores).max() + 1
            scores = scores.astype(np.float32)
        dtype = np.uint8 if shape[0] <= 256 else np.int32
        ours = video.bilinear_labels(scores, size, dtype)
        assert ours.shape == size and ours.dtype == dtype
        resized = torch.nn.functional.interpolate(torch.from_numpy(scores)[None].double(), size=size,
                                                  mode="bilinear", align_corners=False)[0].numpy()
        np.testing.assert_allclose(resized, resize_bilinear(scores, size), atol=1e-9)  # the same convention
        top2 = np.sort(resized, axis=0)[-2:]
        clear = top2[1] - top2[0] > 1e-4
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(ours[clear], resized.argmax(0)[clear])
        every_class = np.stack([cv2.resize(c, size[::-1], interpolation=cv2.INTER_LINEAR) for c in scores]).argmax(0)
        np.testing.assert_array_equal(ours, every_class)
        if smooth:
            assert video.candidate_classes(scores).max() < shape[0] // 2


def test_a_class_that_wins_no_output_pixel_can_win_between_them():
    """Two output pixels, one class 0 (1, 0, 0.9), the other class 1 (0, 1, 0.9): halfway, class 2 scores 0.9 against
    0.5 and wins. Bilinear labels show it; the class pruning must keep it; nearest cannot show it."""
    scores = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[0.9, 0.9]]], np.float32)     # (3 classes, 1, 2)
    labels = to_labels(scores[None])[0].astype(np.uint8)
    assert labels.tolist() == [[0, 1]] and list(video.candidate_classes(scores)) == [0, 1, 2]
    bilinear = video.bilinear_labels(scores, (1, 8))
    # columns 2-5 blend the two pixels (source x 0.25, 0.75 ... ): class 0 and 1 score 0.875 / 0.625 there, class 2 0.9
    assert bilinear.tolist() == [[0, 0, 2, 2, 2, 2, 1, 1]]
    assert 2 not in video.DisplayLabels("nearest", (1, 2), (1, 8))(scores, labels)
    nan = video.bilinear_labels(np.full((3, 2, 2), np.nan, np.float32), (4, 4))   # a broken engine's output
    assert nan.shape == (4, 4) and (nan == 0).all()


def test_display_labels_on_the_demo_model_differ_from_nearest_only_along_edges():
    """The shipped model's scores on a synthetic frame: bilinear labels have the frame size, differ from nearest's
    blocks, and only within a block of an edge of the nearest map; a map already at the display size is kept."""
    model = be.create_model("biformer_seg_demo")
    image, _ = SceneClip(1, (256, 256), 8)[3]
    with torch.no_grad():
        scores = model(torch.from_numpy(preprocess(image, (128, 128))[None])).numpy()[0]
    labels = to_labels(scores[None])[0].astype(np.uint8)
    assert scores.shape[1:] == (32, 32) and len(np.unique(labels)) >= 2
    bilinear = video.DisplayLabels("bilinear", (32, 32), (256, 256))(scores, labels)
    nearest = video.DisplayLabels("nearest", (32, 32), (256, 256))(scores, labels)
    assert bilinear.shape == nearest.shape == (256, 256)
    np.testing.assert_array_equal(nearest, video.Upsampler((32, 32), (256, 256))(labels))  # the demo's old drawing
    differ = bilinear != nearest
    assert differ.sum() > 100
    # a pixel whose 3x3 block neighbourhood of the nearest map is one class keeps it: differences lie on edges
    k = np.ones((3 * 8, 3 * 8), np.uint8)
    edge = cv2.dilate(nearest, k) != cv2.erode(nearest, k)
    assert not (differ & ~edge).any()
    same = video.DisplayLabels("bilinear", (32, 32), (32, 32))
    assert same(scores, labels) is labels and "no resize" in same.describe()
    with pytest.raises(ValueError, match="bilinear, nearest"):
        video.DisplayLabels("bicubic", (32, 32), (64, 64))


def test_bad_upsample_value_is_one_line_exit_2(capsys):
    base = ["--artifact", "x", "--input", "synthetic", "--output", "o.mp4"]
    assert video.parse_args(base).upsample == "bilinear"
    assert video.parse_args([*base, "--upsample", "nearest"]).upsample == "nearest"
    assert run_app(*base, "--upsample", "bicubic") == 2
    err = one_error_line(capsys.readouterr().err)
    assert "--upsample" in err and "bilinear" in err and "nearest" in err


def drawn_labels(monkeypatch, frames=None):
    """The label maps the demo hands to overlay() for its video frames, and (into ``frames``) the frames themselves
    (a spy: the real overlay still draws)."""
    seen, real = [], pipeline.overlay

    def spy(image, label, **kw):
        seen.append(np.array(label, copy=True))
        if frames is not None:
            frames.append(np.array(image, copy=True))
        return real(image, label, **kw)

    monkeypatch.setattr(pipeline, "overlay", spy)
    return seen


def test_nearest_draws_blocks_and_bilinear_does_not(ov_artifact, tmp_path, monkeypatch):
    seen = drawn_labels(monkeypatch)
    maps = {}
    for mode in ("nearest", "bilinear"):
        seen.clear()
        out = tmp_path / f"{mode}.mp4"
        assert run_app("--artifact", ov_artifact, "--input", "synthetic", "--output", out, "--frames", 2,
                       "--size", 128, 128, "--upsample", mode) == 0
        summary = json.loads(out.with_suffix(".json").read_text())
        assert summary["upsample"] == mode and summary["model_output"] == [32, 32]
        maps[mode] = np.stack(seen[1:])   # seen[0] is the warm-up
        assert maps[mode].shape == (2, 128, 128)
    blocks = maps["nearest"].reshape(2, 32, 4, 32, 4)
    assert (blocks == blocks[:, :, :1, :, :1]).all()            # every 4x4 block is one class
    # the same model output: equal far from edges, unequal on them (the random-weight model's map has edges)
    assert len(np.unique(maps["nearest"])) >= 2 and (maps["bilinear"] != maps["nearest"]).any()
    b = maps["bilinear"].reshape(2, 32, 4, 32, 4)
    assert not (b == b[:, :, :1, :, :1]).all()


@pytest.fixture(scope="module")
def deepstream_artifact(tmp_path_factory):
    """A DeepStream graph (shipped weights, FP32, 64x64): probabilities at the input size (manifest graph_io)."""
    from biformer_edge.cli import export_main
    from tests.helpers import run_cli

    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("ds") / "demo-ds"
    assert run_cli(export_main, ["--target", "jetson", "--deepstream", "--input-size", 64, 64, "--no-parity",
                                 "--output", out]) == 0
    return out


def test_deepstream_output_at_the_frame_size_is_drawn_without_resizing(deepstream_artifact, tmp_path, monkeypatch,
                                                                       capsys):
    manifest = json.loads((deepstream_artifact / "manifest.json").read_text())
    assert manifest["graph_io"]["output_size"] == [64, 64]
    frames = []
    seen = drawn_labels(monkeypatch, frames)
    out = tmp_path / "same.mp4"
    assert run_app("--artifact", deepstream_artifact, "--input", "synthetic", "--output", out, "--frames", 3,
                   "--size", 64, 64, "--compare") == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["backend"] == "onnxruntime" and summary["model_output"] == [64, 64]
    assert summary["display_labels"] == "labels 64x64, already the display size (no resize)"
    assert summary["compare"]["compared_at"] == [64, 64] and summary["compare"]["pixel_agreement_min"] >= 0.99
    printed = capsys.readouterr().out
    assert "pixel agreement vs FP32 at the output resolution 64x64 (label maps before upsampling)" in printed
    # what is drawn is the argmax of the graph's probabilities itself, at the frame size
    session = pipeline.open_deployed(deepstream_artifact, manifest, "onnxruntime", None, None).session
    assert len(seen) == len(frames) == 4   # the warm-up, then the three frames
    for image, drawn in zip(frames[1:], seen[1:]):
        probabilities = session.run(preprocess(image, (64, 64))[None]).logits
        assert probabilities.shape == (1, 6, 64, 64)
        np.testing.assert_array_equal(drawn, to_labels(probabilities)[0])

    # frames of another size: the probabilities are resized bilinearly like logits
    seen.clear()
    out = tmp_path / "other.mp4"
    assert run_app("--artifact", deepstream_artifact, "--input", "synthetic", "--output", out, "--frames", 2,
                   "--size", 96, 128) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["display_labels"] == "scores 64x64 resized bilinearly to 96x128, then argmax"
    assert all(m.shape == (96, 128) for m in seen)
