"""biformer-export / biformer-parity end to end on a small model: artifacts, parity, bad input, atomicity."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import biformer_edge as be
from biformer_edge.cli import export_main, parity_main
from biformer_edge.fileio import sha256_file
from biformer_edge.parity import assert_parity
from tests.helpers import run_cli

SIZE = ["--input-size", "128", "128"]  # stage maps divisible by n_win: no padded regions, no routing ties


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "demo.pth"
    torch.save({"model": be.create_model("biformer_seg_demo", pretrained=False).state_dict()}, path)
    return path


def export_args(checkpoint, out, target="onnx", *extra):
    return ["--target", target, "--model", "biformer_seg_demo", "--checkpoint", checkpoint, *SIZE,
            "--output", out, *extra]


@pytest.fixture(scope="module")
def onnx_artifact(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "demo-onnx"
    assert run_cli(export_main, export_args(checkpoint, out)) == 0
    return out


def test_artifact_layout_and_manifest(onnx_artifact, checkpoint):
    m = json.loads((onnx_artifact / "manifest.json").read_text())
    assert {"model.onnx", "reference.npz"} <= set(m["files"])
    assert not {"parity.json", "parity.md"} & set(m["files"])  # reports of a check, rewritten by every re-check
    assert m["generator"] == "biformer-edge" and m["schema_version"] == 2
    assert m["precision"] == "fp32" and m["input_shape"] == [1, 3, 128, 128] and m["opset"] == 17
    assert m["parity"]["verdict"] == "pass" and m["routing_blocks"] == 4
    assert m["versions"]["torch"].startswith("2.13") and m["reference_device"].startswith("cpu")
    assert m["checkpoint_sha256"] == sha256_file(checkpoint)
    report = json.loads((onnx_artifact / "parity.json").read_text())
    ort = report["backends"]["onnxruntime"]["metrics"]
    assert ort["cosine"] >= 0.99999 and ort["pixel"] == 1.0 and ort["routing"] == 1.0
    with np.load(onnx_artifact / "reference.npz") as ref:
        assert ref["inputs"].shape == (4, 1, 3, 128, 128) and ref["routing_0"].shape == (4, 1, 64, 1)
        assert ref["affinity_0"].shape == (4, 1, 64, 64) and ref["affinity_0"].dtype == np.float32


def test_exports_are_reproducible(onnx_artifact, checkpoint, tmp_path):
    assert run_cli(export_main, export_args(checkpoint, tmp_path / "again")) == 0
    first = json.loads((onnx_artifact / "manifest.json").read_text())["files"]
    second = json.loads((tmp_path / "again" / "manifest.json").read_text())["files"]
    assert first == second


def test_parity_recheck_and_junit(onnx_artifact, tmp_path, capsys):
    assert run_cli(parity_main, [onnx_artifact, "--junit", tmp_path / "j.xml"]) == 0
    assert "| onnxruntime |" in capsys.readouterr().out
    xml = (tmp_path / "j.xml").read_text()
    assert 'tests="1" failures="0"' in xml


def test_assert_parity_fails_with_the_table_when_a_threshold_is_missed(onnx_artifact):
    with pytest.raises(AssertionError, match=r"parity failed[\s\S]*\| onnxruntime \|"):
        assert_parity(onnx_artifact, max_abs=0.0, sqnr_db=1000)
    assert assert_parity(onnx_artifact, pixel=0.999)["verdict"] == "pass"


def test_assert_parity_refuses_a_misspelt_threshold(onnx_artifact):
    with pytest.raises(be.UserError, match="unknown parity threshold 'pixle'.*pixel"):
        assert_parity(onnx_artifact, pixle=0.999)


def test_export_exits_1_when_parity_fails(checkpoint, tmp_path, monkeypatch, capsys):
    import biformer_edge.targets as targets
    real = targets.load_profile

    def strict_profile(target):
        profile = real(target)
        profile["thresholds"]["fp32"]["max_abs"] = 0.0   # no runtime reproduces FP32 PyTorch to the last bit
        profile["thresholds"]["fp32"]["sqnr_db"] = 1000
        return profile
    monkeypatch.setattr("biformer_edge.exporter.load_profile", strict_profile)
    out = tmp_path / "strict"
    assert run_cli(export_main, export_args(checkpoint, out)) == 1
    assert "parity: fail" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["parity"]["verdict"] == "fail"


def test_parity_with_data_needs_original_checkpoint(onnx_artifact, checkpoint, tmp_path):
    import cv2

    from biformer_edge.data import render_scene
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), render_scene(100 + i, (80, 96))[0][..., ::-1])
    report = assert_parity(onnx_artifact, data=tmp_path, pixel=0.999)
    assert report["reference"]["data"] == str(tmp_path)
    other = tmp_path / "other.pth"
    torch.save(be.create_model("biformer_seg_demo", pretrained=False).state_dict(), other)
    assert run_cli(parity_main, [onnx_artifact, "--data", tmp_path, "--checkpoint", other]) == 2


def test_tampered_artifact_is_rejected(onnx_artifact, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(onnx_artifact, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert run_cli(parity_main, [copy]) == 2


@pytest.mark.parametrize("args,message", [
    (["--target", "tensorflow"], "unsupported target 'tensorflow'"),
    (["--target", "onnx", "--model", "biformer_huge"], "unknown model 'biformer_huge'"),
    (["--target", "coreml", "--bf16"], "unrecognized arguments: --bf16"),
    (["--target", "onnx", "--checkpoint", "/nonexistent.pth"], "does not exist"),
    (["--target", "onnx", "--input-size", "16", "16"], "below the minimum"),
    (["--target", "onnx", "--dla-core", "0"], "--dla-core does not apply to --target onnx"),
    (["--target", "jetson", "--dla-core", "0"], "DLA is not offered for BiFormer"),
    (["--target", "onnx", "--calib", "x"], "only apply to --int8"),
    (["--target", "onnx", "--batch", "0"], "--batch: must be >= 1"),
    (["--target", "jetson", "--workspace-mib", "-5"], "--workspace-mib: must be >= 1"),
    (["--target", "onnx", "--input-size", "100000", "100000"], "use a smaller --input-size"),
    (["--target", "onnx", "--batch", "100000"], "use a smaller --input-size or --batch"),
    (["--target", "coreml", "--ios", "12"], "--ios must be 16, 17 or 18"),
    (["--target", "onnx", "--fp16", "--routing", "naive"], "--routing naive only changes INT8 exports"),
    (["--target", "openvino", "--int8", "--cpu", "zen4"], "--cpu must be one of portable, avx2, vnni, amx"),
    (["--target", "onnx", "--int8", "--cpu", ""], "--cpu must be one of portable, avx2, vnni, amx"),
    (["--target", "openvino", "--cpu", "vnni"], "--cpu only changes INT8 exports"),
    (["--target", "jetson", "--int8", "--cpu", "avx2"], "--cpu does not apply to --target jetson"),
    (["--target", "coreml", "--int8", "--cpu", "vnni"], "--cpu does not apply to --target coreml"),
    pytest.param(["--target", "onnx", "--reference", "cuda"], "no CUDA GPU is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(export_main, args + ["--output", out]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_mismatched_and_corrupt_checkpoints(tmp_path, capsys):
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02garbage")
    torch.save(be.create_model("biformer_tiny", pretrained=False).state_dict(), tmp_path / "tiny.pth")
    for ckpt, message in [("corrupt.pth", "not a readable PyTorch file"), ("tiny.pth", "classification checkpoint")]:
        assert run_cli(export_main, ["--target", "onnx", "--checkpoint", tmp_path / ckpt, "--output",
                                     tmp_path / "out"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_artifact_needs_force(checkpoint, tmp_path):
    out = tmp_path / "o"
    assert run_cli(export_main, export_args(checkpoint, out, "onnx", "--no-parity")) == 0
    before = (out / "manifest.json").read_bytes()
    assert run_cli(export_main, export_args(checkpoint, out, "onnx", "--no-parity")) == 2
    assert (out / "manifest.json").read_bytes() == before
    assert run_cli(export_main, export_args(checkpoint, out, "onnx", "--no-parity", "--force")) == 0
    assert (out / "model.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temp, old or lock files left


def test_unwritable_output(checkpoint, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a directory")
    assert run_cli(export_main, export_args(checkpoint, tmp_path / "a_file" / "out")) == 2
    assert "a_file is a file; choose another --output" in capsys.readouterr().err


def test_failure_midway_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    import biformer_edge.backends.onnx.export as onnx_backend

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(onnx_backend, "export_onnx", boom)
    assert run_cli(export_main, export_args(checkpoint, tmp_path / "out")) == 130
    assert list(tmp_path.iterdir()) == []


def test_console_script_runs_as_a_process(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from biformer_edge.cli import export_main; export_main()",
                           "--target", "nope", "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unsupported target 'nope'")


def test_jetson_fp16_artifact(checkpoint, tmp_path):
    out = tmp_path / "jetson"
    assert run_cli(export_main, export_args(checkpoint, out, "jetson")) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"] == "fp16" and m["checks"]["tensorrt_onnx"]["ok"]
    assert {"model.onnx", "build_engine.sh", "build_engine.py"} <= set(m["files"])
    assert "--stronglyTyped" in (out / "build_engine.sh").read_text()
    report = json.loads((out / "parity.json").read_text())
    assert report["backends"]["onnxruntime"]["verdict"] == "pass"
    assert report["backends"]["tensorrt"]["verdict"] == "skipped"
