"""INT8 accuracy of the router island (QAR) against --routing naive, through onnxruntime's Q/DQ execution.

    python benchmarks/int8_routing.py [--scenes 64] [--photos DIR] [--tiny] [--qat PATH] [--runtime openvino]
                                      [--checkpoint FP32.pt] [--time-rounds 60] [--cpu portable vnni]
                                      [--graph onnx jetson]

For biformer_seg_demo (shipped weights) at 128x128: FP16, INT8 PTQ-QAR (router island + routing-aware keep-float
search), INT8 QAT-QAR (the shipped biformer-qat state, or --qat PATH) and INT8 naive, each exported
with biformer-export's own code and run by onnxruntime, against the FP32 PyTorch reference on held-out synthetic
scenes (the "held_out" scene set of biformer_edge/data/seeds.py; mIoU against their ground truth too) and, with
--photos, on a folder of photographs. ``--cpu`` exports the INT8 variants for each CPU class named (the weight range of
``biformer-export --cpu``; default portable) and names the machine's class in the table. --tiny adds the
cosine of biformer_tiny @ 224 (random weights) INT8 against FP32. ``--graph jetson`` measures the jetson target's graph
instead of the onnx target's (onnxruntime only): the same Q/DQ with its float layers in FP16 and the router and
LayerNorm FP32, as TensorRT runs it; ``--graph onnx jetson`` puts both in one table. Prints a Markdown table and writes
bench_results/int8_routing.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from biformer_edge.cpu import CPU_CLASSES, DEFAULT_CPU_CLASS, describe, detect
from biformer_edge.data.images import collect_images
from biformer_edge.data.seeds import scene_set
from biformer_edge.data.synthetic import render_scene
from biformer_edge.exporter import ExportRequest, export
from biformer_edge.metrics import miou, to_labels
from biformer_edge.models import create_model
from biformer_edge.parity.check import measure_backend, run_reference
from biformer_edge.preprocess import preprocess
from biformer_edge.targets import open_session

RESULTS = Path(__file__).resolve().parent.parent / "bench_results"


def batches(images: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    x = np.stack([preprocess(im, size) for im in images]).astype(np.float32)
    return x.reshape(len(images), 1, 3, *size)


def gt_miou(logits: np.ndarray, gt: np.ndarray | None, num_classes: int) -> str:
    """mIoU of predicted labels against the scenes' ground truth, at the model's output resolution."""
    if gt is None:
        return "-"
    labels = to_labels(logits.reshape(-1, *logits.shape[2:]))
    gt = np.stack([cv2.resize(g.astype(np.uint8), labels.shape[1:][::-1], interpolation=cv2.INTER_NEAREST)
                   for g in gt])
    return f"{miou(gt, labels, num_classes):.4f}"


def measure(model_name: str, size: tuple[int, int], variants: list[tuple[str, str, str, dict]],
            data: dict[str, np.ndarray], tmp: Path, truth: dict | None = None, runtime: str = "onnxruntime",
            checkpoint: str | None = None, time_rounds: int = 0, graph: str | None = None) -> list[list[str]]:
    """One row per variant and data set against the FP32 model (``checkpoint``, else the shipped weights, else
    seeded random ones), each variant exported by biformer-export's own code for ``runtime``. With ``time_rounds``,
    the p10 latency of each variant (batch 1, timed interleaved, round by round) is the last column."""
    model = create_model(model_name, checkpoint=checkpoint, pretrained=model_name == "biformer_seg_demo")
    target = graph or ("openvino" if runtime == "openvino" else "onnx")
    rows = []
    refs = {name: run_reference(model, x, "cpu") for name, x in data.items()}
    truth = truth if model.task == "segmentation" else {}
    classes = getattr(model, "num_classes", None)
    for data_name, ref in refs.items():
        if (truth or {}).get(data_name) is not None:
            rows.append([model_name, runtime, "fp32 (reference)", data_name, "1.00000", "1.0000", "1.0000", "0.0000",
                         "1.0000", "-", "-", gt_miou(ref["logits"], truth[data_name], classes), "-", "-"])
    sessions = {}
    for label, precision, routing, extra in variants:
        out = tmp / f"{model_name}-{runtime}-{target}-{label}"
        started = time.perf_counter()
        export(ExportRequest(target=target, precision=precision, model=model_name if model_name ==
                             "biformer_seg_demo" and not checkpoint else model, input_size=size, routing=routing,
                             output=str(out), parity=False, **extra), log=lambda _m: None)
        seconds = time.perf_counter() - started
        session = sessions[label] = open_session(runtime, out, None)
        for data_name, ref in refs.items():
            m = measure_backend(session, ref, model.task, classes)
            logits = np.stack([session.run(b).logits for b in ref["inputs"]])
            label_metric = m.get("pixel", m.get("top1"))
            rows.append([model_name, f"{runtime} ({target} graph)", label, data_name, f"{m['cosine']:.5f}",
                         f"{label_metric:.4f}",
                         f"{m['routing_decisive']:.4f}", f"{m['routing_regret']:.4f}", f"{m['routing_strict']:.4f}",
                         " / ".join(f"{v:.3f}" for v in m["routing_per_block"]),
                         f"{100 * m['routing_decisive_share']:.1f} %",
                         gt_miou(logits, (truth or {}).get(data_name), classes), f"{seconds:.1f}", "-"])
            print(" | ".join(rows[-1]), flush=True)
    if time_rounds:
        p10 = interleaved_p10(sessions, next(iter(data.values()))[0], time_rounds)
        for row in rows:
            row[-1] = f"{p10[row[2]]:.2f}" if row[2] in p10 else "-"
    return rows


def interleaved_p10(sessions: dict, x: np.ndarray, rounds: int) -> dict[str, float]:
    """p10 latency in ms of each session on ``x``: every round runs every session once, so load drifts hit all."""
    for session in sessions.values():
        for _ in range(10):
            session.run(x)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(x)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: float(np.percentile(t, 10)) for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=64, help="held-out synthetic scenes (default 64)")
    p.add_argument("--photos", help="a folder of photographs (any size; resized like every input)")
    p.add_argument("--tiny", action="store_true", help="also biformer_tiny @ 224 (random weights)")
    p.add_argument("--qat", help="a biformer-qat checkpoint of the demo model for the QAT row (default: the shipped "
                                 "QAT state, which a default --int8 export uses)")
    p.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                   help="onnxruntime runs the onnx target's Q/DQ graph, openvino the openvino target's IR")
    p.add_argument("--checkpoint", help="FP32 weights of the demo model to measure instead of the shipped ones "
                                        "(e.g. a train_demo --routing-margin fine-tune); no QAT row then")
    p.add_argument("--cpu", nargs="+", choices=CPU_CLASSES, default=[DEFAULT_CPU_CLASS],
                   help="INT8 variants for each of these --cpu classes (default %(default)s)")
    p.add_argument("--time-rounds", type=int, default=0, metavar="N",
                   help="also time each variant: p10 of N interleaved rounds, batch 1")
    p.add_argument("--graph", nargs="+", choices=("onnx", "jetson"), default=None,
                   help="onnxruntime: which target's Q/DQ graph to run: onnx (FP32 float layers, the default) or "
                        "jetson (FP16 float layers, router and LayerNorm FP32)")
    p.add_argument("--output", help="Markdown report (default bench_results/int8_routing[_RUNTIME].md)")
    p.add_argument("--json", help="also write the rows as JSON (a list of {column: value}), for "
                                  "benchmarks/default_model.py")
    a = p.parse_args(argv)
    if a.graph and a.runtime != "onnxruntime":
        p.error("--graph needs --runtime onnxruntime")
    size = (128, 128)
    scenes = [render_scene(seed, size) for seed in scene_set("held_out", a.scenes)]
    data = {"synthetic": batches([image for image, _ in scenes], size)}
    truth = {"synthetic": np.stack([label for _, label in scenes])}
    if a.photos:
        data["photos"] = batches(collect_images(a.photos, 1000), size)
    # --calib-samples forces calibration (PTQ); without it, the demo model's --int8 export uses its shipped QAT state
    weights = {"checkpoint": a.checkpoint} if a.checkpoint else {}
    variants = [*([("fp32", "fp32", "qar", weights)] if a.time_rounds else []), ("fp16", "fp16", "qar", weights)]
    for cpu_class in a.cpu:
        tag, options = (f" --cpu {cpu_class}" if len(a.cpu) > 1 else ""), {"options": {"cpu": cpu_class}}
        variants += [(f"int8-ptq-qar{tag}", "int8", "qar", {"calib_samples": 128, **weights, **options}),
                     *([] if a.checkpoint else [(f"int8-qat-qar{tag}", "int8", "qar",
                                                 {**({"checkpoint": a.qat} if a.qat else {}), **options})]),
                     (f"int8-naive{tag}", "int8", "naive", {**weights, **options})]
    header = ["model", "runtime", "variant", "data", "cosine", "pixel/top1", "decisive", "regret", "routing strict",
              "routing per block", "FP32 decisive share", "mIoU vs ground truth", "export s", "p10 ms"]
    print(f"CPU: {describe(detect())}; INT8 weights for --cpu {', '.join(a.cpu)}")
    print(" | ".join(header))
    with tempfile.TemporaryDirectory(prefix="int8-routing-") as tmp:
        rows = []
        for graph in a.graph or [None]:
            # the jetson target takes no --cpu: its INT8 weights are TensorRT's full 8 bits
            graph_variants = variants if graph != "jetson" else [
                (label, precision, routing, {k: v for k, v in extra.items() if k != "options"})
                for label, precision, routing, extra in variants if label.count("--cpu") == 0]
            rows += measure("biformer_seg_demo", size, graph_variants, data, Path(tmp), truth, a.runtime,
                            a.checkpoint, a.time_rounds, graph)
        if a.tiny:
            tiny = {"synthetic": batches([render_scene(seed, (224, 224))[0] for seed in scene_set("held_out", 8)],
                                         (224, 224))}
            tiny_variants = [(label, precision, routing, {"options": extra["options"], **(
                {"calib_samples": 128} if label.startswith("int8-ptq") else {})})
                for label, precision, routing, extra in variants if label.startswith(("int8-ptq", "int8-naive"))]
            rows += measure("biformer_tiny", (224, 224), tiny_variants, tiny, Path(tmp), runtime=a.runtime)
    table = [f"CPU: {describe(detect())}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows]
    name = "int8_routing" + ("" if a.runtime == "onnxruntime" else f"_{a.runtime}") + ".md"
    output = Path(a.output) if a.output else RESULTS / name
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(table) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": describe(detect()), "header": header,
                                            "rows": [dict(zip(header, r)) for r in rows]}, indent=1) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
