"""The measuring side of ``biformer-bench --profile``: one runtime's own per-op profiler over ``warmup`` + ``runs``
inferences, in the bench's worker process (``worker.py`` runs :func:`profile_worker` for a spec with ``"profile"``).

Every runtime runs on the CPU with the bench's thread count. The latencies are the wall times of the timed runs and
the per-op times come from the profiler of those same runs (profiling on: its overhead is in both):

* onnxruntime: ``SessionOptions.enable_profiling``; the trace's node events (``cat: Node``, ``*_kernel_time``,
  ``args.op_name``: the kernel's op type after onnxruntime's graph optimizations, e.g. FusedMatMul, ReorderInput)
  that fall inside the last ``runs`` ``model_run`` events;
* OpenVINO: ``PERF_COUNT`` on the compiled model, with the session's own configuration otherwise (precision hint,
  threads, ``SNIPPETS_MODE``); ``get_profiling_info()`` before and after the timed runs (the CPU plugin reports each
  node's mean ``real_time`` since compilation: the difference of the totals is the timed runs' time), by
  ``node_type`` (the CPU plugin's node, e.g. FullyConnected, Reorder, Subgraph);
* PyTorch: ``torch.profiler`` (CPU activity) around the timed runs, self CPU time by ATen op name.

Result: ``{"latencies_ms", "ops": {op type: {"ms", "calls"}} summed over the timed runs, "inference_precision",
"device", "config"}``.
"""
from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

from .opclasses import OV_MHA_SUBGRAPH


def timed_runs(run, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        run()
    latencies = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        latencies.append((time.perf_counter() - t0) * 1e3)
    return latencies


def _ops() -> defaultdict:
    return defaultdict(lambda: {"ms": 0.0, "calls": 0})


def ort_node_times(events: list[dict], runs: int) -> dict:
    """Op type -> summed kernel time and calls of the node events inside the last ``runs`` model runs of an
    onnxruntime trace (the earlier ones are the warm-up)."""
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])[-runs:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in model_runs]
    ops = _ops()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if any(lo <= e["ts"] <= hi for lo, hi in windows):
            entry = ops[e["args"]["op_name"]]
            entry["ms"] += e["dur"] / 1e3
            entry["calls"] += 1
    return dict(ops)


def profile_onnxruntime(spec: dict, x) -> dict:
    import numpy as np
    import onnxruntime as ort

    from ..backends.onnx.session import ort_session_options
    from ..contract import ONNX_FILE, graph_input
    from ..manifest import read_manifest
    artifact = Path(spec["artifact"])
    options = ort_session_options(spec["threads"])
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(spec["scratch"]) / "onnxruntime")
    sess = ort.InferenceSession(str(artifact / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    graph_in = sess.get_inputs()[0]
    dtype = np.float16 if graph_in.type == "tensor(float16)" else np.float32
    feed = {graph_in.name: np.asarray(graph_input(x, read_manifest(artifact).get("graph_io")), dtype=dtype)}
    latencies = timed_runs(lambda: sess.run(None, feed), spec["warmup"], spec["runs"])
    trace = Path(sess.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    return {"latencies_ms": latencies, "ops": ort_node_times(events, spec["runs"]),
            "inference_precision": "f16" if dtype is np.float16 else "f32", "device": "cpu",
            "config": f"CPUExecutionProvider, intra_op_num_threads {spec['threads']}"}


_AUTO_NAME = re.compile(r"^([A-Za-z]+)_\d+$")   # friendly names OpenVINO gives nodes it creates: <type>_<id>


def ov_mha_subgraphs(ov_model, compiled) -> set[str]:
    """Names of the CPU plugin's Snippets subgraphs that fused an attention pattern: a MatMul or the IR's
    ScaledDotProductAttention among the layers fused into them (the runtime model's ``originalLayersNames``; layers
    the plugin's transformations made are known by their automatic ``<type>_<id>`` names)."""
    ir_types = {op.get_friendly_name(): op.get_type_name() for op in ov_model.get_ordered_ops()}
    found = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) != "Subgraph":
            continue
        fused = [n for n in info["originalLayersNames"].astype(str).split(",") if n] if "originalLayersNames" in info \
            else []
        types = {ir_types.get(n) or (m.group(1) if (m := _AUTO_NAME.match(n)) else None) for n in fused}
        if types & {"MatMul", "ScaledDotProductAttention"}:
            found.add(op.get_friendly_name())
    return found


def profile_openvino(spec: dict, x) -> dict:
    import numpy as np
    import openvino as ov

    from ..contract import IR_XML, graph_input
    from ..manifest import read_manifest
    from ..targets import open_session
    from .sessions import session_options
    artifact = Path(spec["artifact"])
    manifest = read_manifest(artifact)
    # the session decides the configuration (hint, threads, SNIPPETS_MODE where the model needs it): profile that
    session = open_session("openvino", artifact, manifest,
                           **session_options("openvino", spec["threads"], spec.get("hint")))
    inner = getattr(session, "session", session)   # a pixel-input graph's session wraps the OpenVINO one
    config, precision = dict(inner.config), inner.inference_precision
    del session, inner
    core = ov.Core()
    ov_model = core.read_model(str(artifact / IR_XML))
    compiled = core.compile_model(ov_model, "CPU", {**config, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    mha = ov_mha_subgraphs(ov_model, compiled)
    feed = {0: np.ascontiguousarray(graph_input(x, manifest.get("graph_io")), dtype=np.float32)}
    executed = ov.ProfilingInfo.Status.EXECUTED

    def mean_times() -> dict:
        """(node, type) -> its mean time in ms over every inference since compilation: what the CPU plugin reports
        (Graph::GetPerfData returns PerfCount::avg(), whole microseconds; src/plugins/intel_cpu/src/graph.cpp and
        perf_count.h); a node under 1 us on average, or fused into another, reads NOT_RUN."""
        return {(n.node_name, n.node_type): n.real_time.total_seconds() * 1e3 for n in request.get_profiling_info()
                if n.status == executed}
    warmup, runs = spec["warmup"], spec["runs"]
    timed_runs(lambda: request.infer(feed), warmup, 0)   # warm-up
    before = mean_times() if warmup else {}
    latencies = timed_runs(lambda: request.infer(feed), 0, runs)
    after = mean_times()
    ops = _ops()
    for (name, node_type), mean_ms in after.items():
        # the timed runs' total: the total after them less the warm-up's total (each node runs once per inference)
        total = max(mean_ms * (warmup + runs) - before.get((name, node_type), 0.0) * warmup, 0.0)
        kind = OV_MHA_SUBGRAPH if node_type == "Subgraph" and name in mha else node_type
        ops[kind]["ms"] += total
        ops[kind]["calls"] += runs
    from .plan import hint_name
    shown = ", ".join(f"{k} {v}" for k, v in config.items() if k != "PERFORMANCE_HINT")
    return {"latencies_ms": latencies, "ops": dict(ops), "inference_precision": hint_name(precision),
            "device": "cpu", "config": shown}


def profile_torch(spec: dict, x) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .sessions import open_worker_session
    session, _, precision = open_worker_session(spec)   # sets the thread count, loads the weights, casts to fp16
    for _ in range(spec["warmup"]):
        session.run(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        latencies = timed_runs(lambda: session.run(x), 0, spec["runs"])
    ops = {e.key: {"ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in prof.key_averages()}
    return {"latencies_ms": latencies, "ops": ops, "inference_precision": precision, "device": "cpu",
            "config": f"eager, torch.set_num_threads({torch.get_num_threads()})"}


PROFILERS = {"onnxruntime": profile_onnxruntime, "openvino": profile_openvino, "torch": profile_torch}


def profile_worker(spec: dict) -> dict:
    import tempfile

    from ..parity.inputs import parity_inputs
    x = parity_inputs(tuple(spec["input_shape"]))[0][0]   # a rendered scene, as the bench times (worker.py says why)
    with tempfile.TemporaryDirectory(prefix="biformer-profile-") as scratch:
        return PROFILERS[spec["backend"]]({**spec, "scratch": scratch}, x)
