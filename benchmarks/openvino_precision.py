"""What OpenVINO's CPU plugin does to BiFormer's routing in each compute precision: the numbers behind the precision
rule of ``biformer_edge/backends/openvino`` (its package doc) and the ``[thresholds.bf16]`` of ``export/openvino.toml``.

    python benchmarks/openvino_precision.py [biformer_seg_demo:128 biformer_seg_demo:256 biformer_tiny:224]
        [--samples 4] [--hints f32 f16 bf16] [--threads N] [--out bench_results]

For each model:size it exports the FP32 IR, the FP16 IR as biformer-export writes it (FP16 weights, router island
marked ``DisablePrecisionConversion``) and the same FP16 IR without the router marks, runs each under each
INFERENCE_PRECISION_HINT on the parity inputs (synthetic scenes) and compares with the FP32 PyTorch reference exactly
as ``biformer-parity`` does (``biformer_edge.parity``: tie-aware routing, pixel/top-1 agreement, logits cosine).
``computes`` is what the compiled model reports (an f16 hint runs in bf16 on CPUs with BF16 but no FP16 units),
``router`` the runtime precision the plugin gave the routers' affinity MatMuls (the island's core; TopK always runs
f32 on the CPU plugin, so it tells nothing). Models with shipped weights load them
(biformer_seg_demo); the others are seeded random. Writes ``<out>/openvino_precision.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from biformer_edge import create_model
from biformer_edge.backends.base import ExportContext
from biformer_edge.backends.openvino import export as ov_export
from biformer_edge.backends.openvino import rules as ov_rules
from biformer_edge.backends.openvino import session as ov_session
from biformer_edge.bench.report import cpu_name
from biformer_edge.models.registry import get_spec
from biformer_edge.models.routing import bra_blocks
from biformer_edge.parity.check import measure_backend, run_reference
from biformer_edge.parity.inputs import parity_inputs

DEFAULT_CONFIGS = ("biformer_seg_demo:128", "biformer_seg_demo:256", "biformer_tiny:224")
# IR label -> (export precision, router island marked)
VARIANTS = {"fp32": ("fp32", True), "fp16": ("fp16", True), "fp16-unmarked": ("fp16", False)}


def export_ir(model, workdir: Path, precision: str, shape: tuple, island: bool) -> Path:
    """biformer-export's OpenVINO IR of ``model``; ``island=False`` leaves the FP16 routers unmarked."""
    blocks = bra_blocks(model)
    flags = [b.router_fp32 for b in blocks]
    for b in blocks:
        b.router_fp32 = island
    try:
        ov_export.export(model, ExportContext(workdir, "openvino", precision, tuple(shape), log=lambda *a: None))
    finally:
        for b, f in zip(blocks, flags):
            b.router_fp32 = f
    return workdir


def router_runtime_precision(session: ov_session.OpenVINOSession) -> str:
    """The runtime precisions the plugin gave the routers' affinity MatMuls (one value when they agree)."""
    found = set()
    for op in session.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "originalLayersNames" not in info or "runtimePrecision" not in info:
            continue
        names = info["originalLayersNames"].astype(str).split(",")
        if any(ov_rules.router_scope(n) and n.endswith("/MatMul") for n in names):
            found.add(info["runtimePrecision"].astype(str))
    return "/".join(sorted(found)) or "?"


def measure(name: str, size: int, samples: int, hints: list[str], threads: int | None, log=print) -> list[dict]:
    spec = get_spec(name)
    model = create_model(name)  # shipped weights where the model has them, else seeded random init
    weights = "shipped" if getattr(model, "checkpoint_path", None) else "random"
    shape = (1, 3, size, size)
    inputs, source = parity_inputs(shape, None, samples)
    ref = run_reference(model, inputs, "cpu")
    num_classes = getattr(model, "num_classes", None) if spec.task == "segmentation" else None
    label_metric = "pixel" if spec.task == "segmentation" else "top1"
    rows = []
    with tempfile.TemporaryDirectory(prefix="biformer-ov-precision-") as tmp:
        for ir, (precision, island) in VARIANTS.items():
            path = export_ir(model, Path(tmp) / ir, precision, shape, island)
            for hint in (["f32"] if ir == "fp32" else hints):
                session = ov_session.OpenVINOSession(path, precision_hint=hint, threads=threads)
                m = measure_backend(session, ref, spec.task, num_classes)
                row = {"model": name, "size": size, "weights": weights, "ir": ir, "hint": hint,
                       "computes": session.inference_precision, "router": router_runtime_precision(session),
                       "routing": m["routing"], "routing_strict": m["routing_strict"],
                       "labels": label_metric, "agreement": m[label_metric], "cosine": m["cosine"],
                       "samples": int(np.prod(inputs.shape[:2])), "inputs": source}
                log(f"{name:>17} {size:>4} {ir:>13} hint={hint:<4} computes={row['computes']:<4} "
                    f"router={row['router']:<4} routing={row['routing']:.4f} {label_metric}={row['agreement']:.4f} "
                    f"cosine={row['cosine']:.6f}")
                rows.append(row)
    return rows


def render(rows: list[dict], meta: dict) -> str:
    lines = ["# OpenVINO CPU: routing under each compute precision", "",
             f"CPU: {meta['cpu']}; OpenVINO {meta['openvino']}; OPTIMIZATION_CAPABILITIES {meta['capabilities']}. "
             f"Reference: FP32 PyTorch on the parity inputs ({rows[0]['inputs'] if rows else '-'}).", "",
             "| model | size | weights | IR | hint | computes | router MatMul | routing | routing strict | "
             "pixel/top1 | cosine |", "|---" * 11 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['weights']} | {r['ir']} | {r['hint']} | {r['computes']} | "
                     f"{r['router']} | {r['routing']:.4f} | {r['routing_strict']:.4f} | {r['labels']} "
                     f"{r['agreement']:.4f} | {r['cosine']:.6f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", default=list(DEFAULT_CONFIGS), help="model:size (default: %(default)s)")
    p.add_argument("--samples", type=int, default=4, help="parity inputs per config (default 4, as parity)")
    p.add_argument("--hints", nargs="+", default=["f32", "f16", "bf16"], choices=sorted(ov_rules.PRECISION_HINTS))
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="bench_results")
    a = p.parse_args(argv)
    import openvino as ov

    meta = {"cpu": cpu_name(), "openvino": ov.__version__, "capabilities": ov_rules.cpu_capabilities()}
    print(f"{meta['cpu']}: OpenVINO {meta['openvino']}, capabilities {meta['capabilities']}")
    rows = []
    for config in a.configs:
        name, _, size = config.partition(":")
        rows += measure(name, int(size or get_spec(name).input_size[0]), a.samples, a.hints, a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "openvino_precision.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    (out / "openvino_precision.md").write_text(render(rows, meta))
    print(f"wrote {out}/openvino_precision.md")


if __name__ == "__main__":
    main()
