"""Issue 15, hostile and ordinary inputs: damaged resume states, QAT checkpoints, calibration cache entries and
manifests get one line and exit 2 (never a traceback, exit 3); an output is never one of the run's inputs nor inside
an artifact; nonsense is refused or named; messages blame the right thing. Small: the demo model at 64x64, a few
steps."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("modelopt.torch.quantization", reason="QAT and INT8 need NVIDIA ModelOpt: pip install '.[int8]'")

from biformer_edge.cli import export_main, parity_main, qat_main  # noqa: E402
from biformer_edge.fileio import output_lock, sha256_file  # noqa: E402
from biformer_edge.models import create_model  # noqa: E402
from biformer_edge.models.registry import WEIGHTS_DIR  # noqa: E402
from biformer_edge.quant import qat as qat_module  # noqa: E402
from biformer_edge.quant.cache import read_entry, write_entry  # noqa: E402
from biformer_edge.quant.config import keep_float  # noqa: E402
from biformer_edge.quant.int8 import quantize  # noqa: E402
from biformer_edge.quant.qar import quantized_modules  # noqa: E402
from biformer_edge.quant.qat import train  # noqa: E402
from biformer_edge.quant.qat_checkpoint import read_qat_checkpoint, state_path  # noqa: E402
from tests.helpers import SIZE, copy_of, one_error_line, onnx_artifact, run_cli  # noqa: E402

from .test_qat import SMALL, interrupt_at, small, tampered  # noqa: E402

SHIPPED = WEIGHTS_DIR / "biformer_seg_demo.pt"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BIFORMER_EDGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def qat_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "demo-qat.pt"
    assert run_cli(qat_main, [*SMALL, "--steps", "2", "--output", out]) == 0
    return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return onnx_artifact(export_main, tmp_path_factory, "art")


@pytest.fixture
def copy(artifact, tmp_path):
    return copy_of(artifact, tmp_path)


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


# --- 2. damaged input is one line and exit 2, not an internal error --------------------------------------------------
# (damaged resume states: tests/test_qat.py, DAMAGED_STATES)

def all_float(obj):
    """Every quantized layer but one named float, and only the ranges such a model still has (a few % INT8)."""
    qmodel = quantize(create_model("biformer_seg_demo", pretrained=False), np.zeros((1, 0, 3, 1, 1), np.float32),
                      obj["config"], {k: v.numpy() for k, v in obj["quantizers"].items()}).model
    names = list(quantized_modules(qmodel))[1:]
    obj["config"] = keep_float(obj["config"], names)
    obj["quantizers"] = {k: v for k, v in obj["quantizers"].items() if k.rsplit(".", 1)[0] not in names}


@pytest.mark.parametrize("case, message", [
    ("activation range of another rank", "does not match this model's quantizers"),
    ("input size 0 -5", "input_size [0, -5]"),
    ("every layer float", "below the 90% every INT8 export holds"),
])
def test_damaged_or_nonsense_qat_checkpoint_is_one_line(qat_file, case, message, tmp_path, capsys):
    def edit(obj):
        ranges = obj["quantizers"]
        if case == "activation range of another rank":
            name = next(k for k in ranges if k.endswith("input_quantizer"))
            ranges[name] = ranges[name].reshape(1, 1, 1, 1, 1, 1)
        elif case == "input size 0 -5":
            obj["input_size"] = [0, -5]
        else:
            all_float(obj)
    bad = tampered(qat_file, tmp_path / "bad.pt", edit)
    out = tmp_path / "o"
    assert run_cli(export_main, ["--target", "onnx", "--int8", "--checkpoint", bad, *SIZE, "--no-parity",
                                 "--output", out]) == 2
    assert message in one_error_line(capsys)
    assert listing(tmp_path) == ["bad.pt"]


@pytest.mark.parametrize("extra, message", [
    (["--seed", str(2**64)], "--seed must be a whole number from 0 to 2**64-1"),
    (["--routing-weight", "1e300"], "--routing-weight must be in"),
])
def test_qat_settings_out_of_range_blame_the_right_option(extra, message, tmp_path, capsys):
    assert run_cli(qat_main, [*SMALL, "--steps", "1", *extra, "--output", tmp_path / "q.pt"]) == 2
    assert message in one_error_line(capsys)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("case", ["checks entry is a number", "routing ['x']",
                                  "routing naive with the router fp32", "quantization says naive, routing qar",
                                  "affinity of another shape"])
def test_tampered_manifest_or_reference_is_one_line_for_parity(copy, case, capsys):
    m = json.loads((copy / "manifest.json").read_text())
    if case == "checks entry is a number":
        m["checks"] = {"graph": 1}
    elif case == "routing ['x']":
        m["routing"] = ["x"]
    elif case == "routing naive with the router fp32":
        m["routing"] = "naive"
    elif case == "quantization says naive, routing qar":
        m["quantization"] = {"routing": "naive"}
    else:
        with np.load(copy / "reference.npz") as z:
            ref = {k: z[k] for k in z.files}
        ref["affinity_0"] = ref["affinity_0"][..., :1]
        np.savez(copy / "reference.npz", **ref)
        m["files"]["reference.npz"] = {"sha256": sha256_file(copy / "reference.npz"),
                                       "bytes": (copy / "reference.npz").stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(m))
    assert run_cli(parity_main, [copy]) == 2
    one_error_line(capsys)


# --- 5. the calibration cache is checked like a QAT checkpoint -----------------------------------------------------

def test_edited_or_nan_cache_entry_is_a_miss_with_a_note(qat_file, tmp_path):
    qat = read_qat_checkpoint(qat_file)
    ranges, config = {k: v.numpy() for k, v in qat["quantizers"].items()}, qat["config"]
    path, notes = tmp_path / "entry.npz", []
    write_entry(path, ranges, config)
    stored = read_entry(path, notes.append)
    assert set(stored[0]) == set(ranges) and stored[1] == config and notes == []
    with np.load(path) as z:
        forged = {k: z[k] for k in z.files}
    first = next(iter(qat["quantizers"]))
    forged[first] = forged[first] * 100          # ranges replaced, stored hash kept
    np.savez(path, **forged)
    assert read_entry(path, notes.append) is None and "damaged or was edited" in notes[-1]
    ranges[first] = np.full_like(ranges[first], np.nan)   # NaN ranges, hash recomputed: restoring refuses them
    write_entry(path, ranges, config)
    cached_ranges, cached_config = read_entry(path, notes.append)
    with pytest.raises(KeyError, match="not a finite positive number"):
        quantize(create_model("biformer_seg_demo", pretrained=False), np.zeros((1, 0, 3, 1, 1), np.float32),
                 cached_config, cached_ranges)


# --- 6. a resume is the same run however its checkpoint is spelled ------------------------------------------------

def test_resume_accepts_another_spelling_of_the_same_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(SHIPPED, tmp_path / "fp32.pt")
    restore = interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(small(output="q.pt", checkpoint="fp32.pt", steps=2), log=lambda *_: None)
    restore()
    train(small(output="q.pt", checkpoint="./fp32.pt", steps=2, resume=True), log=lambda *_: None)
    assert (tmp_path / "q.pt").is_file() and not state_path(tmp_path / "q.pt").exists()


# --- 7. the internal-error line points at no made-up address -----------------------------------------------------

def test_internal_error_line_names_debug_and_no_url(copy, monkeypatch, capsys):
    import biformer_edge.parity.check as check
    monkeypatch.setattr(check, "evaluate", lambda *a, **k: 1 / 0)
    assert run_cli(parity_main, [copy]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--debug" in err and "http" not in err, err


# --- 8, 11. an output is never an input of the run nor inside an artifact ------------------------------------------

def test_junit_never_replaces_an_input(copy, tmp_path, capsys):
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 90, np.uint8))
    ckpt = tmp_path / "fp32.pt"
    shutil.copy(SHIPPED, ckpt)
    os.link(ckpt, tmp_path / "hard.pt")
    before = {p: p.read_bytes() for p in (image, ckpt)}
    for junit, extra in ((image, ["--data", image]), (ckpt, ["--data", image, "--checkpoint", ckpt]),
                         (tmp_path / "hard.pt", ["--data", image, "--checkpoint", ckpt]),
                         (Path(os.path.relpath(image)), ["--data", image])):
        assert run_cli(parity_main, [copy, *extra, "--junit", junit]) == 2, junit
        assert "also an input of this run" in one_error_line(capsys)
    assert run_cli(parity_main, [copy, "--junit", ""]) == 2
    assert "--junit needs a file name" in one_error_line(capsys)
    assert all(p.read_bytes() == data for p, data in before.items())


def test_qat_and_export_outputs_are_never_their_inputs(tmp_path, capsys):
    ckpt, data = tmp_path / "fp32.pt", tmp_path / "imgs"
    shutil.copy(SHIPPED, ckpt)
    data.mkdir()
    (data / "a.png").write_bytes(b"not even an image")
    before = listing(tmp_path)
    cases = [
        (qat_main, [*SMALL, "--checkpoint", ckpt, "--output", ckpt, "--force"], "also an input"),
        (qat_main, [*SMALL, "--data", data, "--output", data / "q.pt"], "inside the input folder"),
        (export_main, ["--target", "onnx", *SIZE, "--data", data, "--output", data / "art"],
         "inside the input folder"),
    ]
    for main, args, message in cases:
        assert run_cli(main, args) == 2, args
        assert message in one_error_line(capsys)
    assert listing(tmp_path) == before and ckpt.read_bytes() == SHIPPED.read_bytes()


def test_outputs_inside_an_artifact_are_refused(copy, capsys):
    before = listing(copy)
    assert run_cli(qat_main, [*SMALL, "--output", copy / "qat.pt"]) == 2
    assert "inside the artifact" in one_error_line(capsys)
    assert run_cli(export_main, ["--target", "onnx", *SIZE, "--no-parity", "--output", copy / "nested"]) == 2
    assert "inside the artifact" in one_error_line(capsys)
    assert listing(copy) == before


# --- 10. nonsense is refused or named -------------------------------------------------------------------------------

def test_routing_regret_with_a_qat_checkpoint_is_noted(qat_file, tmp_path, capsys):
    assert run_cli(export_main, ["--target", "onnx", "--int8", "--checkpoint", qat_file, *SIZE, "--no-parity",
                                 "--max-routing-regret", "0.01", "--output", tmp_path / "o"]) == 0
    assert "note: --max-routing-regret 0.01 does not apply" in capsys.readouterr().out


def test_qat_that_made_held_out_figures_worse_says_so(tmp_path, monkeypatch):
    real, calls = qat_module.held_out_metrics, []

    def collapsed_after_training(*args, **kw):
        calls.append(1)
        m = real(*args, **kw)
        return m if len(calls) == 1 else {**m, "label_agreement": m["label_agreement"] - 0.5}
    monkeypatch.setattr(qat_module, "held_out_metrics", collapsed_after_training)
    lines = []
    train(small(output=str(tmp_path / "q.pt"), steps=1), log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "label_agreement" in warnings[0] and "--lr" in warnings[0], lines


# --- 12. messages that blame the right thing --------------------------------------------------------------------

def test_checkpoint_that_is_a_device_or_fifo_is_not_said_to_be_missing(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        assert run_cli(export_main, ["--target", "onnx", *SIZE, "--checkpoint", path, "--output",
                                     tmp_path / "o"]) == 2
        err = one_error_line(capsys)
        assert "not a regular file" in err and "does not exist" not in err, err
    assert listing(tmp_path) == ["fifo"]


def test_lock_conflict_names_the_command_holding_it(tmp_path, capsys):
    out = tmp_path / "o"
    with output_lock(out, "biformer-qat"):
        assert run_cli(export_main, ["--target", "onnx", *SIZE, "--no-parity", "--output", out]) == 2
        assert "another biformer-qat is writing" in one_error_line(capsys)
