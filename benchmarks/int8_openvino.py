"""OpenVINO INT8: how fast the INT8 IR that ``biformer-export --target openvino --int8`` writes runs on the CPU plugin
against the FP32 IR, what the router island costs against ``--routing naive``, and how close each stays to FP32
PyTorch.

    python benchmarks/int8_openvino.py [--mode speed accuracy] [--runs 50] [--threads 2] [--nncf] [--out bench_results]

``speed``: biformer_tiny at 224 (seeded random weights: speed does not depend on them), batch 1, ``--threads``
threads, every configuration compiled once and timed in one process, interleaved (each round runs every
configuration once, in a rotating order), median of ``--runs`` rounds after ``--warmup`` runs each:

- FP32 IR (as ``biformer-export --target openvino`` writes it), f32 hint: the baseline;
- the FP32 model converted through the INT8 IR's route (ONNX, then ``ov.convert_model``), f32 hint;
- INT8 IR, ``--routing qar`` (router island FP32) and ``--routing naive`` (router quantized), f32 hint (float layers
  f32: parity's default for INT8);
- where the CPU lists BF16: the same with the bf16 hint (float layers bf16, INT8 layers INT8), and the FP32 IR in bf16;
- ``--nncf`` (needs ``pip install nncf``): NNCF's default post-training quantization of the FP32 IR (router ops in its
  ignored scope), the alternative to the Q/DQ route that was measured against it.

For each INT8 configuration it reports what the plugin executed: the report's layers (Conv/MatMul/attention) counted
by runtime precision (i8/u8 = INT8 kernels), every runtime node counted by kernel and precision (Reorders included),
and where the time goes (``PERF_COUNT`` profile, summed per kernel and runtime precision).

``accuracy``: biformer_seg_demo at 128 with its shipped weights on ``--scenes`` held-out synthetic scenes (the parity
inputs, the "parity" scene set of biformer_edge/data/seeds.py; calibration uses its own): cosine, pixel agreement,
tie-aware ``routing`` and ``routing_strict`` against FP32 PyTorch, computed exactly as ``biformer-parity`` does, for
the island and naive INT8 IRs under the f32 hint (and bf16 where the CPU has it).

INT8 models come from the exporter's own path (``biformer_edge.quant.prepare.prepare_int8``: shipped default calibration
recipe, ``--calib-samples`` synthetic scenes, cached) and ``biformer_edge.backends.openvino.export``. Writes
``<out>/int8_openvino.{md,json}``; exit status 1 when a speed target is missed (INT8 island >= 1.4x the FP32 IR, island
no more than 10 % slower than naive, both with the f32 hint).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from biformer_edge import create_model
from biformer_edge.backends.base import ExportContext
from biformer_edge.backends.openvino import export as ov_export
from biformer_edge.backends.openvino import rules as ov_rules
from biformer_edge.backends.openvino import session as ov_session
from biformer_edge.bench.report import cpu_name
from biformer_edge.contract import IR_XML
from biformer_edge.cpu import DEFAULT_CPU_CLASS
from biformer_edge.parity.check import measure_backend, run_reference
from biformer_edge.parity.inputs import parity_inputs
from biformer_edge.quant.prepare import prepare_int8
from biformer_edge.quant.report import check_int8_graph
from biformer_edge.quant.settings import QuantSettings

ROOT = Path(__file__).resolve().parents[1]
SPEED_MODEL, SPEED_SIZE = "biformer_tiny", 224
ACCURACY_MODEL, ACCURACY_SIZE = "biformer_seg_demo", 128
TARGET_SPEEDUP = 1.4        # INT8 island (f32 hint) over the FP32 IR (f32 hint)
TARGET_ISLAND_COST = 1.10   # island latency / naive latency, f32 hint
INT8_PRECISIONS = ("i8", "u8")


def quiet(*_):
    pass


def export_ir(model, workdir: Path, precision: str, shape: tuple, routing: str = "qar",
              calib_samples: int | None = None, log=print, cpu: str = DEFAULT_CPU_CLASS) -> Path:
    """The IR ``biformer-export --target openvino`` writes: FP32, or INT8 from ``prepare_int8``'s fake-quantized
    copy (the exporter's path, calibration cache included)."""
    export_model, quant = model, None
    if precision == "int8":
        quant = QuantSettings(samples=calib_samples, routing=routing, cpu=cpu)
        export_model = prepare_int8(model, quant, shape, log)[0].model
    ctx = ExportContext(workdir=workdir, target="openvino", precision=precision, input_shape=tuple(shape),
                        log=quiet, routing=routing)
    ov_export.export(export_model, ctx)
    if quant is not None:   # as the exporter: the router island checked on the IR
        check_int8_graph(workdir, ov_export.int8_graph(workdir), routing, ctx.checks)
    return workdir


def fp32_onnx_ir(model, workdir: Path, shape: tuple) -> Path:
    """The FP32 model through the INT8 IR's route (TorchScript ONNX, then ``ov.convert_model``) instead of
    ``ov.convert_model`` of the PyTorch module: what the conversion route alone does to speed."""
    import openvino as ov

    workdir.mkdir(parents=True, exist_ok=True)
    ov_model, _ = ov_export.convert_qdq(model, shape, 17, workdir)
    ov.save_model(ov_model, str(workdir / IR_XML), compress_to_fp16=False)
    return workdir


def nncf_ir(fp32_dir: Path, workdir: Path, shape: tuple, samples: int, routing: str) -> Path:
    """NNCF's default PTQ (``nncf.quantize``, mixed preset) of the FP32 IR on the same calibration scenes, the router
    ops in its ignored scope for qar."""
    import nncf
    import openvino as ov

    from biformer_edge.quant.calibration import calibration_inputs, resolve_recipe

    model = ov_rules._core().read_model(str(fp32_dir / IR_XML))
    batches = calibration_inputs(resolve_recipe(None, samples), shape)
    kwargs = {}
    if routing == "qar":
        names = [n.get_friendly_name() for n in ov_rules.router_nodes(model) if n.get_type_name() != "Constant"]
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=names, validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(list(batches)), subset_size=len(batches), **kwargs)
    workdir.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(workdir / IR_XML), compress_to_fp16=False)
    return workdir


# ----------------------------------------------------------------------------------------------------------- speed


def profile(session: ov_session.OpenVINOSession, x: np.ndarray, runs: int = 20) -> tuple[dict, dict]:
    """Milliseconds per inference (PERF_COUNT profile of the same IR and config) by ``kernel precision``, and by
    runtime node (``kernel precision: name`` with the block index taken out, so the same op of every block adds up)."""
    core = ov_rules._core()
    model = core.read_model(str(session.xml))
    compiled = core.compile_model(model, "CPU", {**session.config, "PERF_COUNT": True})
    kinds = {r["name"]: f"{r['kernel']} {r['precision']}" for r in ov_session.runtime_layers(compiled)}
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer({0: x})
    by_kind: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    for _ in range(runs):
        request.infer({0: x})
        for info in request.get_profiling_info():
            ms = info.real_time.total_seconds() * 1e3 / runs
            kind = kinds.get(info.node_name, info.node_type)
            by_kind[kind] += ms
            node = re.sub(r"stages\.\d+(\.\d+)?", "stages.*", info.node_name.replace("/model/", ""))
            node = re.sub(r"_\d+", "_*", node)
            by_node[f"{kind}: {node}"] += ms

    def ranked(d):
        return dict(sorted(d.items(), key=lambda kv: -kv[1]))
    return ranked(by_kind), dict(list(ranked(by_node).items())[:12])


def executed_counts(session: ov_session.OpenVINOSession) -> dict:
    """What the plugin executed: the layer report's layers (Conv/MatMul/attention of the IR) by runtime precision,
    those not run by an INT8 kernel by op, and every runtime node by ``kernel precision``."""
    nodes = Counter(f"{r['kernel']} {r['precision']}" for r in ov_session.runtime_layers(session.compiled)
                    if r["kernel"] not in ("Const", "Input", "Output"))
    graph = ov_export.int8_graph(session.xml.parent, session.requested_hint)
    rows = graph.rows
    return {"runtime_nodes": dict(nodes.most_common()), "layers": graph.executed["by_precision"],
            "float_layers": dict(Counter(f"{r['op']} {r['executed']}" for r in rows
                                         if r["executed"] not in INT8_PRECISIONS).most_common())}


def speed(args, log=print) -> dict:
    import torch

    torch.manual_seed(0)
    model = create_model(SPEED_MODEL, pretrained=False).eval()
    shape = (1, 3, SPEED_SIZE, SPEED_SIZE)
    bf16 = "BF16" in ov_rules.cpu_capabilities()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="biformer-int8-ov-") as tmp:
        tmp = Path(tmp)
        log(f"exporting {SPEED_MODEL} {SPEED_SIZE}: FP32 IR, INT8 IR (qar, naive)")
        irs = {"fp32": export_ir(model, tmp / "fp32", "fp32", shape),
               "int8 qar": export_ir(model, tmp / "qar", "int8", shape, "qar", args.calib_samples, log),
               "int8 naive": export_ir(model, tmp / "naive", "int8", shape, "naive", args.calib_samples, log),
               "int8 qar 8-bit weights": export_ir(model, tmp / "qar8", "int8", shape, "qar", args.calib_samples, log,
                                                   cpu="vnni"),
               "fp32 via onnx": fp32_onnx_ir(model, tmp / "fp32-onnx", shape)}
        if args.nncf:
            log("NNCF PTQ of the FP32 IR (qar: router ops ignored)")
            irs["nncf qar"] = nncf_ir(irs["fp32"], tmp / "nncf", shape, args.calib_samples or 128, "qar")
        configs = [("fp32", "f32"), ("int8 qar", "f32"), ("int8 naive", "f32"), ("fp32 via onnx", "f32"),
                   ("int8 qar 8-bit weights", "f32")]
        if args.nncf:
            configs.append(("nncf qar", "f32"))
        if bf16:
            configs += [("int8 qar", "bf16"), ("int8 naive", "bf16"), ("fp32", "bf16")]
            if args.nncf:
                configs.append(("nncf qar", "bf16"))
        sessions = {}
        for ir, hint in configs:
            s = ov_session.OpenVINOSession(irs[ir], precision_hint=hint, threads=args.threads)
            s.xml = irs[ir] / IR_XML
            sessions[f"{ir} {hint}"] = s
        for s in sessions.values():
            for _ in range(args.warmup):
                s.request.infer({0: x})
        names = list(sessions)
        times: dict[str, list[float]] = {n: [] for n in names}
        load_before = os.getloadavg()
        log(f"timing {len(names)} configurations x {args.runs} interleaved rounds, load {fmt_load(load_before)}")
        for i in range(args.runs):
            for name in names[i % len(names):] + names[:i % len(names)]:
                request = sessions[name].request
                t = time.perf_counter()
                request.infer({0: x})
                times[name].append(time.perf_counter() - t)
        load_after = os.getloadavg()
        base = float(np.median(times["fp32 f32"])) * 1e3
        rows = []
        for name in names:
            t = np.array(times[name]) * 1e3
            s = sessions[name]
            ir = name.rsplit(" ", 1)[0]
            rows.append({"config": name, "ir": ir, "hint": s.requested_hint, "computes": s.inference_precision,
                         "median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
                         "p90_ms": float(np.percentile(t, 90)), "speedup": base / float(np.median(t)),
                         **executed_counts(s)})
        if args.profile:
            log("PERF_COUNT profiles")
            for row in rows:
                row["profile_ms"], row["profile_nodes_ms"] = profile(sessions[row["config"]], x)
    med = {r["config"]: r["median_ms"] for r in rows}
    targets = {"speedup": med["fp32 f32"] / med["int8 qar f32"], "island_cost": med["int8 qar f32"] /
               med["int8 naive f32"]}
    targets["ok"] = targets["speedup"] >= TARGET_SPEEDUP and targets["island_cost"] <= TARGET_ISLAND_COST
    return {"model": SPEED_MODEL, "size": SPEED_SIZE, "threads": args.threads, "runs": args.runs,
            "warmup": args.warmup, "load_before": load_before, "load_after": load_after, "rows": rows,
            "targets": targets}


# -------------------------------------------------------------------------------------------------------- accuracy


def accuracy(args, log=print) -> dict:
    model = create_model(ACCURACY_MODEL).eval()   # shipped (trained) weights
    shape = (1, 3, ACCURACY_SIZE, ACCURACY_SIZE)
    inputs, source = parity_inputs(shape, None, args.scenes)
    log(f"FP32 PyTorch reference of {ACCURACY_MODEL} {ACCURACY_SIZE} on {source}")
    ref = run_reference(model, inputs, "cpu")
    hints = ["f32"] + (["bf16"] if "BF16" in ov_rules.cpu_capabilities() else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="biformer-int8-ov-acc-") as tmp:
        tmp = Path(tmp)
        irs = {routing: export_ir(model, tmp / routing, "int8", shape, routing, args.calib_samples, log)
               for routing in ("qar", "naive")}
        if args.nncf:
            fp32 = export_ir(model, tmp / "fp32", "fp32", shape)
            irs["nncf qar"] = nncf_ir(fp32, tmp / "nncf", shape, args.calib_samples or 128, "qar")
        for routing, path in irs.items():
            for hint in hints:
                session = ov_session.OpenVINOSession(path, precision_hint=hint, threads=args.threads)
                m = measure_backend(session, ref, "segmentation", getattr(model, "num_classes", None))
                row = {"mode": routing, "hint": hint, "computes": session.inference_precision,
                       **{k: float(m[k]) for k in ("cosine", "pixel", "miou", "routing", "routing_strict",
                                                   "routing_ties") if k in m}}
                rows.append(row)
                log(f"  {routing:8} hint {hint:4}: cosine {row['cosine']:.6f} pixel {row['pixel']:.4f} "
                    f"routing {row['routing']:.4f} strict {row['routing_strict']:.4f}")
    return {"model": ACCURACY_MODEL, "size": ACCURACY_SIZE, "weights": "shipped", "scenes": int(np.prod(
        inputs.shape[:2])), "inputs": source, "rows": rows}


# --------------------------------------------------------------------------------------------------------- report


def fmt_load(load) -> str:
    return " / ".join(f"{v:.2f}" for v in load)


def render(result: dict) -> str:
    meta = result["meta"]
    lines = ["# OpenVINO INT8: speed and accuracy", "",
             f"CPU: {meta['cpu']} ({os.cpu_count()} cores); OpenVINO {meta['openvino']}; OPTIMIZATION_CAPABILITIES "
             f"{meta['capabilities']}; {meta['toolkit']}.", ""]
    sp = result.get("speed")
    if sp:
        t = sp["targets"]
        lines += [f"## Speed: {sp['model']} {sp['size']}x{sp['size']}, batch 1, {sp['threads']} threads",
                  "",
                  f"Median of {sp['runs']} interleaved rounds after {sp['warmup']} warmup runs each. Load average "
                  f"(1/5/15 min) {fmt_load(sp['load_before'])} before, {fmt_load(sp['load_after'])} after.", "",
                  "| config | hint | computes | median ms | p10 | p90 | vs FP32 f32 | layers by executed precision |",
                  "|---" * 8 + "|"]
        for r in sp["rows"]:
            layers = ", ".join(f"{p} {n}" for p, n in r.get("layers", {}).items()) or "-"
            lines.append(f"| {r['ir']} | {r['hint']} | {r['computes']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | "
                         f"{r['p90_ms']:.2f} | {r['speedup']:.2f}x | {layers} |")
        lines += ["", f"Targets (f32 hint): INT8 island over FP32 {t['speedup']:.2f}x (>= {TARGET_SPEEDUP}x: "
                      f"{'met' if t['speedup'] >= TARGET_SPEEDUP else 'MISSED'}); island / naive "
                      f"{t['island_cost']:.3f} (<= {TARGET_ISLAND_COST}: "
                      f"{'met' if t['island_cost'] <= TARGET_ISLAND_COST else 'MISSED'}).", ""]
        lines += ["### What stays float, and where the time goes", ""]
        for r in sp["rows"]:
            if r["ir"].startswith(("int8", "nncf")):
                lines.append(f"- {r['config']}: layers not executed in INT8: "
                             + (", ".join(f"{k} x{v}" for k, v in r["float_layers"].items()) or "none"))
        lines.append("")
        for r in sp["rows"]:
            nodes = r["runtime_nodes"]
            reorders = sum(v for k, v in nodes.items() if k.startswith("Reorder"))
            lines.append(f"- {r['config']}: {sum(nodes.values())} runtime nodes, {reorders} Reorders; "
                         + ", ".join(f"{k} x{v}" for k, v in list(nodes.items())[:10]))
        if any("profile_ms" in r for r in sp["rows"]):
            lines += ["", "PERF_COUNT profile, ms per inference by kernel and runtime precision (top 8; the profile "
                          "serializes, so its total exceeds the median):", ""]
            for r in sp["rows"]:
                prof = r.get("profile_ms", {})
                lines.append(f"- {r['config']} (total {sum(prof.values()):.1f} ms): "
                             + ", ".join(f"{k} {v:.1f}" for k, v in list(prof.items())[:8]))
            lines += ["", "Slowest runtime nodes (summed over blocks), ms per inference:", ""]
            for r in sp["rows"]:
                if r["hint"] == "f32" and "profile_nodes_ms" in r:
                    lines.append(f"- {r['config']}: " + "; ".join(f"{k} {v:.2f}" for k, v in
                                                                list(r["profile_nodes_ms"].items())[:6]))
        lines.append("")
    acc = result.get("accuracy")
    if acc:
        lines += [f"## Accuracy: {acc['model']} {acc['size']}x{acc['size']} ({acc['weights']} weights), "
                  f"{acc['scenes']} held-out scenes ({acc['inputs']}), against FP32 PyTorch", "",
                  "| INT8 | hint | computes | cosine | pixel | mIoU | routing (tie-aware) | routing strict |",
                  "|---" * 8 + "|"]
        for r in acc["rows"]:
            lines.append(f"| {r['mode']} | {r['hint']} | {r['computes']} | {r['cosine']:.6f} | {r['pixel']:.4f} | "
                         f"{r.get('miou', float('nan')):.4f} | {r['routing']:.4f} | {r['routing_strict']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", nargs="+", choices=("speed", "accuracy"), default=["speed", "accuracy"])
    p.add_argument("--runs", type=int, default=50, help="timed rounds (>= 30; default %(default)s)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scenes", type=int, default=32, help="accuracy scenes (default %(default)s)")
    p.add_argument("--calib-samples", type=int, default=None, help="calibration scenes (default: the exporter's)")
    p.add_argument("--nncf", action="store_true", help="also time NNCF's PTQ of the FP32 IR (pip install nncf)")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the PERF_COUNT profiles")
    p.add_argument("--out", default=str(ROOT / "bench_results"))
    a = p.parse_args(argv)
    import openvino as ov

    from biformer_edge.quant.int8 import toolkit_version

    result = {"meta": {"cpu": cpu_name(), "openvino": ov.__version__, "capabilities": ov_rules.cpu_capabilities(),
                       "toolkit": toolkit_version()}}
    if "speed" in a.mode:
        result["speed"] = speed(a)
    if "accuracy" in a.mode:
        result["accuracy"] = accuracy(a)
    text = render(result)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_openvino.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "int8_openvino.md").write_text(text)
    print(f"wrote {out}/int8_openvino.md")
    return 0 if "speed" not in result or result["speed"]["targets"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
