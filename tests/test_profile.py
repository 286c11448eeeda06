"""biformer-bench --profile: real per-op profiles of the demo model at 64x64 from onnxruntime, OpenVINO (where
installed) and torch.profiler, the op-class table against every op type of our exported graphs and of those
profiles, the FLOP count, and bad input."""
import contextlib
import importlib.util
import json

import pytest

from biformer_edge.bench import main
from biformer_edge.bench.opclasses import CLASSES, LAYOUT, MATMUL, OP_CLASSES, OV_MHA_SUBGRAPH
from biformer_edge.cli import bench_main
from biformer_edge.exporter import ExportRequest, export

MODEL = "biformer_seg_demo"   # the built-in default model, which --profile profiles without --models
QUICK = ["--runs", "3", "--warmup", "1", "--threads", "1"]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The default model at 64x64, FP32, exported for onnxruntime and (where installed) OpenVINO."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("profile")
    out = {}
    for target in ("onnx", "openvino") if HAS_OPENVINO else ("onnx",):
        out[target], _ = export(ExportRequest(target=target, precision="fp32", model=MODEL, input_size=(64, 64),
                                              output=str(root / target), parity=False), log=lambda msg: None)
    return out


@pytest.fixture(scope="module")
def profiles(exported, tmp_path_factory):
    """backend -> its profile.json entry, plus the printed text and the output folder of each run: the exported
    artifacts through --artifact, torch through the default model (no --models) at 64x64."""
    runs = {"onnxruntime": ["--artifact", str(exported["onnx"])], "torch": ["--backends", "torch", "--input-size",
                                                                             "64", "64"]}
    if HAS_OPENVINO:
        runs["openvino"] = ["--artifact", str(exported["openvino"])]
    out = {}
    for backend, argv in runs.items():
        folder = tmp_path_factory.mktemp(backend)
        capture = folder / "stdout.txt"
        with open(capture, "w") as f, contextlib.redirect_stdout(f):
            assert main(["--profile", *argv, *QUICK, "--output", str(folder)]) == 0
        data = json.loads((folder / "profile.json").read_text())
        (entry,) = [p for p in data["profiles"] if p["backend"] == backend]
        out[backend] = {"entry": entry, "text": capture.read_text(), "folder": folder, "meta": data["meta"]}
    return out


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "openvino"])
def test_profile_shares_gflops_and_files(profiles, backend):
    if backend == "openvino" and not HAS_OPENVINO:
        pytest.skip("openvino is not installed")
    run = profiles[backend]
    p = run["entry"]
    assert p["status"] == "ok", p["note"]
    assert (p["model"], p["input_shape"], p["precision"]) == (MODEL, [1, 3, 64, 64], "fp32")
    shares = p["shares"]
    assert list(shares) == list(CLASSES)
    assert sum(shares.values()) == pytest.approx(100.0, abs=1e-6)
    assert shares[MATMUL] > 0 and shares[LAYOUT] > 0, shares
    # the class times are the op times summed by the table, and nothing in our graph is left unclassified
    assert sum(p["class_ms"].values()) == pytest.approx(p["profiled_ms"], rel=1e-9)
    assert all(v["class"] == OP_CLASSES[op] for op, v in p["ops"].items()), "an op type fell into 'other' unnamed"
    # the op times are those of the timed runs alone: each op type ran a whole number of times per run (warm-up
    # events leaking in would add a fraction), and they fit inside the wall time of those runs
    for op, v in p["ops"].items():
        assert v["calls"] == pytest.approx(round(v["calls"]), abs=1e-9) and v["calls"] >= 1, (op, v)
    assert len(p["latencies_ms"]) == 3
    assert 0.2 < p["coverage"] < 1.1, p["coverage"]
    # GFLOP/s: the model's FLOPs over the median latency of the same runs
    assert p["flops"] > 0 and p["gflops_per_s"] == pytest.approx(p["flops"] / p["median_ms"] / 1e6)
    assert "threads: 1 for every runtime" in run["text"] and "GFLOP/s" in run["text"]
    assert f"{MODEL} 1x3x64x64 fp32" in run["text"]
    md = (run["folder"] / "profile.md").read_text()
    assert f"### {backend}: every op type" in md and "| layout |" in md
    assert (run["folder"] / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_op_class_table_covers_every_op_of_our_graphs_and_profiles(exported, profiles):
    """Every op type of the exported default model's ONNX graph and OpenVINO IR, and every op type each runtime's
    profiler reported for it (onnxruntime's fused kernels, the CPU plugin's nodes, ATen ops), is in the table."""
    import onnx
    seen = {f"onnx {n.op_type}" for n in onnx.load(str(exported["onnx"] / "model.onnx")).graph.node}
    if HAS_OPENVINO:
        import openvino as ov
        ir = ov.Core().read_model(str(exported["openvino"] / "model.xml"))
        seen |= {f"ir {op.get_type_name()}" for op in ir.get_ordered_ops()}
    for backend, run in profiles.items():
        seen |= {f"{backend} {op}" for op in run["entry"]["ops"]}
    missing = sorted(s for s in seen if s.split(" ", 1)[1] not in OP_CLASSES)
    assert not missing, f"op types without a class: {missing}"


def test_openvino_attention_subgraphs_are_told_apart(exported, profiles):
    """The CPU plugin's Snippets subgraphs that fused an IR ScaledDotProductAttention count as attention, the
    elementwise ones as elementwise; no more attention subgraphs than the IR has attention ops."""
    if not HAS_OPENVINO:
        pytest.skip("openvino is not installed")
    import openvino as ov
    ir = ov.Core().read_model(str(exported["openvino"] / "model.xml"))
    sdpa = sum(op.get_type_name() == "ScaledDotProductAttention" for op in ir.get_ordered_ops())
    p = profiles["openvino"]["entry"]
    assert sdpa > 0
    mha_calls = p["ops"].get(OV_MHA_SUBGRAPH, {}).get("calls", 0)
    if "SNIPPETS_MODE DISABLE" in p["runtime_config"]:
        assert mha_calls == 0
        return
    assert mha_calls <= sdpa
    if mha_calls == 0 and "ScaledDotProductAttention" not in p["ops"]:
        # whether the plugin tokenizes attention into Snippets depends on its ISA kernels and precision: say which
        from biformer_edge.cpu import describe, detect
        pytest.skip(f"this CPU plugin ran no attention subgraph here ({describe(detect())}, "
                    f"{p.get('inference_precision')}): nothing to tell apart")
    assert p["shares"]["attention"] > 0


def test_flop_count_is_the_papers_macs_twice():
    """BiFormer-T at 224: 2.2 G multiply-accumulates (the BiFormer paper, Zhu et al. CVPR 2023, Table 1 lists
    2.2 GFLOPs counted as MACs); the profile counts FLOPs as 2 x MACs."""
    from biformer_edge.bench.profile import model_flops
    from biformer_edge.models import create_model
    flops = model_flops(create_model("biformer_tiny", pretrained=False).eval(), (1, 3, 224, 224))
    assert 2.15e9 < flops / 2 < 2.25e9


def other_kind_of_artifact(exported, tmp_path):
    """The ONNX artifact's manifest made into a Core ML one, without any file the profiled runtimes read."""
    art = tmp_path / "coreml-art"
    art.mkdir()
    manifest = json.loads((exported["onnx"] / "manifest.json").read_text())
    manifest.update(target="coreml", backend="coreml")
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


@pytest.mark.parametrize("argv,message", [
    (["--backends", "tensorflow"], "unsupported backend 'tensorflow'"),
    (["--backends", "tensorrt"], "--profile reads the per-op profilers of torch, onnxruntime, openvino: drop "
                                 "--backends tensorrt"),
    (["--backends", "onnxruntime", "coreml"], "drop --backends coreml"),
    (["--models", "biformer_tiniest"], "unknown model 'biformer_tiniest'"),
    (["ARTIFACT", "--backends", "torch"], "torch profiles a model: use --models"),
    (["OTHER_KIND"], "--profile profiles onnxruntime and OpenVINO artifacts"),
])
def test_bad_input_exits_2_with_one_line(exported, tmp_path, capsys, argv, message):
    if argv[0] == "ARTIFACT":
        argv = ["--artifact", str(exported["onnx"]), *argv[1:]]
    elif argv[0] == "OTHER_KIND":
        argv = ["--artifact", str(other_kind_of_artifact(exported, tmp_path)), *argv[1:]]
    with pytest.raises(SystemExit) as exc:
        bench_main(["--profile", *argv, *QUICK, "--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_profile_skips_a_runtime_that_is_not_installed(exported, tmp_path, capsys, monkeypatch):
    """A profiled runtime this machine lacks is a skipped row with the reason, not a failure; nothing measured:
    no PNG, and a note saying so."""
    from biformer_edge import targets
    real = targets.runtime_unavailable

    def lacking_onnxruntime(name):
        return "onnxruntime is not installed: pip install onnxruntime" if name == "onnxruntime" else real(name)
    monkeypatch.setattr("biformer_edge.bench.plan.runtime_unavailable", lacking_onnxruntime)
    assert main(["--profile", "--backends", "onnxruntime", "--input-size", "64", "64", *QUICK, "--output",
                 str(tmp_path)]) == 0
    (entry,) = json.loads((tmp_path / "profile.json").read_text())["profiles"]
    assert (entry["backend"], entry["status"]) == ("onnxruntime", "skipped")
    assert entry["note"] == "onnxruntime is not installed: pip install onnxruntime"
    out = capsys.readouterr().out
    assert "onnxruntime: skipped: onnxruntime is not installed" in out and "profile.png skipped" in out
    assert not (tmp_path / "profile.png").exists()
