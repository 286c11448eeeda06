"""Where keeping the BRA router in FP32 matters: FP16 / BF16 runs with the router island on and off.

    python benchmarks/bench_fp16_router.py [--scenes 32] [--model biformer_seg_demo] [--output FILE]
    python benchmarks/bench_fp16_router.py --scenes 1 --output /tmp/fp16_router.md   # smoke

Rows, each against FP32 PyTorch on the same synthetic scenes (biformer_seg_demo with its shipped weights):
* onnxruntime on the FP16 ONNX that --target jetson/onnx --fp16 exports (router FP32) vs the same graph with the
  router in FP16 (the Cast island removed);
* PyTorch computing the whole network in float16 / bfloat16 with the router in FP32 or in the low precision
  (a stand-in for GPUs/NPUs and for CPUs with native FP16/BF16, which this CPU lacks: OpenVINO runs f32 here).
Writes bench_results/fp16_router.md (``--output``).
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

import biformer_edge as be
from biformer_edge import metrics
from biformer_edge.backends.onnx.export import export_onnx
from biformer_edge.backends.onnx.session import OnnxSession
from biformer_edge.models.routing import bra_blocks, run_torch
from biformer_edge.parity.inputs import parity_inputs

ROOT = Path(__file__).resolve().parents[1]


def set_router_fp32(model, on: bool):
    for block in bra_blocks(model):
        block.router_fp32 = on
    return model


def score(ref, logits, routing) -> dict:
    m = metrics.compare(ref.logits, ref.routing, logits, routing, "segmentation")
    return {k: m[k] for k in ("cosine", "pixel", "routing")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="biformer_seg_demo")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--output", default=str(ROOT / "bench_results" / "fp16_router.md"))
    a = p.parse_args()
    torch.manual_seed(0)
    model = be.create_model(a.model)
    shape = (a.scenes, 3, *model.default_input_size)
    x = parity_inputs(shape, None, a.scenes)[0][0]
    ref = run_torch(model, x)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for router_fp32 in (True, False):
            path = Path(tmp) / f"m{router_fp32}.onnx"
            export_onnx(set_router_fp32(copy.deepcopy(model), router_fp32), path, shape, fp16=True)
            out = OnnxSession(path).run(x)
            rows.append(("onnxruntime, FP16 ONNX", "fp32" if router_fp32 else "fp16",
                         score(ref, out.logits, out.routing)))
    for dtype in (torch.float16, torch.bfloat16):
        for router_fp32 in (True, False):
            low = set_router_fp32(copy.deepcopy(model), router_fp32).to(dtype)
            out = run_torch(low, x)
            name = str(dtype).replace("torch.", "")
            rows.append((f"PyTorch {name}", "fp32" if router_fp32 else name, score(ref, out.logits, out.routing)))
    lines = [f"# Router precision island: {a.model}, {a.scenes} synthetic scenes at "
             f"{shape[2]}x{shape[3]}, against FP32 PyTorch", "",
             "| run | router | cosine | pixel agreement | routing agreement |", "|---|---|---|---|---|"]
    lines += [f"| {run} | {router} | {s['cosine']:.7f} | {s['pixel']:.5f} | {s['routing']:.4f} |"
              for run, router, s in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
