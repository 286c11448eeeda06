"""biformer-bench: a tiny real run (torch + onnxruntime, each in its own worker process), INT8 rows, skips, bad
input."""
import csv
import importlib.util
import subprocess
import sys

import pytest

from biformer_edge.bench import main
from biformer_edge.bench.plan import cpu_default_hint, plan
from biformer_edge.cli import bench_main
from biformer_edge.exporter import ExportRequest
from biformer_edge.targets import load_profile

TINY = ["--models", "biformer_seg_demo", "--random-weights", "--input-size", "64", "64", "--runs", "2",
        "--warmup", "1", "--threads", "1"]


def read_rows(out):
    with open(out / "bench.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_bench_torch_and_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(TINY + ["--backends", "torch", "onnxruntime", "--output", str(tmp_path)]) == 0
    rows = read_rows(tmp_path)
    assert [(r["model"], r["backend"], r["precision"], r["status"]) for r in rows] == [
        ("biformer_seg_demo", "torch", "fp32", "ok"), ("biformer_seg_demo", "onnxruntime", "fp32", "ok")]
    for r in rows:
        assert (r["batch"], r["height"], r["width"], r["threads"], r["runs"]) == ("1", "64", "64", "1", "2")
        for key in ("median_ms", "p90_ms", "mean_ms", "throughput_ips", "peak_rss_mib", "loaded_rss_mib",
                    "activation_mib", "artifact_mb"):
            assert float(r[key]) > 0, (r["backend"], key, r[key])
        assert float(r["p90_ms"]) >= float(r["median_ms"])
        assert float(r["peak_rss_mib"]) >= float(r["loaded_rss_mib"])
    # FP32 ONNX holds the same weights as the torch parameters (plus a little graph)
    torch_mb, onnx_mb = (float(r["artifact_mb"]) for r in rows)
    assert 0.9 < onnx_mb / torch_mb < 1.2
    md = (tmp_path / "bench.md").read_text()
    assert "threads: 1 for every backend" in md and md.count("| biformer_seg_demo |") == 2
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "median ms" in out and "onnxruntime" in out


def test_existing_artifact_gets_a_row_per_runtime_it_is_for(tmp_path):
    """--artifact: the runtimes whose file is in it, plus the one its target is made for (a Jetson export has no
    engine here: that row says so in targets' words); no --backends needed."""
    pytest.importorskip("onnxruntime")
    from biformer_edge.exporter import export
    from biformer_edge.targets import unavailable_reason
    art, _ = export(ExportRequest(target="jetson", precision="fp32", model="biformer_seg_demo", input_size=(64, 64),
                                  output=str(tmp_path / "art"), parity=False), log=lambda msg: None)
    out = tmp_path / "out"
    assert main(["--artifact", str(art), "--runs", "2", "--warmup", "0", "--threads", "1", "--output", str(out)]) == 0
    rows = read_rows(out)
    assert [(r["model"], r["backend"], r["precision"], r["status"]) for r in rows] == [
        ("biformer_seg_demo", "onnxruntime", "fp32", "ok"), ("biformer_seg_demo", "tensorrt", "fp32", "skipped")]
    assert rows[1]["note"] == unavailable_reason("tensorrt", art)
    assert float(rows[0]["artifact_mb"]) == pytest.approx((art / "model.onnx").stat().st_size / 1e6, abs=1e-4)
    assert float(rows[0]["median_ms"]) > 0


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_unavailable_backends_are_skipped_with_a_note(tmp_path):
    assert main(TINY + ["--backends", "coreml", "--precisions", "fp32", "int8", "--output", str(tmp_path)]) == 0
    rows = read_rows(tmp_path)
    assert [(r["backend"], r["precision"], r["status"]) for r in rows] == [
        ("coreml", "fp32", "skipped"), ("coreml", "int8", "skipped")]
    assert "macOS" in rows[0]["note"] and rows[0]["median_ms"] == ""
    assert not (tmp_path / "bench.png").exists()  # nothing measured, nothing to draw


def test_int8_rows_time_the_exporters_int8_artifacts(tmp_path, capsys):
    """--precisions fp32,int8: onnxruntime runs the Q/DQ ONNX and OpenVINO its INT8 IR (each exported once by the
    exporter, calibrated on 8 synthetic scenes); torch has no INT8 and says so. INT8 against FP32 is one line per
    runtime, and a note where INT8 is not faster on this CPU."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("modelopt", reason="INT8 export needs nvidia-modelopt")
    backends = ["onnxruntime", "openvino", "torch"]
    assert main(TINY + ["--backends", *backends, "--precisions", "fp32,int8", "--calib-samples", "8", "--output",
                        str(tmp_path)]) == 0
    out = capsys.readouterr().out
    both = read_rows(tmp_path)
    fp32 = {r["backend"]: r for r in both if r["precision"] == "fp32" and "default" not in r["backend"]}
    rows = {r["backend"]: r for r in both if r["precision"] == "int8"}
    for backend, row in rows.items():
        if row["status"] == "ok" and fp32[backend]["status"] == "ok":
            ratio = float(fp32[backend]["median_ms"]) / float(row["median_ms"])
            assert f"int8 vs fp32, {row['model']} {backend}: " in out
            if abs(ratio - 1.0) > 0.01:   # the CSV's rounded medians decide only clear cases
                assert (f"gains nothing from INT8 in {backend}" in out) == (ratio < 1.0)
    assert list(rows) == backends and {r["precision"] for r in rows.values()} == {"int8"}
    ort = rows["onnxruntime"]
    assert ort["status"] == "ok", ort["note"]
    assert float(ort["median_ms"]) > 0 and float(ort["artifact_mb"]) > 0
    assert rows["torch"]["status"] == "skipped" and "int8 is an export precision" in rows["torch"]["note"]
    ov = rows["openvino"]
    if importlib.util.find_spec("openvino") is None:
        assert ov["status"] == "skipped" and "openvino is not installed" in ov["note"]
    else:  # the OpenVINO INT8 IR (from the same Q/DQ graph) is measured like any other row
        assert ov["status"] == "ok", ov
    assert "| int8 |" in (tmp_path / "bench.md").read_text()


def test_openvino_gets_a_row_for_the_cpu_default_hint():
    pytest.importorskip("openvino")
    shape = (1, 3, 64, 64)
    configs = plan(["biformer_seg_demo"], ["openvino"], ["fp32", "fp16"], {"biformer_seg_demo": shape})
    default = cpu_default_hint()
    assert default in ("f32", "bf16", "f16")
    hints = load_profile("openvino")["parity"]["hint"]  # the hints parity computes in: the bench pins the same
    assert hints["fp32"] == "f32"
    assert [(c.label.split(" ")[0], c.precision, c.hint, c.default_hint) for c in configs] == [
        ("openvino", "fp32", "f32", False), ("openvino", "fp32", default, True),
        ("openvino", "fp16", hints["fp16"], False)]
    assert configs[1].label == f"openvino ({default} default)"
    assert [c.skip for c in configs if not c.default_hint] == [None, None]
    # the default row is measured only where the plugin's default differs from the pinned f32 row
    assert (configs[1].skip is None) == (default != "f32")


@pytest.mark.parametrize("argv,message", [
    (["--backends", "tensorflow"], "unsupported backend 'tensorflow'"),
    (["--backends", "onnxruntim"], "did you mean 'onnxruntime'?"),
    (["--models", "biformer_tiniest"], "unknown model 'biformer_tiniest'"),
    (["--runs", "0"], "argument --runs: must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--input-size", "16", "16"], "--input-size 16 16 is below the minimum"),
    (["--precisions", "fp8"], "unknown precision 'fp8'"),
    (["--calib-samples", "8"], "--calib-samples only applies to --precisions int8"),
    (["--precisions", "int8", "--calib-samples", "0"], "argument --calib-samples: must be >= 1"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench_main(argv + ["--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bench_imports_neither_the_cli_nor_a_runtime_up_front():
    """biformer_edge.cli imports the bench lazily; the bench must not import the cli back (it was a cycle)."""
    import subprocess
    code = ("import sys, biformer_edge.bench.plan, biformer_edge.bench.report, biformer_edge.bench.worker, "
            "biformer_edge.bench.artifacts; from biformer_edge.bench.plan import parser; parser(); "
            "bad = [m for m in ('biformer_edge.cli', 'onnxruntime', 'openvino', 'tensorrt', 'coremltools') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bench_never_writes_through_links_and_leaves_no_folder_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim.md").write_text("precious")
    (out / "bench.md").symlink_to(tmp_path / "victim.md")
    proc = subprocess.run([sys.executable, "-m", "biformer_edge.bench", "--models", "biformer_seg_demo",
                           "--backends", "onnxruntime", "--input-size", "64", "64", "--runs", "2", "--warmup", "0",
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr and proc.stderr.count("\n") == 1
    assert (tmp_path / "victim.md").read_text() == "precious"
    missing = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "biformer_edge.bench", "--artifact", str(tmp_path / "nope"),
                           "--output", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 2 and not missing.exists()
