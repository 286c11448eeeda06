"""The layout-lean BRA formulation (``biformer_edge.models.bra``) against the one before it ("legacy":
tests/legacy_bra.py), same weights, in one process, on onnxruntime (FP32), OpenVINO (f32 hint) and eager PyTorch.

    python benchmarks/layout_lean.py [--cases biformer_tiny@224 biformer_seg_demo@128] [--rounds 12] [--runs 5]
    python benchmarks/layout_lean.py --cases biformer_seg_demo@64 --rounds 2 --runs 1 --profile-runs 2 \
        --memory-cases biformer_seg_demo@64   # smoke

For each case (random weights, seed 0; batch 1) it exports both formulations with the project's exporter (the
artifacts users get: ``biformer-bench``'s export requests, no parity), checks that they compute the same logits and
routing, then:

* latency ratio legacy / lean per runtime: ``--rounds`` rounds; in each, every runtime runs ``--runs`` inferences of
  each formulation (which one goes first alternates by round) and the round's ratio is the ratio of the two medians;
  reported: the median of the per-round ratios (and their range). The machine is shared: ratios of neighbouring
  runs, not absolute times, are what carries over.
* op-class shares of each (``biformer-bench --profile``'s profilers and op-class table, run here in-process after the
  timing), layout = Transpose/Reorder/Reshape/Split/Slice/Concat/...;
* the OpenVINO session's configuration (``SNIPPETS_MODE=DISABLE`` where the IR has the hazard pattern) and how many
  attention subgraphs the CPU plugin fused;
* peak activation memory of each (``--memory-cases``, default biformer_small_sfpn at 512): onnxruntime's in a fresh
  process (benchmarks/bench_bra_export.py's measurement), the largest ONNX intermediate, the exporter's estimate.

Prints a table and writes it to ``--output`` (default bench_results/layout_lean.md). Exit status 1 when the two
formulations disagree.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMULATIONS = ("legacy", "lean")
RUNTIMES = ("onnxruntime", "openvino", "torch")
SEED = 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_case(text: str) -> tuple[str, int]:
    name, _, size = text.partition("@")
    return name, int(size)


def formulations(model) -> dict:
    """{"legacy": a copy of ``model`` switched to the previous formulation, "lean": ``model``}."""
    import copy

    from tests.legacy_bra import use_legacy_formulation
    return {"legacy": use_legacy_formulation(copy.deepcopy(model)), "lean": model}


def export_artifacts(models: dict, shape, tmp: Path) -> dict:
    """{(formulation, runtime): artifact dir} through the project's exporter."""
    from biformer_edge.bench.plan import export_request
    from biformer_edge.exporter import export
    out = {}
    for form in FORMULATIONS:
        for runtime in ("onnxruntime", "openvino"):
            path = tmp / f"{form}-{runtime}"
            log(f"  export {form} for {runtime}")
            out[form, runtime], _ = export(export_request(models[form], runtime, "fp32", shape, output=str(path)),
                                           log=lambda *_: None)
    return out


def open_runners(models: dict, artifacts: dict, threads: int) -> dict:
    from biformer_edge.backends.pytorch.session import TorchSession
    from biformer_edge.bench.sessions import session_options
    from biformer_edge.manifest import read_manifest
    from biformer_edge.targets import open_session
    runners = {}
    for form in FORMULATIONS:
        for runtime in RUNTIMES:
            if runtime == "torch":
                runners[form, runtime] = TorchSession(models[form])
                continue
            options = session_options(runtime, threads, "f32" if runtime == "openvino" else None)
            if runtime == "onnxruntime":   # an idle session's threads must not spin on the cores the other uses
                options["config"] = {"session.intra_op.allow_spinning": "0"}
            art = artifacts[form, runtime]
            runners[form, runtime] = open_session(runtime, art, read_manifest(art), **options)
    return runners


def agreement(runners: dict, x) -> dict:
    """Max |logit difference| and routing equality of lean vs legacy, per runtime."""
    import numpy as np
    out = {}
    for runtime in RUNTIMES:
        a, b = runners["legacy", runtime].run(x), runners["lean", runtime].run(x)
        same_routing = len(a.routing) == len(b.routing) and all(np.array_equal(p, q)
                                                                  for p, q in zip(a.routing, b.routing))
        out[runtime] = {"max_abs_diff": float(np.abs(a.logits - b.logits).max()), "routing_equal": same_routing}
    return out


def interleaved_ratios(runners: dict, x, rounds: int, runs: int) -> dict:
    """runtime -> {"ratios": per-round legacy/lean ratio of the median wall times, "cpu_ratios": the same of the
    process CPU time (all threads: what the inference cost the cores, less moved by other jobs taking the cores),
    "legacy_ms"/"lean_ms": per-round median wall times}."""
    res = {rt: {"ratios": [], "cpu_ratios": [], "legacy_ms": [], "lean_ms": []} for rt in RUNTIMES}
    for rt in RUNTIMES:   # warm-up
        for form in FORMULATIONS:
            for _ in range(2):
                runners[form, rt].run(x)
    for r in range(rounds):
        for rt in RUNTIMES:
            medians, cpu = {}, {}
            for form in (FORMULATIONS if r % 2 == 0 else FORMULATIONS[::-1]):
                times, cpu_times = [], []
                for _ in range(runs):
                    t0, c0 = time.perf_counter(), time.process_time()
                    runners[form, rt].run(x)
                    times.append((time.perf_counter() - t0) * 1e3)
                    cpu_times.append((time.process_time() - c0) * 1e3)
                medians[form], cpu[form] = statistics.median(times), statistics.median(cpu_times)
            res[rt]["legacy_ms"].append(medians["legacy"])
            res[rt]["lean_ms"].append(medians["lean"])
            res[rt]["ratios"].append(medians["legacy"] / medians["lean"])
            res[rt]["cpu_ratios"].append(cpu["legacy"] / cpu["lean"])
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{rt} {res[rt]['ratios'][-1]:.2f}x" for rt in RUNTIMES))
    return res


def profile_shares(name: str, shape, models: dict, artifacts: dict, args, scratch: Path) -> dict:
    """(formulation, runtime) -> op-class shares (%) and the runtime's configuration, from biformer-bench --profile's
    profilers (in this process; the torch one is handed the formulation's model instead of loading it by name)."""
    from unittest import mock

    from biformer_edge.backends.pytorch.session import TorchSession
    from biformer_edge.bench import sessions
    from biformer_edge.bench.plan import Config
    from biformer_edge.bench.profile import ProfileRow
    from biformer_edge.bench.profilers import PROFILERS
    from biformer_edge.parity.inputs import parity_inputs
    x = parity_inputs(tuple(shape))[0][0]
    out = {}
    for form in FORMULATIONS:
        for rt in RUNTIMES:
            spec = {"backend": rt, "model": name, "precision": "fp32", "hint": "f32" if rt == "openvino" else None,
                    "threads": args.threads, "warmup": 3, "runs": args.profile_runs, "scratch": str(scratch)}
            if rt != "torch":
                spec["artifact"] = str(artifacts[form, rt])
            session = (TorchSession(models[form]), None, "f32")
            with mock.patch.object(sessions, "open_worker_session", lambda _spec, s=session: s):
                result = PROFILERS[rt](spec, x)
            row = ProfileRow(Config(name, rt, "fp32", rt, tuple(shape)))
            row.record(result)
            mha = row.ops.get("Subgraph:MHA", {}).get("calls", 0)
            out[form, rt] = {"shares": row.shares(), "config": row.runtime_config, "mha_subgraphs": mha,
                             "top": row.top_ops(6)}
    return out


def bench_case(name: str, size: int, args, tmp: Path) -> dict:
    import torch

    from biformer_edge.models import create_model
    from biformer_edge.parity.inputs import parity_inputs
    torch.manual_seed(SEED)
    model = create_model(name, pretrained=False).eval()
    shape = (1, 3, size, size)
    # a rendered scene, as the bench times (random noise through random weights hits float32 denormals)
    x = parity_inputs(shape)[0][0]
    log(f"{name} @ {size}")
    models = formulations(model)
    artifacts = export_artifacts(models, shape, tmp / f"{name}-{size}")
    torch.set_num_threads(args.threads)
    runners = open_runners(models, artifacts, args.threads)
    res = {"model": name, "size": size, "agreement": agreement(runners, x),
           "timing": interleaved_ratios(runners, x, args.rounds, args.runs)}
    del runners
    log("  profiles")
    res["profile"] = profile_shares(name, shape, models, artifacts, args, tmp / f"{name}-{size}")
    return res


def memory_case(name: str, size: int, args, tmp: Path) -> dict:
    """Peak activation memory of each formulation: onnxruntime's (VmHWM of a fresh process over the runs, less its
    RSS after loading: bench_bra_export.ort_memory), the largest intermediate of the ONNX graph, and the exporter's
    own estimate (biformer_edge.memory.estimate_peak_bytes)."""
    import torch

    from biformer_edge.backends.onnx.export import export_onnx
    from biformer_edge.memory import estimate_peak_bytes
    from biformer_edge.models import create_model
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_bra_export import largest_intermediate, ort_memory
    torch.manual_seed(SEED)
    models = formulations(create_model(name, pretrained=False).eval())
    shape = (1, 3, size, size)
    out = {}
    for form in FORMULATIONS:
        log(f"{name} @ {size}: memory of {form}")
        path = tmp / f"{name}-{size}-{form}.onnx"
        proto = export_onnx(models[form], path, shape, opset=17)
        estimate, largest_torch = estimate_peak_bytes(models[form], shape)
        out[form] = {"ort": ort_memory(path, args.memory_runs, args.threads), "largest": largest_intermediate(proto),
                     "estimate_bytes": estimate, "largest_torch_bytes": largest_torch}
        del proto
    return {"model": name, "size": size, **out}


def render_memory(mem: dict) -> list[str]:
    mib = 1 << 20
    rows = [("onnxruntime activation (VmHWM - RSS after load)",
             {f: mem[f]["ort"]["activation_kib"] / 1024 for f in FORMULATIONS}),
            ("largest ONNX intermediate", {f: mem[f]["largest"]["bytes"] / mib for f in FORMULATIONS}),
            ("exporter's peak estimate (biformer_edge.memory)", {f: mem[f]["estimate_bytes"] / mib
                                                                for f in FORMULATIONS})]
    lines = [f"## Peak activation memory, {mem['model']} @ {mem['size']}", "",
             "| | legacy MiB | lean MiB | lean / legacy |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {v['legacy']:.1f} | {v['lean']:.1f} | {v['lean'] / v['legacy']:.2f} |" for label, v in rows]
    big = {f: mem[f]["largest"] for f in FORMULATIONS}
    lines += ["", *(f"- largest ONNX intermediate, {f}: {big[f]['op']} {big[f]['shape']}" for f in FORMULATIONS), ""]
    return lines


def render(results: list[dict], args, meta: dict, memory: list[dict] = ()) -> str:
    from biformer_edge.bench.opclasses import CLASSES, LAYOUT
    lines = ["# Layout-lean BRA vs legacy formulation", "",
             f"machine: {meta['machine']}; load average {meta['load_start']} at start, {meta['load_end']} at end",
             f"versions: {meta['versions']}; threads {args.threads}; batch 1; FP32 (OpenVINO f32 hint); random "
             f"weights (seed {SEED})",
             f"command: python benchmarks/layout_lean.py {' '.join(sys.argv[1:])}",
             f"ratio: legacy / lean latency, median over {args.rounds} interleaved rounds of the per-round ratio of "
             f"medians ({args.runs} runs per formulation per round); range = min..max of the per-round ratios; "
             "CPU-time ratio: the same of the process CPU time (all threads) per inference", ""]
    for res in results:
        lines += [f"## {res['model']} @ {res['size']}", "",
                  "| runtime | ratio legacy/lean | range | CPU-time ratio | legacy ms (median) | lean ms (median) | "
                  "layout legacy | layout lean | lean == legacy |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for rt in RUNTIMES:
            t, agree = res["timing"][rt], res["agreement"][rt]
            sl, sn = (res["profile"][f, rt]["shares"][LAYOUT] for f in FORMULATIONS)
            ok = f"routing {'equal' if agree['routing_equal'] else 'DIFFERS'}, max diff {agree['max_abs_diff']:.1e}"
            lines.append(f"| {rt} | {statistics.median(t['ratios']):.2f}x | {min(t['ratios']):.2f}..."
                         f"{max(t['ratios']):.2f} | {statistics.median(t['cpu_ratios']):.2f}x | "
                         f"{statistics.median(t['legacy_ms']):.1f} | "
                         f"{statistics.median(t['lean_ms']):.1f} | {sl:.1f} % | {sn:.1f} % | {ok} |")
        lines += ["", "Op-class shares (profiled op time):", "",
                  "| class | " + " | ".join(f"{rt} {f}" for rt in RUNTIMES for f in FORMULATIONS) + " |",
                  "|---|" + "---:|" * (2 * len(RUNTIMES))]
        for cls in CLASSES:
            lines.append(f"| {cls} | " + " | ".join(f"{res['profile'][f, rt]['shares'][cls]:.1f} %"
                                                    for rt in RUNTIMES for f in FORMULATIONS) + " |")
        lines.append("")
        for f in FORMULATIONS:
            p = res["profile"][f, "openvino"]
            top = ", ".join(f"{op} {v['ms']:.2f} ms" for op, v in p["top"])
            lines.append(f"- OpenVINO {f}: {p['config']}; attention subgraphs per run: {p['mha_subgraphs']:.0f}; "
                         f"largest ops: {top}")
        for f in FORMULATIONS:
            p = res["profile"][f, "onnxruntime"]
            top = ", ".join(f"{op} {v['ms']:.2f} ms" for op, v in p["top"])
            lines.append(f"- onnxruntime {f}, largest ops: {top}")
        lines.append("")
    for mem in memory:
        lines += render_memory(mem)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=["biformer_tiny@224", "biformer_seg_demo@128"])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--runs", type=int, default=5, help="inferences per formulation per runtime per round")
    p.add_argument("--profile-runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-cases", nargs="*", default=["biformer_small_sfpn@512"],
                   help="peak activation memory of both formulations (none: skip)")
    p.add_argument("--memory-runs", type=int, default=2)
    p.add_argument("--output", default=str(ROOT / "bench_results" / "layout_lean.md"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from biformer_edge.bench import report
    from biformer_edge.cpu import describe, detect
    meta = {**report.machine_meta(args.threads, args.runs, 2, "random"), "machine": describe(detect())}
    results = []
    with tempfile.TemporaryDirectory(prefix="layout-lean-") as tmp:
        for case in args.cases:
            results.append(bench_case(*parse_case(case), args, Path(tmp)))
        memory = [memory_case(*parse_case(case), args, Path(tmp)) for case in args.memory_cases]
    meta["load_end"] = report.load_average()
    text = render(results, args, meta, memory)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    agree = all(a["routing_equal"] and a["max_abs_diff"] <= 1e-3 for r in results for a in r["agreement"].values())
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
