"""biformer-bench: a tiny real run (torch + onnxruntime, each in its own worker process), skips, bad input."""
import csv
import sys

import pytest

from biformer_edge.bench import main, plan
from biformer_edge.cli import bench_main

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


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_unavailable_backends_are_skipped_with_a_note(tmp_path):
    assert main(TINY + ["--backends", "coreml", "--precisions", "fp32", "int8", "--output", str(tmp_path)]) == 0
    rows = read_rows(tmp_path)
    assert [(r["backend"], r["precision"], r["status"]) for r in rows] == [
        ("coreml", "fp32", "skipped"), ("coreml", "int8", "skipped")]
    assert "macOS" in rows[0]["note"] and rows[0]["median_ms"] == ""
    assert not (tmp_path / "bench.png").exists()  # nothing measured, nothing to draw


def test_openvino_gets_a_row_for_the_cpu_default_hint():
    pytest.importorskip("openvino")
    shape = (1, 3, 64, 64)
    configs = plan(["biformer_seg_demo"], ["openvino"], ["fp32", "fp16"], {"biformer_seg_demo": shape})
    assert [(c.label.split(" ")[0], c.precision, c.hint) for c in configs] == [
        ("openvino", "fp32", "f32"), ("openvino", "fp32", "default"), ("openvino", "fp16", "f16")]
    assert configs[1].label.endswith(" default)")


@pytest.mark.parametrize("argv,message", [
    (["--backends", "tensorflow"], "unknown backend 'tensorflow'"),
    (["--backends", "onnxruntim"], "did you mean 'onnxruntime'?"),
    (["--models", "biformer_tiniest"], "unknown model 'biformer_tiniest'"),
    (["--runs", "0"], "--runs must be >= 1"),
    (["--precisions", "fp8"], "unknown precision 'fp8'"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench_main(argv + ["--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
