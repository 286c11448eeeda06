"""biformer-qat: routing-consistent QAT. Small runs of the shipped demo model at 64x64 (a few seconds each): the
checkpoint it writes, that every INT8 target consumes it and measures drift against the original FP32 model, that a
resumed run equals an uninterrupted one, that torchrun with 2 CPU processes gives the same result as one, and the
bad inputs of the issue (one line, exit 2, nothing lost)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("modelopt.torch.quantization", reason="QAT needs NVIDIA ModelOpt: pip install '.[int8]'")

from biformer_edge.cli import export_main, qat_main  # noqa: E402
from biformer_edge.models import create_model  # noqa: E402
from biformer_edge.models.checkpoint import read_state_dict  # noqa: E402
from biformer_edge.models.registry import WEIGHTS_DIR  # noqa: E402
from biformer_edge.quant import qat as qat_module  # noqa: E402
from biformer_edge.quant.qat import QATSettings, routing_margin_loss, train  # noqa: E402
from biformer_edge.quant.qat_checkpoint import read_qat_checkpoint, state_path  # noqa: E402
from tests.helpers import one_error_line, run_cli  # noqa: E402

SMALL = ["--input-size", "64", "64", "--samples", "16", "--val-samples", "8", "--calib-samples", "8", "--batch", "4"]


def small(**kw) -> QATSettings:
    base = dict(model="biformer_seg_demo", input_size=(64, 64), samples=16, val_samples=8, calib_samples=8, batch=4,
                steps=4, save_every=1)
    return QATSettings(**{**base, **kw})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interrupt_at(monkeypatch, at_step: int, signum=signal.SIGINT):
    """Send ``signum`` to this process when the training loop asks for step ``at_step``'s batch (QAT handles it at
    the step boundary). Returns a function that removes the patch."""
    real = qat_module.batch_indices

    def patched(seed, step, n, batch):
        if step == at_step:
            os.kill(os.getpid(), signum)
        return real(seed, step, n, batch)
    monkeypatch.setattr(qat_module, "batch_indices", patched)
    return lambda: monkeypatch.setattr(qat_module, "batch_indices", real)


@pytest.fixture(scope="module")
def qat_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "demo-qat.pt"
    assert run_cli(qat_main, [*SMALL, "--steps", "6", "--output", out]) == 0
    return out


def test_checkpoint_holds_weights_ranges_and_the_original_model(qat_file):
    qat = read_qat_checkpoint(qat_file)
    assert qat["model"] == "biformer_seg_demo" and qat["routing"] == "qar"
    shipped = read_state_dict(WEIGHTS_DIR / "biformer_seg_demo.pt")
    # the reference is the original FP32 model, bit for bit, never the fine-tuned weights
    assert qat["reference_state_dict"].keys() == shipped.keys()
    assert all(torch.equal(qat["reference_state_dict"][k], shipped[k]) for k in shipped)
    assert qat["reference"]["sha256"] == sha(WEIGHTS_DIR / "biformer_seg_demo.pt")
    changed = [k for k in shipped if not torch.equal(qat["state_dict"][k].float(), shipped[k].float())]
    assert changed, "training changed no weight"
    assert all(v.numel() >= 1 and float(v.min()) > 0 for v in qat["quantizers"].values())
    train_record = qat["train"]
    assert train_record["steps"] == 6 and train_record["processes"] == 1
    for key in ("routing_decisive", "routing_regret", "routing_strict", "label_agreement"):
        assert 0 <= train_record["before"][key] <= 1 and 0 <= train_record["after"][key] <= 1
    assert not state_path(qat_file).exists(), "a finished run leaves no resume state"


@pytest.mark.parametrize("target", ["jetson", "openvino"])
def test_every_qdq_target_consumes_the_checkpoint_and_compares_with_the_original(qat_file, target, tmp_path):
    pytest.importorskip("onnxruntime" if target == "jetson" else "openvino")
    out = tmp_path / target
    assert run_cli(export_main, ["--target", target, "--int8", "--checkpoint", qat_file, "--input-size", "64", "64",
                                 "--output", out]) in (0, 1)
    m = json.loads((out / "manifest.json").read_text())
    q = m["quantization"]
    assert q["qat"]["sha256"] == sha(qat_file) and q["qat"]["shipped"] is False
    assert q["qat"]["reference"]["sha256"] == sha(WEIGHTS_DIR / "biformer_seg_demo.pt")   # both checkpoints
    assert q["calibration"]["source"] == "qat checkpoint" and q["int8_weight_share"] >= 0.9
    report = json.loads((out / "parity.json").read_text())
    assert report["thresholds"]["routing_decisive"] == 0.95 and report["thresholds"]["routing_regret"] == 0.006


def test_reference_is_the_original_model_not_the_fine_tuned_one(qat_file, tmp_path):
    """Drift is measured against the user's original FP32 model: with fine-tuned weights moved far from it, the
    artifact's reference logits still are the original model's."""
    from biformer_edge.quant.prepare import qat_float_model

    def move_weights(obj):
        obj["state_dict"] = {k: v + 0.05 if v.is_floating_point() and "weight" in k else v
                             for k, v in obj["state_dict"].items()}
    moved = tampered(qat_file, tmp_path / "moved.pt", move_weights)
    out = tmp_path / "art"
    assert run_cli(export_main, ["--target", "onnx", "--int8", "--checkpoint", moved, "--input-size", "64", "64",
                                 "--output", out]) in (0, 1)
    ref = np.load(out / "reference.npz")
    x = torch.from_numpy(ref["inputs"][0])
    with torch.no_grad():
        original = create_model("biformer_seg_demo")(x).numpy()
        fine_tuned = qat_float_model(read_qat_checkpoint(moved))(x).numpy()
    np.testing.assert_allclose(ref["logits"][0], original, atol=1e-5)
    assert np.abs(ref["logits"][0] - fine_tuned).max() > 1e-2


def test_onnx_graph_runs_the_trained_ranges_not_a_new_calibration(qat_file, tmp_path):
    """The exported INT8 graph computes what the QAT student computed (its weights and its INT8 ranges)."""
    ort = pytest.importorskip("onnxruntime")
    from biformer_edge.models.routing import run_torch
    from biformer_edge.quant.prepare import prepare_qat
    out = tmp_path / "onnx"
    assert run_cli(export_main, ["--target", "onnx", "--int8", "--checkpoint", qat_file, "--input-size", "64", "64",
                                 "--no-parity", "--output", out]) == 0
    student, _ = prepare_qat(read_qat_checkpoint(qat_file), {"checkpoint": str(qat_file), "sha256": "-",
                                                             "shipped": False}, log=lambda *_: None)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x})[0]
    want = run_torch(student.model, x).logits
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999


def test_coreml_int8_quantizes_the_fine_tuned_weights(qat_file, tmp_path):
    pytest.importorskip("coremltools")
    out = tmp_path / "coreml"
    assert run_cli(export_main, ["--target", "coreml", "--int8", "--checkpoint", qat_file, "--input-size", "64", "64",
                                 "--no-parity", "--output", out]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantization"]["qat"]["sha256"] == sha(qat_file)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    straight, _ = train(small(output=str(tmp_path / "straight.pt")), log=lambda *_: None)
    resumed = tmp_path / "resumed.pt"
    restore = interrupt_at(monkeypatch, 2)   # the state is saved at the step boundary, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        train(small(output=str(resumed)), log=lambda *_: None)
    restore()
    state = torch.load(state_path(resumed), weights_only=True)
    assert state["step"] == 3 and not resumed.exists()
    train(small(output=str(resumed), resume=True), log=lambda *_: None)
    a, b = read_qat_checkpoint(straight), read_qat_checkpoint(resumed)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["train"]["after"] == b["train"]["after"]


def test_resume_with_other_settings_is_refused_and_keeps_the_state(tmp_path, monkeypatch, capsys):
    out = tmp_path / "q.pt"
    restore = interrupt_at(monkeypatch, 1, signal.SIGTERM)
    code = run_cli(qat_main, [*SMALL, "--steps", "4", "--save-every", "1", "--output", out])
    restore()
    assert code == 143
    assert "--resume" in capsys.readouterr().err
    saved = state_path(out).read_bytes()
    for extra, what in ((["--lr", "1e-4"], "lr"), (["--seed", "3"], "seed"), (["--steps", "5"], "steps"),
                        (["--routing-margin", "0.3"], "routing margin"), (["--margin", "0.1"], "margin")):
        assert run_cli(qat_main, [*SMALL, "--steps", "4", *extra, "--output", out, "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"other {what}" in err and err.count("\n") == 1, err
    assert state_path(out).read_bytes() == saved and not out.exists()
    assert run_cli(qat_main, [*SMALL, "--steps", "4", "--output", out]) == 2          # unfinished run: no --resume
    assert "--resume" in capsys.readouterr().err
    assert run_cli(qat_main, [*SMALL, "--steps", "4", "--output", out, "--resume"]) == 0
    assert out.is_file() and not state_path(out).exists()


def test_routing_margin_flag_adds_the_hinge_on_the_students_own_affinities(qat_file, tmp_path):
    """--routing-margin W adds W x the teacher-free margin hinge (models/routing_margin.py) to the loss: with the same
    seed and data as the W=0 run of ``qat_file``, the trained weights differ and the student's hinge at the last step
    (same batch in both runs) is lower; both runs record the term's settings."""
    out = tmp_path / "margin.pt"
    assert run_cli(qat_main, [*SMALL, "--steps", "6", "--routing-margin", "10", "--margin", "0.05",
                              "--output", out]) == 0
    plain, margin = read_qat_checkpoint(qat_file), read_qat_checkpoint(out)
    assert plain["train"]["settings"]["routing_margin"] == 0 and margin["train"]["settings"]["routing_margin"] == 10
    assert margin["train"]["settings"]["margin"] == 0.05
    assert any(not torch.equal(plain["state_dict"][k], margin["state_dict"][k]) for k in plain["state_dict"])
    *_, plain_hinge = plain["train"]["final_loss"]     # [distillation, routing ranking, margin hinge]
    *_, margin_hinge = margin["train"]["final_loss"]
    assert 0 < margin_hinge < plain_hinge, (margin_hinge, plain_hinge)


@pytest.mark.parametrize("flag, value", [("--routing-margin", "-0.1"), ("--routing-margin", "nan"),
                                         ("--routing-margin", "1e3"), ("--margin", "0"), ("--margin", "1"),
                                         ("--margin", "inf")])
def test_bad_routing_margin_is_one_line_and_writes_nothing(flag, value, tmp_path, capsys):
    assert run_cli(qat_main, [*SMALL, "--steps", "2", flag, value, "--output", tmp_path / "out.pt"]) == 2
    assert f"{flag} must be in" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_routing_loss_cannot_be_met_by_scaling_the_affinities():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 16, 16)]
    student = [teacher[0] + 0.3 * torch.randn(2, 16, 16)]
    loss = routing_margin_loss(student, teacher, [4])
    assert loss > 0
    assert torch.allclose(routing_margin_loss([10 * student[0]], teacher, [4]), loss, rtol=1e-5)
    assert routing_margin_loss(teacher, teacher, [4]) < loss


@pytest.mark.parametrize("case", ["empty folder", "undecodable", "regret 0", "regret 1.5", "lr 0", "not ours",
                                  "symlink output", "qat as teacher", "no weights"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, qat_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not a png")
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"user data")
    link = tmp_path / "link.pt"
    link.symlink_to(victim)
    args, message = {
        "empty folder": (["--data", empty], "holds no images"),
        "undecodable": (["--data", tmp_path / "bad"], "--data"),
        "regret 0": (["--max-routing-regret", "0"], "--max-routing-regret must be in (0, 1]"),
        "regret 1.5": (["--max-routing-regret", "1.5"], "--max-routing-regret must be in (0, 1]"),
        "lr 0": (["--lr", "0"], "--lr must be in (0, 1]"),
        "not ours": (["--output", victim, "--force"], "not a biformer-qat checkpoint"),
        "symlink output": (["--output", link, "--force"], "symbolic link"),
        "qat as teacher": (["--checkpoint", qat_file], "is a QAT checkpoint"),
        "no weights": (["--model", "biformer_tiny"], "ships no weights"),
    }[case]
    if "--output" not in args:
        args = [*args, "--output", tmp_path / "out.pt"]
    assert run_cli(qat_main, [*SMALL, "--steps", "2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert victim.read_bytes() == b"user data" and not (tmp_path / "out.pt").exists()
    assert not list(tmp_path.glob("*.resume"))


@pytest.mark.parametrize("extra, message", [
    (["--model", "biformer_tiny"], "was trained for biformer_seg_demo"),
    (["--fp16"], "exports only with --int8"),
    (["--int8", "--routing", "naive"], "--routing naive does not apply"),
    (["--int8", "--calib-samples", "8"], "--calib does not apply"),
])
def test_qat_checkpoint_misuse_in_export_is_one_line(qat_file, extra, message, tmp_path, capsys):
    args = ["--target", "onnx", "--checkpoint", qat_file, *extra, "--output", tmp_path / "o"]
    if "--fp16" not in extra and "--int8" not in extra:
        args.append("--int8")
    assert run_cli(export_main, args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_torchrun_two_processes_match_one(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) splits each global batch; DDP averages the gradients: the result
    equals the single-process run up to summation order."""
    qat = shutil.which("biformer-qat")
    if qat is None:
        pytest.skip("biformer-qat is not installed as a command (pip install -e .)")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    args = [*SMALL, "--steps", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([qat, *map(str, args), "--output", str(one)], check=True, capture_output=True, env=env)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(29500 + os.getpid() % 1000), qat, *map(str, args), "--output", str(two)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = read_qat_checkpoint(one), read_qat_checkpoint(two)
    assert b["train"]["processes"] == 2
    # Adam turns near-zero gradients into +-lr steps, so single weights may differ by summation order; the update as
    # a whole must point the same way
    def update(c):
        return torch.cat([(c["state_dict"][k] - c["reference_state_dict"][k].float()).ravel() for k in c["state_dict"]])
    cos = float(torch.nn.functional.cosine_similarity(update(a), update(b), dim=0))
    assert cos > 0.999, cos
    for key in ("routing_decisive", "routing_strict", "label_agreement"):
        assert abs(a["train"]["after"][key] - b["train"]["after"][key]) < 0.02


def test_default_int8_export_uses_the_shipped_qat_state(tmp_path):
    """`biformer-export --target jetson --int8` on the default model exports its shipped QAT state (no calibration),
    with the shipped FP32 weights as the reference; --calib-samples forces calibration (PTQ-QAR) instead."""
    shipped = WEIGHTS_DIR / "biformer_seg_demo_qat.pt"
    if not shipped.is_file():
        pytest.skip("this checkout ships no QAT state (biformer_edge/weights/biformer_seg_demo_qat.pt)")
    qat = read_qat_checkpoint(shipped)
    assert qat["reference"]["sha256"] == sha(WEIGHTS_DIR / "biformer_seg_demo.pt"), "shipped QAT state is stale"
    out = tmp_path / "default"
    assert run_cli(export_main, ["--target", "jetson", "--int8", "--input-size", "64", "64", "--no-parity",
                                 "--output", out]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["weights"] == "shipped" and m["quantization"]["qat"]["shipped"] is True
    assert m["quantization"]["qat"]["sha256"] == sha(shipped)
    ptq = tmp_path / "ptq"
    assert run_cli(export_main, ["--target", "onnx", "--int8", "--input-size", "64", "64", "--calib-samples", "8",
                                 "--no-parity", "--output", ptq]) == 0
    assert "qat" not in json.loads((ptq / "manifest.json").read_text())["quantization"]


@pytest.mark.parametrize("target", ["jetson", "tensorrt", "onnx", "openvino"])
def test_qar_int8_is_held_to_decisive_and_regret_limits_naive_is_not(target):
    from biformer_edge.metrics import check_thresholds
    from biformer_edge.parity.check import profile_thresholds
    from biformer_edge.targets import load_profile
    profile = load_profile(target)
    qar = profile_thresholds(profile, {"precision": "int8", "routing": "qar"})
    naive = profile_thresholds(profile, {"precision": "int8", "routing": "naive"})
    check_thresholds(qar)
    assert "routing_decisive" not in naive and "routing_regret" not in naive
    assert qar["routing_decisive"] >= 0.95 and qar["routing_regret"] <= 0.006 and qar["routing"] > naive["routing"]
    assert profile_thresholds(profile, {"precision": "fp16", "routing": "qar"}) == profile["thresholds"]["fp16"]


def tampered(src: Path, dst: Path, edit) -> Path:
    obj = torch.load(src, weights_only=True)
    edit(obj)
    torch.save(obj, dst)
    return dst


@pytest.mark.parametrize("case, message", [
    ("negative range", "not a positive number"),
    ("range of another shape", "does not match this model's quantizers"),
    ("train record is text", "train record"),
    ("weights of another model", "do not fit biformer_seg_demo"),
    ("unknown model name", "unknown model"),
    ("integer weights", "not floating point"),
])
def test_tampered_qat_checkpoint_is_one_line(qat_file, case, message, tmp_path, capsys):
    def edit(obj):
        first = next(iter(obj["quantizers"]))
        if case == "negative range":
            obj["quantizers"][first] = -obj["quantizers"][first]
        elif case == "range of another shape":
            obj["quantizers"][first] = torch.ones(7, 3)
        elif case == "train record is text":
            obj["train"] = "trained"
        elif case == "weights of another model":
            obj["state_dict"].pop(next(iter(obj["state_dict"])))
        elif case == "unknown model name":
            obj["model"] = "biformer_nonexistent"
        else:
            key = next(k for k, v in obj["state_dict"].items() if v.is_floating_point())
            obj["state_dict"][key] = obj["state_dict"][key].long()
    bad = tampered(qat_file, tmp_path / "bad.pt", edit)
    out = tmp_path / "o"
    assert run_cli(export_main, ["--target", "onnx", "--int8", "--checkpoint", bad, "--input-size", "64", "64",
                                 "--no-parity", "--output", out]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.glob(".o*"))


@pytest.fixture
def interrupted_run(tmp_path, monkeypatch):
    out = tmp_path / "q.pt"
    restore = interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(small(output=str(out)), log=lambda *_: None)
    restore()
    return out


def _first_input_range(obj) -> str:
    return next(k for k in obj["quantizers"] if k.endswith("input_quantizer"))


# How a resume state can be damaged or tampered with, and what the one-line refusal names.
DAMAGED_STATES = {
    "no student": (lambda obj: obj.pop("student"), "'student'"),
    "step beyond the run": (lambda obj: obj.update(step=99), "step 99 of 4"),
    "weights of another model": (lambda obj: obj.update(student={"x": torch.zeros(1)}), "weights of another model"),
    "no optimizer": (lambda obj: obj.pop("optimizer"), "'optimizer' missing"),
    "a metric missing": (lambda obj: obj["before"].pop("routing_decisive"), "before"),
    "history of another type": (lambda obj: obj.update(history=[1, 2]), "history"),
    "optimizer moments of another shape": (
        lambda obj: obj["optimizer"]["state"][0].update(exp_avg=torch.zeros(7)), "optimizer 'exp_avg'"),
    "range of another rank": (
        lambda obj: obj["quantizers"].update({_first_input_range(obj): obj["quantizers"][
            _first_input_range(obj)].reshape(1, 1, 1, 1, 1, 1)}), "INT8 ranges that do not fit"),
}


@pytest.mark.parametrize("case", list(DAMAGED_STATES))
def test_damaged_resume_state_is_one_line_and_kept(interrupted_run, case, capsys):
    edit, message = DAMAGED_STATES[case]
    state = state_path(interrupted_run)
    tampered(state, state, edit)
    before = state.read_bytes()
    assert run_cli(qat_main, [*SMALL, "--steps", "4", "--save-every", "1", "--output", interrupted_run,
                              "--resume"]) == 2
    assert message in one_error_line(capsys)
    assert state.read_bytes() == before and not interrupted_run.exists()


def test_interrupt_during_the_final_evaluation_keeps_the_trained_state(tmp_path, monkeypatch):
    out = tmp_path / "q.pt"
    real, calls = qat_module.held_out_metrics, []

    def interrupt_after_training(*args, **kw):
        calls.append(1)
        if len(calls) == 2:    # the evaluation after the last step
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)
    monkeypatch.setattr(qat_module, "held_out_metrics", interrupt_after_training)
    from biformer_edge.console import Terminated
    with pytest.raises(Terminated, match="--resume"):
        train(small(output=str(out), save_every=3), log=lambda *_: None)
    monkeypatch.setattr(qat_module, "held_out_metrics", real)
    assert torch.load(state_path(out), weights_only=True)["step"] == 4 and not out.exists()
    train(small(output=str(out), save_every=3, resume=True), log=lambda *_: None)
    assert read_qat_checkpoint(out)["train"]["steps"] == 4 and not state_path(out).exists()


def test_output_directory_is_refused_with_the_right_advice(tmp_path, capsys):
    assert run_cli(qat_main, [*SMALL, "--steps", "2", "--output", tmp_path, "--force"]) == 2
    err = capsys.readouterr().err
    assert "is a directory: pass a file path" in err and err.count("\n") == 1
