"""Core ML backend: ML Program conversion, structural checks (Linux), router kept FP32 in FP16 programs, 8-bit
weights, and the macOS-only Session.

biformer_seg_demo (random weights) at 128x128 is exported once with torch.export and converted to FP16 and FP32;
the cheap end-to-end ``export()`` cases use a bare BRA module.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

import biformer_edge as be  # noqa: E402
from biformer_edge.backends import coreml as bcm  # noqa: E402
from biformer_edge.backends.base import ExportContext
from biformer_edge.backends.tracing import RoutingOutputs, run_torch  # noqa: E402
from biformer_edge.models.bra import BiLevelRoutingAttention  # noqa: E402

SEG_SHAPE = (1, 3, 128, 128)
BRA_SHAPE = (1, 16, 16, 32)  # NHWC
darwin_only = pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predict needs macOS")


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def package_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bare_bra(router_fp32: bool = True) -> BiLevelRoutingAttention:
    torch.manual_seed(0)
    bra = BiLevelRoutingAttention(32, num_heads=4, n_win=8, qk_dim=32, topk=4).eval()
    bra.router_fp32 = router_fp32
    return bra


def export_to(model, path, precision, shape, **options):
    ctx = ExportContext(workdir=path, target="coreml", precision=precision, input_shape=shape, options=options,
                        log=lambda *a: None)
    return bcm.export(model, ctx)


@pytest.fixture(scope="module")
def seg_model():
    torch.manual_seed(0)
    return be.create_model("biformer_seg_demo", pretrained=False)


@pytest.fixture(scope="module")
def seg_expected(seg_model):
    ref = run_torch(seg_model, np.zeros(SEG_SHAPE, np.float32))
    shapes = {"logits": ref.logits.shape}
    shapes.update({f"routing_{i}": r.shape for i, r in enumerate(ref.routing)})
    assert list(shapes) == RoutingOutputs(seg_model).output_names()
    return shapes


@pytest.fixture(scope="module")
def seg_packages(seg_model, tmp_path_factory):
    """fp16 / fp32 / fp16 + 8-bit weights packages from one torch.export (the slow step)."""
    program = bcm.export_program(seg_model, SEG_SHAPE)
    names = RoutingOutputs(seg_model).output_names()
    root = tmp_path_factory.mktemp("coreml")
    paths = {}
    fp16 = bcm.convert_program(program, names, SEG_SHAPE, "fp16", log=lambda *a: None)
    for label, mlmodel in (("fp16", fp16),
                           ("fp32", bcm.convert_program(program, names, SEG_SHAPE, "fp32")),
                           ("w8", bcm.quantize_weights_8bit(fp16))):
        paths[label] = root / label / bcm.PACKAGE_NAME
        paths[label].parent.mkdir()
        mlmodel.save(str(paths[label]))
    return paths


@pytest.mark.parametrize("label", ["fp16", "fp32", "w8"])
def test_package_passes_structural_checks(seg_packages, seg_expected, label):
    assert bcm.check_mlpackage(seg_packages[label], seg_expected, expected_input=SEG_SHAPE) == []
    facts = bcm.inspect_mlpackage(seg_packages[label])
    assert facts["max_rank"] <= 5
    assert facts["has_topk"] and facts["ops"]["topk"] == 4
    assert facts["has_gather"]
    assert facts["inputs"] == {"images": SEG_SHAPE}
    assert facts["opset"] == "CoreML6"  # iOS16 by default


def test_fp16_program_keeps_router_fp32(seg_packages):
    facts = bcm.inspect_mlpackage(seg_packages["fp16"])
    assert facts["topk_input_dtypes"] == ["fp32"] * 4
    assert facts["ops"].get("cast", 0) > 0  # the rest of the program is fp16
    assert bcm.inspect_mlpackage(seg_packages["fp32"])["topk_input_dtypes"] == ["fp32"] * 4


def test_8bit_weights_are_smaller(seg_packages):
    fp16, w8 = package_size(seg_packages["fp16"]), package_size(seg_packages["w8"])
    assert w8 < 0.7 * fp16
    assert bcm.inspect_mlpackage(seg_packages["w8"])["ops"].get("constexpr_affine_dequantize", 0) > 0


def test_check_reports_wrong_names_and_shapes(seg_packages, seg_expected):
    wrong = dict(seg_expected)
    wrong["logits"] = (1, 150, 32, 32)
    wrong["routing_9"] = None
    problems = bcm.check_mlpackage(seg_packages["fp16"], wrong, expected_input=(1, 3, 256, 256))
    text = "; ".join(problems)
    assert "missing outputs ['routing_9']" in text
    assert "output logits has shape" in text
    assert "input shape" in text
    assert "topk ops for 5 routing outputs" in text


def test_export_end_to_end_with_options(tmp_path):
    assert export_to(bare_bra(), tmp_path / "a", "fp16", BRA_SHAPE) == ["model.mlpackage"]
    facts = bcm.inspect_mlpackage(tmp_path / "a")
    assert facts["outputs"] == {"logits": BRA_SHAPE, "routing_0": (1, 64, 4)}
    assert facts["topk_input_dtypes"] == ["fp32"]
    export_to(bare_bra(), tmp_path / "b", "fp16", BRA_SHAPE, ios=17, weights_8bit=True)
    facts = bcm.inspect_mlpackage(tmp_path / "b")
    assert facts["opset"] == "CoreML7"
    assert facts["ops"].get("constexpr_affine_dequantize", 0) > 0


def test_router_in_fp16_when_router_fp32_off(tmp_path):
    export_to(bare_bra(router_fp32=False), tmp_path, "fp16", BRA_SHAPE)
    assert bcm.inspect_mlpackage(tmp_path)["topk_input_dtypes"] == ["fp16"]


def test_export_is_deterministic(tmp_path):
    digests = []
    for name in ("a", "b"):
        export_to(bare_bra(), tmp_path / name, "fp32", BRA_SHAPE)
        root = tmp_path / name
        digests.append({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(root.rglob("*")) if p.is_file()})
    assert digests[0] == digests[1]


def test_int8_is_refused(tmp_path):
    with pytest.raises(be.UserError, match="macOS"):
        export_to(bare_bra(), tmp_path, "int8", BRA_SHAPE)


@pytest.mark.skipif(sys.platform == "darwin", reason="Linux behaviour")
def test_session_refuses_off_macos(seg_packages):
    with pytest.raises(be.UserError, match="Core ML runs only on macOS"):
        bcm.CoreMLSession(seg_packages["fp16"].parent)


@darwin_only
@pytest.mark.parametrize("label,min_cosine", [("fp16", 0.999), ("fp32", 0.99999)])
def test_session_matches_torch_on_macos(seg_packages, seg_model, label, min_cosine):
    x = np.random.default_rng(0).standard_normal(SEG_SHAPE).astype(np.float32)
    ref = run_torch(seg_model, x)
    got = bcm.CoreMLSession(seg_packages[label].parent, compute_units="CPU_ONLY").run(x)
    assert cosine(got.logits, ref.logits) >= min_cosine
    assert len(got.routing) == 4
    for a, b in zip(got.routing, ref.routing):
        k = a.shape[-1]
        agree = np.mean([len(set(p) & set(q)) / k for p, q in zip(a.reshape(-1, k), b.reshape(-1, k))])
        assert agree >= 0.9
