"""Ordinary and hostile data for biformer-qat --data and biformer-export --int8 --calib: image folders of every size,
aspect ratio and pixel format, videos, training sets that are not whole batches, sample counts that cannot fit in
memory, decompression bombs, and recipes that are FIFOs or binary. Small: the demo model at 64x64, a step or two."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("modelopt.torch.quantization", reason="QAT and INT8 need NVIDIA ModelOpt: pip install '.[int8]'")

from biformer_edge import memory  # noqa: E402
from biformer_edge.cli import export_main, qat_main  # noqa: E402
from biformer_edge.data import render_scene  # noqa: E402
from biformer_edge.data.images import image_size, read_rgb  # noqa: E402
from biformer_edge.preprocess import preprocess  # noqa: E402
from biformer_edge.quant import qar  # noqa: E402
from biformer_edge.quant.calibration import calibration_inputs, resolve_recipe  # noqa: E402
from biformer_edge.quant.qat import QATSettings, training_data  # noqa: E402
from biformer_edge.quant.qat_checkpoint import read_qat_checkpoint  # noqa: E402
from tests.helpers import SIZE, run_cli  # noqa: E402

# (H, W) of the folder's images: landscape, portrait, extreme strips, odd sizes, and one at the model's own size
SHAPES = [(96, 128), (128, 96), (40, 48), (24, 200), (200, 24), (63, 65), (64, 64), (77, 31)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BIFORMER_EDGE_CACHE", str(tmp_path_factory.getbasetemp() / "calib-cache"))


@pytest.fixture(autouse=True)
def no_keep_float_search(monkeypatch):
    """The keep-float search may spend up to 90 s on images unlike the demo model's scenes; what is tested here is
    the data getting to it, so it stops at its first score."""
    monkeypatch.setattr(qar, "MAX_STEPS", 0)


def write_folder(folder: Path) -> list[Path]:
    """Photos as users have them: every shape above as PNG and JPEG, plus grayscale, RGBA and 16-bit PNGs, a BMP
    and a WebP: 21 images, a count that is no multiple of any batch used here."""
    folder.mkdir()
    files = []
    for i, (h, w) in enumerate(SHAPES):
        bgr = np.ascontiguousarray(render_scene(i, (max(h, 32), max(w, 32)))[0][:h, :w, ::-1])
        for ext in ("png", "jpg"):
            files.append(folder / f"{i}-{h}x{w}.{ext}")
            cv2.imwrite(str(files[-1]), bgr)
    rgb = render_scene(50, (72, 56))[0]
    extra = {"gray.png": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
             "rgba.png": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 128, np.uint8)]),
             "deep.png": rgb[..., ::-1].astype(np.uint16) * 257,
             "frame.bmp": rgb[..., ::-1], "frame.webp": rgb[..., ::-1]}
    for name, image in extra.items():
        files.append(folder / name)
        cv2.imwrite(str(files[-1]), np.ascontiguousarray(image))
    return sorted(files)


def write_video(path: Path, frames: int = 20) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (80, 48))
    for i in range(frames):
        writer.write(np.ascontiguousarray(render_scene(i, (48, 80))[0][..., ::-1]))
    writer.release()
    return path


def write_bomb(path: Path) -> Path:
    """A 12000x12000 black PNG: 144 megapixels (144 MB decoded, more as RGB floats) in a file of ~160 KB."""
    cv2.imwrite(str(path), np.zeros((12000, 12000), np.uint8))
    return path


def one_line_error(capsys, message: str) -> str:
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------------------------------ ordinary image folders
def test_qat_trains_on_a_folder_of_mixed_images_and_a_video(tmp_path, capsys):
    """41 images (21 photos, 20 frames) are 36 to train on and 5 held out: fewer than the 128 calibration samples
    and no whole number of batches of 5."""
    write_folder(tmp_path / "photos")
    clip = write_video(tmp_path / "clip.mp4")
    out = tmp_path / "q.pt"
    assert run_cli(qat_main, [*SIZE, "--data", tmp_path / "photos", clip, "--batch", "5", "--steps", "1",
                              "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "training on 36, holding out 5" in printed, printed
    for note in ("grayscale expanded to RGB", "alpha channel dropped", "16-bit scaled to 8-bit"):
        assert note in printed, note
    assert read_qat_checkpoint(out)["train"]["steps"] == 1


@pytest.mark.parametrize("extra", [["--samples", "20"], ["--batch", "3", "--samples", "16"]])
def test_qat_on_synthetic_scenes_that_are_not_whole_batches(extra, tmp_path):
    out = tmp_path / "q.pt"
    assert run_cli(qat_main, [*SIZE, *extra, "--val-samples", "4", "--steps", "1", "--output", out]) == 0
    assert read_qat_checkpoint(out)["train"]["steps"] == 1


def test_qat_data_is_preprocessed_exactly_as_inference(tmp_path):
    files = write_folder(tmp_path / "photos")
    settings = QATSettings(model="biformer_seg_demo", data=[str(tmp_path / "photos")], samples=len(files) - 3,
                           val_samples=3, batch=4)
    train, val, _ = training_data(settings, (64, 64), log=lambda *_: None)
    expected = np.stack([preprocess(read_rgb(f)[0], (64, 64)) for f in files])
    assert train.dtype == np.float32 and train.shape == (len(files) - 3, 3, 64, 64)
    np.testing.assert_array_equal(np.concatenate([train, val]), expected)


def test_int8_calibration_inputs_from_a_folder_of_mixed_images_and_a_video(tmp_path):
    """What biformer-export --int8 --calib calibrates on (a whole export takes a minute here; its CLI paths are
    covered by the refusals below and by tests/test_int8.py): every image preprocessed as inference does, 21 photos
    and 6 of the video's frames rounded up to whole batches of 2."""
    files = write_folder(tmp_path / "photos")
    clip = write_video(tmp_path / "clip.mp4")
    recipe = resolve_recipe([str(tmp_path / "photos"), str(clip)], 27)
    batches = calibration_inputs(recipe, (2, 3, 64, 64))
    assert batches.shape == (14, 2, 3, 64, 64) and batches.dtype == np.float32
    flat = batches.reshape(-1, 3, 64, 64)
    np.testing.assert_array_equal(flat[:21], np.stack([preprocess(read_rgb(f)[0], (64, 64)) for f in files]))
    np.testing.assert_array_equal(flat[27], flat[0])   # the last batch is filled with the first sample again
    assert any("alpha channel dropped" in note for note in recipe.notes)


# ------------------------------------------------------------------------------------------ memory and pixel caps
@pytest.fixture
def small_machine(monkeypatch):
    """A machine with 256 MiB available: enough for the demo model at 64x64, not for thousands of samples."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 256 << 20)


def test_qat_samples_that_cannot_fit_are_refused_before_rendering(tmp_path, capsys, small_machine):
    out = tmp_path / "q.pt"
    assert run_cli(qat_main, [*SIZE, "--samples", "2000", "--steps", "1", "--output", out]) == 2
    one_line_error(capsys, "GiB in memory, more than this machine can hold now: use --samples ")
    assert list(tmp_path.iterdir()) == []


def test_qat_data_that_cannot_fit_is_refused_after_at_most_one_image_too_many(tmp_path, capsys, monkeypatch):
    write_folder(tmp_path / "photos")
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)   # room for 4 samples at 64x64
    decoded = []
    real = read_rgb
    monkeypatch.setattr("biformer_edge.data.images.read_rgb", lambda *a: decoded.append(1) or real(*a))
    out = tmp_path / "q.pt"
    assert run_cli(qat_main, [*SIZE, "--data", tmp_path / "photos", "--batch", "2", "--output", out]) == 2
    one_line_error(capsys, "use --samples 4 or fewer")
    assert len(decoded) == 5 and not out.exists()


def test_huge_sample_counts_are_refused_at_once(tmp_path, capsys):
    started = time.perf_counter()
    assert run_cli(qat_main, [*SIZE, "--samples", "100000000", "--output", tmp_path / "q.pt"]) == 2
    one_line_error(capsys, "--samples")
    assert run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, "--calib-samples", "100000000",
                                 "--output", tmp_path / "o"]) == 2
    one_line_error(capsys, "--calib-samples")
    assert time.perf_counter() - started < 60 and list(tmp_path.iterdir()) == []


def test_calibration_samples_that_cannot_fit_are_refused(tmp_path, capsys, small_machine):
    assert run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, "--calib-samples", "5000",
                                 "--output", tmp_path / "o"]) == 2
    one_line_error(capsys, "GiB in memory, more than this machine can hold now: use --calib-samples ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["qat", "export"])
def test_decompression_bomb_is_refused_from_its_header(command, tmp_path, capsys, monkeypatch):
    (tmp_path / "imgs").mkdir()
    write_folder(tmp_path / "imgs" / "ok")
    write_bomb(tmp_path / "imgs" / "zz-bomb.png")
    monkeypatch.setattr(cv2, "imread", _refuse_large_decodes(cv2.imread))
    out = tmp_path / "out"
    if command == "qat":
        code = run_cli(qat_main, [*SIZE, "--data", tmp_path / "imgs", "--batch", "4", "--output", out])
    else:
        code = run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, "--calib", tmp_path / "imgs",
                                     "--output", out])
    assert code == 2
    one_line_error(capsys, "is 12000x12000 (144 megapixels), over the 100 megapixels accepted")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def _refuse_large_decodes(imread):
    def guarded(path, *args):
        assert "bomb" not in Path(path).name, "the bomb was decoded"
        return imread(path, *args)
    return guarded


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "webp"])
def test_image_size_reads_the_header(ext, tmp_path):
    path = tmp_path / f"a.{ext}"
    cv2.imwrite(str(path), np.zeros((37, 53, 3), np.uint8))
    assert image_size(path) == (53, 37)


# ------------------------------------------------------------------------------------------------- hostile recipes
def test_fifo_recipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "recipe.toml"
    os.mkfifo(fifo)
    code = ("from biformer_edge.cli import export_main\n"
            f"export_main(['--target', 'onnx', '--int8', '--input-size', '64', '64', '--calib', {str(fifo)!r}, "
            f"'--output', {str(tmp_path / 'o')!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not a regular file" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]


def test_binary_recipe_is_one_line(tmp_path, capsys):
    (tmp_path / "recipe.toml").write_bytes(bytes(range(256)) * 4)
    assert run_cli(export_main, ["--target", "onnx", "--int8", *SIZE, "--calib", tmp_path / "recipe.toml",
                                 "--output", tmp_path / "o"]) == 2
    one_line_error(capsys, "is not UTF-8 text")
    assert not (tmp_path / "o").exists()
