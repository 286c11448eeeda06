"""Core ML backend: ML Program conversion, structural checks (Linux), router kept FP32 in FP16 programs, 8-bit
weights, ``--int8`` (W8 here, W8A8 on macOS only), and the macOS-only Session.

biformer_seg_demo (random weights) at 128x128 is exported once with torch.export and converted to FP16 and FP32;
the cheap end-to-end ``export()`` cases use a bare BRA module.
"""
from __future__ import annotations

import hashlib
import sys
import warnings

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

import biformer_edge as be  # noqa: E402
from biformer_edge.backends.base import ExportContext  # noqa: E402
from biformer_edge.backends.coreml import export as cm_export  # noqa: E402
from biformer_edge.backends.coreml import rules as cm_rules  # noqa: E402
from biformer_edge.backends.coreml import session as cm_session  # noqa: E402
from biformer_edge.contract import MLPACKAGE  # noqa: E402
from biformer_edge.models.bra import BiLevelRoutingAttention  # noqa: E402
from biformer_edge.models.routing import RoutingOutputs, run_torch  # noqa: E402

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


def export_to(model, path, precision, shape, log=lambda *a: None, **options):
    ctx = ExportContext(workdir=path, target="coreml", precision=precision, input_shape=shape, options=options,
                        log=log)
    return cm_export.export(model, ctx)


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
def seg_program(seg_model):
    return cm_export.export_program(seg_model, SEG_SHAPE)   # the slow step, once


@pytest.fixture(scope="module")
def seg_packages(seg_model, seg_program, tmp_path_factory):
    """fp16 / fp32 / fp16 + 8-bit weights packages from one torch.export."""
    program = seg_program
    names = RoutingOutputs(seg_model).output_names()
    root = tmp_path_factory.mktemp("coreml")
    paths = {}
    fp16 = cm_export.convert_program(program, names, SEG_SHAPE, "fp16", log=lambda *a: None)
    for label, mlmodel in (("fp16", fp16),
                           ("fp32", cm_export.convert_program(program, names, SEG_SHAPE, "fp32")),
                           ("w8", cm_export.quantize_weights_8bit(fp16))):
        paths[label] = root / label / MLPACKAGE
        paths[label].parent.mkdir()
        mlmodel.save(str(paths[label]))
    return paths


@pytest.mark.parametrize("label", ["fp16", "fp32", "w8"])
def test_package_passes_structural_checks(seg_packages, seg_expected, label):
    assert cm_rules.check_mlpackage(seg_packages[label], seg_expected, expected_input=SEG_SHAPE) == []
    facts = cm_rules.inspect_mlpackage(seg_packages[label])
    assert facts["max_rank"] <= 5
    assert facts["has_topk"] and facts["ops"]["topk"] == 4
    assert facts["has_gather"]
    assert facts["inputs"] == {"images": SEG_SHAPE}
    assert facts["opset"] == "CoreML6"  # iOS16 by default


def test_router_nodes_are_named_by_their_module(seg_program):
    """torch.export names nodes 'mean_1', 'topk'; export_program prefixes those inside attn.router with the module."""
    nodes = [n for n in seg_program.graph.nodes if n.op == "call_function"]
    topks = [n.name for n in nodes if n.target is torch.ops.aten.topk.default]
    scopes = ["backbone_stages_0_0_attn_router__", "backbone_stages_1_0_attn_router__",
              "backbone_stages_2_0_attn_router__", "backbone_stages_2_1_attn_router__"]
    assert len(topks) == 4 and all(t.startswith(s) for t, s in zip(topks, scopes)), topks
    router = [n for n in nodes if cm_rules.is_router_op(n.name)]
    for scope in scopes:
        targets = {n.target.__name__ for n in router if n.name.startswith(scope)}
        assert {"mean.dim", "matmul.default", "topk.default"} <= targets, (scope, targets)
    # nothing outside the routers is named as one: the attention's own mean/mul/matmul/softmax keep torch's names
    assert not any(cm_rules.is_router_op(n.name) for n in nodes if n.target is torch.ops.aten._softmax.default)
    assert all(cm_rules.is_router_op(n.name) == any(n.name.startswith(s) for s in scopes) for n in nodes)


def test_is_router_op():
    assert cm_rules.is_router_op("backbone_stages_0_0_attn_router__mean_1")
    assert cm_rules.is_router_op("router__topk") and cm_rules.is_router_op("router__topk_axis_0")
    assert not any(cm_rules.is_router_op(name) for name in ("mean_1", "matmul_router", ""))
    assert cm_rules.router_scope("backbone.stages.0.0.attn.router") == "backbone_stages_0_0_attn_router__"


@pytest.mark.parametrize("label", ["fp16", "w8"])
def test_fp16_program_keeps_router_fp32(seg_packages, label):
    facts = cm_rules.inspect_mlpackage(seg_packages[label])
    assert facts["topk_input_dtypes"] == ["fp32"] * 4
    assert facts["ops"].get("cast", 0) > 0  # the rest of the program is fp16
    # the router ops keep their names in the package, and every one of them computes in fp32
    assert {k: facts["router_ops"].get(k) for k in ("reduce_mean", "matmul", "topk")} == {
        "reduce_mean": 8, "matmul": 4, "topk": 4}
    assert facts["router_dtypes"] == ["fp32"]
    assert cm_rules.inspect_mlpackage(seg_packages["fp32"])["topk_input_dtypes"] == ["fp32"] * 4


def test_unnamed_router_is_refused_for_fp16():
    """A program that bypasses export_program has no router names: FP16 would lower the router, so conversion
    refuses instead of silently dropping the FP32 island."""
    from biformer_edge.models.routing import RoutingOutputs
    wrapper = RoutingOutputs(bare_bra()).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(wrapper, (torch.zeros(BRA_SHAPE),)).run_decompositions({})
    with pytest.raises(be.UserError, match="named as a BRA router op"):
        cm_export.convert_program(program, wrapper.output_names(), BRA_SHAPE, "fp16", log=lambda *a: None)


def test_8bit_weights_are_smaller(seg_packages):
    fp16, w8 = package_size(seg_packages["fp16"]), package_size(seg_packages["w8"])
    assert w8 < 0.7 * fp16
    assert cm_rules.inspect_mlpackage(seg_packages["w8"])["ops"].get("constexpr_affine_dequantize", 0) > 0


def test_check_reports_wrong_names_and_shapes(seg_packages, seg_expected):
    wrong = dict(seg_expected)
    wrong["logits"] = (1, 150, 32, 32)
    wrong["routing_9"] = None
    problems = cm_rules.check_mlpackage(seg_packages["fp16"], wrong, expected_input=(1, 3, 256, 256))
    text = "; ".join(problems)
    assert "missing outputs ['routing_9']" in text
    assert "output logits has shape" in text
    assert "input shape" in text
    assert "topk ops for 5 routing outputs" in text


def test_export_end_to_end_with_options(tmp_path):
    messages = []
    assert export_to(bare_bra(), tmp_path / "a", "fp16", BRA_SHAPE, log=messages.append) == ["model.mlpackage"]
    assert "coreml: 8 router ops kept FP32" in messages   # 2 x (reduce_mean, reshape), mul, transpose, matmul, topk
    facts = cm_rules.inspect_mlpackage(tmp_path / "a")
    assert facts["outputs"] == {"logits": BRA_SHAPE, "routing_0": (1, 64, 4)}
    assert facts["topk_input_dtypes"] == ["fp32"] and facts["router_dtypes"] == ["fp32"]
    export_to(bare_bra(), tmp_path / "b", "fp16", BRA_SHAPE, ios=17, weights_8bit=True)
    facts = cm_rules.inspect_mlpackage(tmp_path / "b")
    assert facts["opset"] == "CoreML7"
    assert facts["ops"].get("constexpr_affine_dequantize", 0) > 0


@pytest.mark.skipif(sys.platform == "darwin", reason="Linux behaviour: W8A8 calibrates on macOS")
def test_int8_is_fp16_with_8bit_weights_off_macos(tmp_path):
    """--int8 off macOS: the FP16 program (router FP32) with 8-bit per-channel weights, a log line saying what W8A8
    needs, and the check the manifest records."""
    messages = []
    ctx = ExportContext(workdir=tmp_path, target="coreml", precision="int8", input_shape=BRA_SHAPE, options={},
                        log=messages.append)
    assert cm_export.export(bare_bra(), ctx) == ["model.mlpackage"]
    facts = cm_rules.inspect_mlpackage(tmp_path)
    assert facts["ops"].get("constexpr_affine_dequantize", 0) > 0              # 8-bit weights
    assert not any("quantize" in op and "constexpr" not in op for op in facts["ops"])  # no activation Q/DQ
    assert facts["topk_input_dtypes"] == ["fp32"] and facts["router_dtypes"] == ["fp32"]
    assert facts["ops"].get("cast", 0) > 0                                       # the rest is FP16
    assert ctx.checks["int8"] == {"ok": True, "summary": "W8 per-channel, activations FP16 (W8A8 needs macOS)"}
    assert sum("W8A8 (activation calibration) needs Core ML predict on macOS" in m for m in messages) == 1


def test_router_op_names_are_what_w8a8_leaves_fp32(seg_packages):
    """The names W8A8 passes to op_name_configs (None: not quantized) are exactly the router's non-const ops."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.models.MLModel(str(seg_packages["fp16"]), skip_model_load=True)
    names = cm_rules.router_op_names(mlmodel)
    assert names and all(cm_rules.is_router_op(n) for n in names)
    assert len(names) == sum(cm_rules.inspect_mlpackage(seg_packages["fp16"])["router_ops"].values())


def test_int8_is_a_coreml_precision_with_fp16_thresholds():
    from biformer_edge.exporter import ExportRequest, validate
    from biformer_edge.targets import load_profile
    _, profile, _ = validate(ExportRequest(target="coreml", precision="int8"))
    assert "int8" in profile["target"]["precisions"]
    assert load_profile("coreml")["thresholds"]["int8"] == load_profile("coreml")["thresholds"]["fp16"]


@darwin_only
def test_int8_is_w8a8_on_macos(tmp_path):
    """macOS, iOS 17+: activations calibrated through Core ML's predict (coremltools linear_quantize_activations),
    router ops left FP32, then 8-bit weights."""
    from biformer_edge.quant.prepare import calibration_batches
    from biformer_edge.quant.settings import QuantSettings
    ctx = ExportContext(workdir=tmp_path, target="coreml", precision="int8", input_shape=BRA_SHAPE,
                        options={"ios": 17}, log=lambda *a: None,
                        calibration=lambda: calibration_batches(QuantSettings(samples=4), BRA_SHAPE))
    cm_export.export(bare_bra(), ctx)
    facts = cm_rules.inspect_mlpackage(tmp_path)
    assert facts["ops"].get("quantize", 0) > 0 and facts["ops"].get("dequantize", 0) > 0
    assert facts["ops"].get("constexpr_affine_dequantize", 0) > 0
    assert facts["topk_input_dtypes"] == ["fp32"]
    assert ctx.checks["int8"]["summary"].startswith("W8A8")


def test_router_in_fp16_when_router_fp32_off(tmp_path):
    export_to(bare_bra(router_fp32=False), tmp_path, "fp16", BRA_SHAPE)
    facts = cm_rules.inspect_mlpackage(tmp_path)
    assert facts["topk_input_dtypes"] == ["fp16"] and facts["router_dtypes"] == ["fp16"]


def test_failed_structural_check_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cm_export, "check_mlpackage", lambda *a, **k: ["a tensor of rank 6 (Core ML allows at most 5)"])
    with pytest.raises(be.UserError, match="failed its structural checks: a tensor of rank 6"):
        export_to(bare_bra(), tmp_path, "fp32", BRA_SHAPE)


def test_export_is_deterministic(tmp_path):
    digests = []
    for name in ("a", "b"):
        export_to(bare_bra(), tmp_path / name, "fp32", BRA_SHAPE)
        root = tmp_path / name
        digests.append({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(root.rglob("*")) if p.is_file()})
    assert digests[0] == digests[1]


@pytest.mark.skipif(sys.platform == "darwin", reason="Linux behaviour")
def test_session_refuses_off_macos(seg_packages):
    with pytest.raises(be.UserError, match="Core ML runs only on macOS"):
        cm_session.CoreMLSession(seg_packages["fp16"].parent)


@darwin_only
@pytest.mark.parametrize("label,min_cosine", [("fp16", 0.999), ("fp32", 0.99999)])
def test_session_matches_torch_on_macos(seg_packages, seg_model, label, min_cosine):
    x = np.random.default_rng(0).standard_normal(SEG_SHAPE).astype(np.float32)
    ref = run_torch(seg_model, x)
    got = cm_session.CoreMLSession(seg_packages[label].parent, compute_units="CPU_ONLY").run(x)
    assert cosine(got.logits, ref.logits) >= min_cosine
    assert len(got.routing) == 4
    for a, b in zip(got.routing, ref.routing):
        k = a.shape[-1]
        agree = np.mean([len(set(p) & set(q)) / k for p, q in zip(a.reshape(-1, k), b.reshape(-1, k))])
        assert agree >= 0.9
