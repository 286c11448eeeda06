"""OpenVINO backend: IR export, router FP32 marks (found by the router's module name), explicit inference precision
and the precision rule, parity with PyTorch; INT8 IR (Q/DQ ONNX converted), its router island and the layer report of
what the CPU plugin executed.

Small inputs on purpose (shared 2-core CI machines): biformer_seg_demo at 128x128 with random weights (64x64 for
INT8), a bare BRA module for the cheap cases; biformer_tiny at 224 (FP32 parity only).

Nothing here assumes the CPU's ISA: where the plugin's behaviour depends on it, the tests read what the runtime says
(``OPTIMIZATION_CAPABILITIES``, the compiled model's ``INFERENCE_PRECISION_HINT``) and assert the rule.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino")

import biformer_edge as be  # noqa: E402
from biformer_edge import cpu, metrics  # noqa: E402
from biformer_edge.backends.base import ExportContext  # noqa: E402
from biformer_edge.backends.openvino import export as ov_export  # noqa: E402
from biformer_edge.backends.openvino import rules as ov_rules  # noqa: E402
from biformer_edge.backends.openvino import session as ov_session  # noqa: E402
from biformer_edge.models.bra import BiLevelRoutingAttention  # noqa: E402
from biformer_edge.models.routing import RoutingOutputs, run_torch  # noqa: E402

SEG_SHAPE = (1, 3, 128, 128)


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def export_to(model, path, precision, shape):
    ctx = ExportContext(workdir=path, target="openvino", precision=precision, input_shape=shape, log=lambda *a: None)
    return ov_export.export(model, ctx)


def cpu_can(precision: str) -> bool:
    """The CPU plugin computes ``precision`` natively (its OPTIMIZATION_CAPABILITIES say so)."""
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {"f16": "FP16", "bf16": "BF16"}[precision] in caps


def plugin_computes(hint: str) -> str:
    """What OpenVINO's CPU plugin computes a hint in, by its capabilities: f16 natively, else an f16 hint in bf16
    where the CPU has BF16 (AMD Zen 4/5, Cooper Lake), else f32; bf16 natively, else f32."""
    if hint == "f32":
        return "f32"
    if hint == "f16" and not cpu_can("f16"):
        return "bf16" if cpu_can("bf16") else "f32"
    return hint if cpu_can(hint) else "f32"


def bare_bra(heads: int = 4, router_fp32: bool = True) -> BiLevelRoutingAttention:
    torch.manual_seed(0)
    bra = BiLevelRoutingAttention(32, num_heads=heads, n_win=8, qk_dim=32, topk=4).eval()
    bra.router_fp32 = router_fp32
    return bra


BRA_SHAPE = (1, 16, 16, 32)  # NHWC; 2x2-token regions


@pytest.fixture(scope="module")
def seg_model():
    torch.manual_seed(0)
    return be.create_model("biformer_seg_demo", pretrained=False)


@pytest.fixture(scope="module")
def seg_input():
    return np.random.default_rng(0).standard_normal(SEG_SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def seg_irs(seg_model, tmp_path_factory):
    dirs = {}
    for precision in ("fp32", "fp16"):
        path = tmp_path_factory.mktemp(f"ov-{precision}")
        assert export_to(seg_model, path, precision, SEG_SHAPE) == ["model.xml", "model.bin"]
        dirs[precision] = path
    return dirs


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_writes_named_ir(seg_irs, seg_model, precision):
    model = ov.Core().read_model(str(seg_irs[precision] / "model.xml"))
    assert model.inputs[0].get_any_name() == "images"
    assert tuple(model.inputs[0].get_shape()) == SEG_SHAPE
    assert [o.get_any_name() for o in model.outputs] == RoutingOutputs(seg_model).output_names()


def test_fp32_ir_matches_torch(seg_irs, seg_model, seg_input):
    ref = run_torch(seg_model, seg_input)
    sess = ov_session.OpenVINOSession(seg_irs["fp32"], precision_hint="f32")
    got = sess.run(seg_input)
    assert sess.precision_hint == "f32" and sess.inference_precision == "f32"
    assert got.logits.shape == ref.logits.shape
    assert cosine(got.logits, ref.logits) >= 0.99999
    assert len(got.routing) == len(ref.routing) == 4
    for a, b in zip(got.routing, ref.routing):
        np.testing.assert_array_equal(a, b)


def test_fp16_ir_runs(seg_irs, seg_model, seg_input):
    ref = run_torch(seg_model, seg_input)
    for hint in ("f32", "auto", "f16", "bf16"):
        got = ov_session.OpenVINOSession(seg_irs["fp16"], precision_hint=hint).run(seg_input)
        assert np.isfinite(got.logits).all()
        assert cosine(got.logits, ref.logits) >= 0.999
        # random weights: near-ties flip, the more so in bf16
        assert metrics.routing_agreement(ref.routing, got.routing)["routing"] >= 0.9


def test_fp16_bin_is_half(seg_irs):
    fp32 = (seg_irs["fp32"] / "model.bin").stat().st_size
    fp16 = (seg_irs["fp16"] / "model.bin").stat().st_size
    assert 0.45 <= fp16 / fp32 <= 0.55


@pytest.mark.parametrize("hint", ["f32", "f16", "bf16"])
def test_precision_hint_is_set_explicitly(seg_irs, hint):
    sess = ov_session.OpenVINOSession(seg_irs["fp16"], precision_hint=hint, threads=1)
    assert sess.requested_hint == sess.precision_hint == hint
    assert sess.config["INFERENCE_PRECISION_HINT"] == hint
    assert str(sess.compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    assert sess.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    # An explicit hint goes to the plugin as it is; what it computes in depends on the CPU (never its own default),
    # and the Session reports exactly what the compiled model says.
    computes = sess.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    assert computes == plugin_computes(hint)
    assert sess.inference_precision == computes


def test_auto_hint_computes_f16_only_where_native(seg_irs):
    """The precision rule: auto is f16 where the CPU computes f16 natively, f32 everywhere else, never bf16."""
    sess = ov_session.OpenVINOSession(seg_irs["fp16"], precision_hint="auto", threads=1)
    assert sess.requested_hint == "auto"
    expected = "f16" if cpu_can("f16") and plugin_computes("f16") == "f16" else "f32"
    assert sess.precision_hint == sess.config["INFERENCE_PRECISION_HINT"] == expected
    assert sess.inference_precision == sess.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == expected
    assert ov_rules.canonical_hint("AUTO") == "auto" and ov_rules.canonical_hint("bfloat16") == "bf16"


def test_profile_checks_fp16_with_auto_and_has_bf16_thresholds():
    from biformer_edge.targets import load_profile

    profile = load_profile("openvino")
    assert profile["parity"]["hint"] == {"fp32": "f32", "fp16": "auto", "int8": "f32"}
    bf16 = profile["thresholds"]["bf16"]
    assert set(bf16) == set(profile["thresholds"]["fp16"])
    assert all(bf16[k] <= profile["thresholds"]["fp16"][k] for k in bf16)   # looser, and only when asked for


def test_router_found_by_module_name(seg_model):
    """ov.convert_model scopes a submodule's ops by its path: the router is every op under ``.attn.router``."""
    ov_model = ov_export.convert(seg_model, SEG_SHAPE)
    router = ov_rules.router_nodes(ov_model)
    scopes = {ov_rules.router_scope(n.get_friendly_name()) for n in router if n.get_type_name() != "Constant"}
    paths = [name for name, module in seg_model.named_modules() if type(module).__name__ == "RegionRouter"]
    assert scopes == {f"__module.model.{p}" for p in paths}   # convert() traces RoutingOutputs(model): ".model"
    assert {n.get_type_name() for n in router} == {"ReduceMean", "Reshape", "Multiply", "MatMul", "TopK", "Constant"}
    outside = [op for op in ov_model.get_ordered_ops() if op.get_type_name() == "TopK" and op not in router]
    assert not outside
    assert ov_rules.router_scope("__module.model.stages.0.0.attn.router/aten::topk/TopK") == \
        "__module.model.stages.0.0.attn.router"
    assert ov_rules.router_scope("__module.model.stages.0.0.attn.router_x/aten::topk/TopK") is None
    assert ov_rules.router_scope("__module.model.stages.0.0.attn.qkv.qkv/aten::linear/MatMul") is None
    assert ov_rules.router_scope("Constant_47") is None


def test_router_nodes_marked_in_fp16_ir(seg_irs):
    fp16 = ov_rules._core().read_model(str(seg_irs["fp16"] / "model.xml"))
    router = ov_rules.router_nodes(fp16)
    kinds = [n.get_type_name() for n in router]
    assert kinds.count("TopK") == 4 and kinds.count("ReduceMean") == 8 and kinds.count("MatMul") == 4
    assert kinds.count("Constant") == 4   # the scale of each router
    assert all(ov_rules.KEEP_PRECISION_KEY in n.get_rt_info() for n in router)
    # the scale constant feeding each router stays f32 in the compressed IR
    assert all(n.get_output_element_type(0) == ov.Type.f32 for n in router if n.get_type_name() == "Constant")
    fp32 = ov_rules._core().read_model(str(seg_irs["fp32"] / "model.xml"))
    assert not any(ov_rules.KEEP_PRECISION_KEY in n.get_rt_info() for n in ov_rules.router_nodes(fp32))


def test_router_not_marked_when_router_fp32_off(tmp_path):
    export_to(bare_bra(router_fp32=False), tmp_path, "fp16", BRA_SHAPE)
    model = ov_rules._core().read_model(str(tmp_path / "model.xml"))
    router = ov_rules.router_nodes(model)
    assert router and not any(ov_rules.KEEP_PRECISION_KEY in n.get_rt_info() for n in router)


def test_keep_router_fp32_leaves_input_model_alone(seg_irs):
    model = ov_rules._core().read_model(str(seg_irs["fp32"] / "model.xml"))
    marked = ov_rules.keep_router_fp32(model)
    assert not ov_rules.marked_nodes(model)
    assert {n.get_friendly_name() for n in ov_rules.marked_nodes(marked)} == \
        {n.get_friendly_name() for n in ov_rules.router_nodes(model)}


def router_runtime_precisions(sess) -> dict[str, set[str]]:
    """layer type -> runtime precisions the plugin gave the router layers (by their original names)."""
    found: dict[str, set[str]] = {}
    for op in sess.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        names = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
        if any(ov_rules.router_scope(n) for n in names):
            found.setdefault(info["layerType"].astype(str), set()).add(info["runtimePrecision"].astype(str))
    return found


@pytest.mark.parametrize("hint", ["f16", "bf16"])
def test_router_runs_fp32_under_low_precision_hint(seg_irs, hint):
    sess = ov_session.OpenVINOSession(seg_irs["fp16"], precision_hint=hint)
    if sess.inference_precision == "f32":
        pytest.skip(f"this CPU computes the {hint} hint in f32 (capabilities {ov_rules.cpu_capabilities()})")
    precisions = router_runtime_precisions(sess)
    assert precisions.get("TopK") == {"f32"}
    assert precisions.get("MatMul") == {"f32"}   # the region affinity: the island's point


def test_heads_equal_region_tokens_workaround(tmp_path):
    """4 heads and 2x2-token regions: the CPU plugin's Snippets MHA fusion miscomputes this (OpenVINO 2026.4.1);
    the Session must detect the pattern and still match PyTorch."""
    bra = bare_bra(heads=4)
    export_to(bra, tmp_path, "fp32", BRA_SHAPE)
    x = np.random.default_rng(1).standard_normal(BRA_SHAPE).astype(np.float32)
    sess = ov_session.OpenVINOSession(tmp_path)
    assert sess.config.get("SNIPPETS_MODE") == "DISABLE"
    got, ref = sess.run(x), run_torch(bra, x)
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(got.routing[0], ref.routing[0])


def test_export_is_deterministic(tmp_path):
    bra = bare_bra()
    hashes = []
    for name in ("a", "b"):
        export_to(bra, tmp_path / name, "fp16", BRA_SHAPE)
        hashes.append([hashlib.sha256((tmp_path / name / f).read_bytes()).hexdigest()
                       for f in ("model.xml", "model.bin")])
    assert hashes[0] == hashes[1]


def test_imports_without_torch():
    import subprocess
    code = ("import sys; sys.modules['torch'] = None; import biformer_edge.backends.openvino.session; "
            "import biformer_edge.backends.openvino.rules as b; "
            "assert b.PRECISION_HINTS['auto'] == 'auto'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_hint_and_missing_artifact(tmp_path, seg_irs):
    with pytest.raises(be.UserError, match="precision hint"):
        ov_session.OpenVINOSession(seg_irs["fp32"], precision_hint="int4")
    with pytest.raises(be.UserError, match="no OpenVINO model"):
        ov_session.OpenVINOSession(tmp_path)


def test_missing_openvino_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(be.UserError, match=r"openvino is not installed: pip install 'biformer-edge\[openvino\]'"):
        ov_session.OpenVINOSession(tmp_path)


def test_biformer_tiny_fp32_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = be.create_model("biformer_tiny", pretrained=False)
    shape = (1, 3, 224, 224)
    export_to(model, tmp_path, "fp32", shape)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    got, ref = ov_session.OpenVINOSession(tmp_path).run(x), run_torch(model, x)
    assert cosine(got.logits, ref.logits) >= 0.99999
    for a, b in zip(got.routing, ref.routing):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------- parity precision rule


@pytest.fixture(scope="module")
def seg_reference(seg_model):
    from biformer_edge.parity.check import run_reference
    from biformer_edge.parity.inputs import parity_inputs

    inputs, _ = parity_inputs(SEG_SHAPE, None, 2)
    return run_reference(seg_model, inputs, "cpu")


def evaluate_fp16(seg_irs, seg_reference, **kwargs) -> dict:
    from biformer_edge.parity.check import evaluate
    from biformer_edge.targets import load_profile

    manifest = {"precision": "fp16", "task": "segmentation", "num_classes": None}
    return evaluate(seg_irs["fp16"], manifest, load_profile("openvino"), seg_reference, **kwargs)


def test_parity_of_fp16_ir_never_computes_bf16_by_default(seg_irs, seg_reference):
    entry = evaluate_fp16(seg_irs, seg_reference)["backends"]["openvino"]
    assert entry["precision_hint"] == "auto"
    assert entry["inference_precision"] == ("f16" if plugin_computes("f16") == "f16" else "f32")
    assert "thresholds" not in entry   # the FP16 thresholds of the report


def test_parity_bf16_is_explicit_with_its_own_thresholds(seg_irs, seg_reference):
    from biformer_edge.targets import load_profile

    report = evaluate_fp16(seg_irs, seg_reference, ov_precision="bf16", thresholds={"pixel": 0.5})
    entry = report["backends"]["openvino"]
    assert entry["precision_hint"] == "bf16" and entry["inference_precision"] == plugin_computes("bf16")
    if entry["inference_precision"] == "bf16":
        assert entry["thresholds"] == {**load_profile("openvino")["thresholds"]["bf16"], "pixel": 0.5}
    else:   # no BF16 units: computed in f32, held to the FP16 thresholds of the report
        assert "thresholds" not in entry and report["thresholds"]["pixel"] == 0.5


def test_parity_refuses_f16_hint_computed_in_bf16(seg_irs, seg_reference, monkeypatch):
    if plugin_computes("f16") != "bf16":
        entry = evaluate_fp16(seg_irs, seg_reference, ov_precision="f16")["backends"]["openvino"]
        assert entry["inference_precision"] == plugin_computes("f16")
        # what a CPU with BF16 but no FP16 units reports (AMD Zen 4/5): the refusal is checked on every CPU
        monkeypatch.setattr(ov_session.OpenVINOSession, "_computes", lambda self: "bf16")
    with pytest.raises(be.UserError, match=r"computes the 'f16' hint in bf16 .*--ov-precision bf16"):
        evaluate_fp16(seg_irs, seg_reference, ov_precision="f16")


# ---------------------------------------------------------------------------------------------------------- INT8

INT8_SHAPE = (1, 3, 64, 64)


def export_int8(model, path, routing):
    from biformer_edge.quant.report import check_int8_graph

    ctx = ExportContext(workdir=path, target="openvino", precision="int8", input_shape=INT8_SHAPE,
                        log=lambda *a: None, routing=routing)
    files = ov_export.export(model, ctx)   # then, as the exporter does, the router island and the layer report
    return files + check_int8_graph(path, ov_export.int8_graph(path), routing, ctx.checks), ctx


@pytest.fixture(scope="module")
def int8_irs(seg_model, tmp_path_factory):
    """The fake-quantized seg model (ModelOpt, as the exporter calls it, 4 synthetic scenes, the default --cpu
    class's weight bound) exported as INT8 IRs for both routing modes: routing -> (files, ctx, artifact dir,
    quantized model)."""
    pytest.importorskip("modelopt.torch.quantization")
    from biformer_edge.cpu import DEFAULT_CPU_CLASS, weight_bound
    from biformer_edge.quant.calibration import calibration_inputs, resolve_recipe
    from biformer_edge.quant.int8 import model_config, quantize

    batches = calibration_inputs(resolve_recipe(None, 4), INT8_SHAPE)
    out = {}
    for routing in ("qar", "naive"):
        path = tmp_path_factory.mktemp(f"ov-int8-{routing}")
        qmodel = quantize(seg_model, batches, model_config(seg_model, routing),
                          weight_bound=weight_bound(DEFAULT_CPU_CLASS)).model
        files, ctx = export_int8(qmodel, path, routing)
        out[routing] = (files, ctx, path, qmodel)
    return out


def read_layer_report(path):
    import json
    return json.loads((path / "layer_precision.json").read_text())


@pytest.mark.parametrize("routing", ["qar", "naive"])
def test_int8_export_writes_ir_and_layer_report(int8_irs, seg_model, routing):
    files, ctx, path, _ = int8_irs[routing]
    assert files == ["model.xml", "model.bin", "layer_precision.json", "layer_precision.md"]
    assert all((path / f).is_file() for f in files)
    model = ov_rules._core().read_model(str(path / "model.xml"))
    assert model.inputs[0].get_any_name() == "images" and tuple(model.inputs[0].get_shape()) == INT8_SHAPE
    assert [o.get_any_name() for o in model.outputs] == RoutingOutputs(seg_model).output_names()
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    report = read_layer_report(path)
    rows = {r["layer"]: r for r in report["layers"]}
    # every layer named after its module (no counter names), the logits layer float, the rest INT8 in the graph
    assert all(name.startswith("/model/") for name in rows)
    assert rows["/model/decode_head/conv_seg/Conv/WithoutBiases"]["weight"] == "float"
    assert report["summary"]["int8_weight_share"] > 0.99
    assert set(ctx.checks) == {"router_island", "int8_layers"} and all(c["ok"] for c in ctx.checks.values())
    md = (path / "layer_precision.md").read_text()
    assert "| executed |" in md and "precision hint f32" in md


def test_int8_router_island_holds_for_qar_only(int8_irs):
    qar = ov_rules._core().read_model(str(int8_irs["qar"][2] / "model.xml"))
    naive = ov_rules._core().read_model(str(int8_irs["naive"][2] / "model.xml"))
    topk = sum(op.get_type_name() == "TopK" for op in qar.get_ordered_ops())
    assert topk == 4
    assert ov_export.fake_quantize_into_topk(qar) == []
    into = ov_export.fake_quantize_into_topk(naive)
    assert len(into) == 2 * topk                  # the pooled q and the pooled k of every router
    assert "no FakeQuantize" in int8_irs["qar"][1].checks["router_island"]["summary"]
    assert f"{len(into)} FakeQuantize paths" in int8_irs["naive"][1].checks["router_island"]["summary"]
    # qar: the router's float ops (ONNX-frontend names, TopK named after its output) marked to stay FP32
    router = ov_rules.router_nodes(qar)
    assert [n.get_type_name() for n in router].count("TopK") == topk
    assert all(ov_rules.KEEP_PRECISION_KEY in n.get_rt_info() for n in router)
    assert not ov_rules.marked_nodes(naive)
    rows = {r["layer"]: r for r in read_layer_report(int8_irs["naive"][2])["layers"]}
    assert all(r["input"] == r["weight"] == "int8" for r in rows.values() if r["router"])


def test_int8_export_is_deterministic(int8_irs, tmp_path):
    _, _, first, qmodel = int8_irs["qar"]
    export_int8(qmodel, tmp_path, "qar")
    for name in ("model.xml", "model.bin", "layer_precision.json"):
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name


def test_router_scope_of_onnx_names():
    assert ov_rules.router_scope("/model/stages.0/stages.0.0/attn/router/MatMul") == \
        "/model/stages.0/stages.0.0/attn/router"
    assert ov_rules.router_scope("/model/stages.0/stages.0.0/attn/router/k_region_quantizer/DequantizeLinear") is None
    assert ov_rules.router_scope("/model/stages.0/stages.0.0/attn/qkv/MatMul") is None


def test_int8_executed_precision_comes_from_the_runtime(int8_irs):
    """The executed column is what the compiled model's runtime graph says, per layer: INT8 kernels (i8/u8) for the
    layers the graph quantizes, the hint's float precision for the others (bf16 where the CPU has BF16)."""
    path = int8_irs["qar"][2]
    rows = read_layer_report(path)["layers"]
    sess = ov_session.OpenVINOSession(path, precision_hint="f32")
    runtime = ov_session.executed_precision(sess.compiled)
    runtime_precisions = {v["precision"] for v in runtime.values()}
    assert all(r["executed"] in runtime_precisions for r in rows)
    assert all(r["executed"] in ("i8", "u8") for r in rows if r["input"] == r["weight"] == "int8")
    assert all(r["executed"] == "f32" for r in rows if r["input"] == "float")
    summary = read_layer_report(path)["summary"]["executed"]
    assert summary["precision_hint"] == "f32" and sum(summary["by_precision"].values()) == len(rows)
    if plugin_computes("bf16") != "bf16":
        pytest.skip("this CPU has no BF16 units: the bf16 half of the report cannot be checked here")
    bf16_rows = ov_export.int8_graph(path, "bf16").rows
    by_layer = {r["layer"]: r for r in bf16_rows}
    for r in rows:
        executed = by_layer[r["layer"]]["executed"]
        if r["executed"] in ("i8", "u8"):
            assert executed in ("i8", "u8")
        elif r["router"]:
            assert executed == "f32"              # the island stays f32 under a bf16 hint
        else:
            assert executed == "bf16"


@pytest.fixture(scope="module")
def int8_reference(seg_model):
    from biformer_edge.parity.check import run_reference
    from biformer_edge.parity.inputs import parity_inputs

    inputs, _ = parity_inputs(INT8_SHAPE, None, 2)
    return run_reference(seg_model, inputs, "cpu")


@pytest.mark.parametrize("ov_precision", [None, "bf16"])
def test_int8_parity_hint(int8_irs, int8_reference, ov_precision):
    from biformer_edge.parity.check import evaluate
    from biformer_edge.targets import load_profile

    report = evaluate(int8_irs["qar"][2], PORTABLE_MANIFEST, load_profile("openvino"), int8_reference,
                      ov_precision=ov_precision)
    entry = report["backends"]["openvino"]
    expected = "f32" if ov_precision is None else plugin_computes("bf16")
    assert entry["precision_hint"] == (ov_precision or "f32") and entry["inference_precision"] == expected
    assert entry["metrics"]["cosine"] >= 0.98 and entry["metrics"]["routing"] >= 0.7
    check_cpu_record(entry, cpu.detect())


PORTABLE_MANIFEST = {"precision": "int8", "task": "segmentation", "num_classes": None,
                     "quantization": {"cpu_class": "portable", "weight_bound": 64}}
FULL_RANGE_MANIFEST = {**PORTABLE_MANIFEST, "quantization": {"cpu_class": "vnni", "weight_bound": 127}}


def check_cpu_record(entry: dict, machine: dict) -> None:
    """The parity entry names the CPU class it ran on and what OpenVINO executed; the INT8 kernels it chose agree
    with the class (oneDNN names a kernel after its ISA: no VNNI/AMX/AVX-512 kernel on an avx2-class machine)."""
    assert entry["cpu"]["class"] == machine["class"] and entry["cpu"]["isa_cap"] == machine["isa_cap"]
    executed = entry["executed"]
    assert executed["by_precision"].get("i8", 0) + executed["by_precision"].get("u8", 0) > 20
    assert sum(executed["int8_kernels"].values()) == executed["by_precision"].get("i8", 0) + \
        executed["by_precision"].get("u8", 0)
    if machine["class"] == "avx2":
        assert not [k for k in executed["int8_kernels"] if any(isa in k for isa in ("vnni", "amx", "avx512"))]
        assert any("avx2" in k for k in executed["int8_kernels"])


@pytest.fixture(scope="module")
def int8_full_range_ir(seg_model, tmp_path_factory):
    """The QAR INT8 IR with full 8-bit weights (--cpu vnni): what saturates on CPUs without VNNI."""
    from biformer_edge.quant.calibration import calibration_inputs, resolve_recipe
    from biformer_edge.quant.int8 import model_config, quantize

    path = tmp_path_factory.mktemp("ov-int8-full")
    qmodel = quantize(seg_model, calibration_inputs(resolve_recipe(None, 4), INT8_SHAPE), model_config(seg_model),
                      weight_bound=127)
    export_int8(qmodel.model, path, "qar")
    return path


CAPPED_PARITY = """
import json, sys
import numpy as np
from biformer_edge.parity.check import evaluate
from biformer_edge.targets import load_profile
ref = dict(np.load(sys.argv[1]))
out = {}
for name, path, manifest in json.loads(sys.argv[2]):
    report = evaluate(path, manifest, load_profile("openvino"), ref)
    out[name] = report["backends"]["openvino"]
print(json.dumps(out))
"""


@pytest.mark.skipif(cpu.detect(cap=None)["class"] is None, reason="not an x86 CPU with AVX2: no oneDNN ISA classes")
def test_int8_on_an_avx2_class_cpu(int8_irs, int8_full_range_ir, int8_reference, tmp_path):
    """The AVX2 path on whatever x86 CPU runs the suite: oneDNN (so OpenVINO's CPU plugin) honours
    ONEDNN_MAX_CPU_ISA, set before OpenVINO loads, in a fresh interpreter. The portable INT8 IR meets the same
    thresholds as natively (test_int8_parity_hint's fixture, thresholds unchanged); the full-range IR gets the
    one-line saturation note, and every INT8 kernel is an AVX2 one."""
    import json
    import os
    import subprocess

    np.savez(tmp_path / "ref.npz", **int8_reference)
    irs = [["portable", str(int8_irs["qar"][2]), PORTABLE_MANIFEST],
           ["full", str(int8_full_range_ir), FULL_RANGE_MANIFEST]]
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env.pop("DNNL_MAX_CPU_ISA", None)
    proc = subprocess.run([sys.executable, "-c", CAPPED_PARITY, str(tmp_path / "ref.npz"), json.dumps(irs)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries = json.loads(proc.stdout.strip().splitlines()[-1])
    machine = cpu.detect(cap="avx2")
    assert machine["class"] == "avx2"
    for entry in entries.values():
        check_cpu_record(entry, machine)
    portable, full = entries["portable"], entries["full"]
    assert portable["metrics"]["cosine"] >= 0.98 and portable["metrics"]["routing"] >= 0.7
    assert "cpu_note" not in portable and "--cpu portable" in full["cpu_note"]
