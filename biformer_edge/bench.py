"""biformer-bench: latency, throughput and memory of each model x backend x precision, on this machine.

Every configuration is measured in a fresh child process (``python -m biformer_edge.bench --worker '<json>'``), so
one runtime's allocator, thread pools or caches never leak into another's numbers. The child loads the session,
records its RSS, resets the kernel's RSS high-water mark, runs ``--warmup`` + ``--runs`` inferences and reports the
per-run latencies plus:

* peak RSS: the child's RSS high-water mark over its whole life (Python + imports + session + runs), read from
  VmHWM; ``ru_maxrss`` only where /proc is missing, because a child's ``ru_maxrss`` starts at its parent's RSS;
* loaded RSS: VmRSS right after the session was created (before the first inference);
* activation: the RSS high-water mark during the runs minus the loaded RSS, i.e. what inference itself adds.

Artifacts come from the backends' own ``export`` functions (the same code ``biformer-export`` runs), written into a
temporary directory; ``--artifact DIR`` benches an existing export instead. Every backend gets the same thread
count (``--threads``, default: every core this process may use).
"""
from __future__ import annotations

import copy
import csv
import difflib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .targets import runtime_unavailable

RESULT_MARKER = "BIFORMER_BENCH_RESULT "
DEFAULT_MODELS = ["biformer_tiny"]
DEFAULT_BACKENDS = ["torch", "onnxruntime", "openvino"]
BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt", "coreml")
BACKEND_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "ov": "openvino", "trt": "tensorrt",
                   "pytorch": "torch"}
PRECISIONS = ("fp32", "fp16", "int8")
# backend -> export target whose files it runs
EXPORT_TARGET = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt", "coreml": "coreml"}
OV_HINT = {"fp32": "f32", "fp16": "f16"}
CSV_FIELDS = ["model", "backend", "precision", "batch", "height", "width", "threads", "runs", "warmup", "status",
              "median_ms", "p90_ms", "mean_ms", "min_ms", "throughput_ips", "peak_rss_mib", "loaded_rss_mib",
              "activation_mib", "baseline_rss_mib", "artifact_mb", "inference_precision", "device", "note"]


# ------------------------------------------------------------------------------------------------- configuration


@dataclass
class Config:
    model: str
    backend: str                 # torch | onnxruntime | openvino | tensorrt | coreml
    precision: str               # fp32 | fp16 | int8
    label: str                   # backend as shown in the table, e.g. "openvino (bf16 default)"
    input_shape: tuple[int, int, int, int]
    hint: str | None = None      # OpenVINO INFERENCE_PRECISION_HINT; "default" = whatever the CPU plugin picks
    skip: str | None = None      # why this combination is not measured here


@dataclass
class Row:
    config: Config
    status: str = "ok"           # ok | skipped | failed
    note: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_mib: float | None = None
    loaded_rss_mib: float | None = None
    activation_mib: float | None = None
    baseline_rss_mib: float | None = None
    artifact_mb: float | None = None
    inference_precision: str = ""
    device: str = ""

    def stats(self) -> dict:
        import numpy as np
        if not self.latencies_ms:
            return {}
        lat = np.asarray(self.latencies_ms)
        batch = self.config.input_shape[0]
        return {"median_ms": float(np.median(lat)), "p90_ms": float(np.percentile(lat, 90)),
                "mean_ms": float(lat.mean()), "min_ms": float(lat.min()),
                "throughput_ips": batch * 1000.0 / float(lat.mean())}


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_backend(name: str) -> str:
    name = BACKEND_ALIASES.get(name.lower(), name.lower())
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown backend '{name}': {hint}choose from {', '.join(BACKENDS)}")
    return name


def runtime_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine at all (before anything is exported), or None."""
    return None if backend == "torch" else runtime_unavailable(backend)


def openvino_default_hint() -> str | None:
    """The CPU plugin's own INFERENCE_PRECISION_HINT here (bf16 on AVX512-BF16/AMX CPUs, f32 elsewhere)."""
    try:
        import openvino as ov
        return ov_type_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001 - no CPU plugin: the openvino rows say why on their own
        return None


def ov_type_name(value) -> str:
    """'f32' / 'bf16' / 'f16' from an openvino Type (or its string)."""
    text = value.to_string() if hasattr(value, "to_string") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


def plan(models: list[str], backends: list[str], precisions: list[str], shapes: dict[str, tuple]) -> list[Config]:
    """Every model x backend x precision, with a skip reason where this machine or backend cannot run it."""
    missing = {b: runtime_missing(b) for b in backends}
    ov_default = openvino_default_hint() if "openvino" in backends and not missing["openvino"] else None
    configs = []
    for model in models:
        shape = shapes[model]
        for backend in backends:
            for precision in precisions:
                skip = missing[backend]
                if precision == "int8":
                    skip = "INT8 lands with the quantization work"
                if backend != "openvino":
                    configs.append(Config(model, backend, precision, backend, shape, skip=skip))
                    continue
                configs.append(Config(model, backend, precision, "openvino", shape,
                                      hint=OV_HINT.get(precision), skip=skip))
                if precision == "fp32":
                    configs.append(openvino_default_config(model, shape, ov_default, skip))
    return configs


def openvino_default_config(model: str, shape: tuple, ov_default: str | None, skip: str | None) -> Config:
    label = f"openvino ({ov_default or '?'} default)"
    if skip is None and ov_default == "f32":
        skip = "the CPU plugin's default INFERENCE_PRECISION_HINT is f32 here: same as the pinned f32 row"
    return Config(model, "openvino", "fp32", label, shape, hint="default", skip=skip)


# ------------------------------------------------------------------------------------------------------ artifacts


class Artifacts:
    """Builds each model once (seeded) and each artifact once, into a temporary directory."""

    def __init__(self, root: Path, random_weights: bool, seed: int = 0):
        self.root, self.random_weights, self.seed = root, random_weights, seed
        self.models: dict[str, object] = {}
        self.dirs: dict[tuple, Path] = {}

    def model(self, name: str):
        if name not in self.models:
            import torch

            from .models import create_model
            torch.manual_seed(self.seed)
            try:
                model = create_model(name, pretrained=not self.random_weights)
            except UserError as exc:
                if "shipped weights" in str(exc):
                    raise UserError(f"{exc}; or pass --random-weights to bench without them") from None
                raise
            self.models[name] = model.float().eval()
        return self.models[name]

    def torch_weights(self, name: str) -> Path:
        path = self.root / f"{name}-torch.pt"
        if not path.exists():
            import torch
            torch.save(self.model(name).state_dict(), path)
        return path

    def export(self, config: Config, log) -> Path:
        from .targets import backend_module
        from .backends.base import ExportContext
        from .targets import load_profile

        target = EXPORT_TARGET[config.backend]
        key = (config.model, target, config.precision, config.input_shape)
        if key not in self.dirs:
            profile = load_profile(target)
            options = dict(profile.get("defaults", {}))
            if config.backend == "tensorrt":
                options["build"] = True
            workdir = self.root / f"{config.model}-{target}-{config.precision}-{'x'.join(map(str, config.input_shape))}"
            workdir.mkdir(parents=True)
            ctx = ExportContext(workdir=workdir, target=target, precision=config.precision,
                                input_shape=config.input_shape, opset=profile["target"].get("opset", 17),
                                profile=profile, options=options, log=log)
            # backends may cast the model (FP16): give them a copy
            backend_module(target).export(copy.deepcopy(self.model(config.model)), ctx)
            self.dirs[key] = workdir
        return self.dirs[key]


def artifact_bytes(path: Path, backend: str) -> int:
    files = {"onnxruntime": ["model.onnx"], "openvino": ["model.xml", "model.bin"], "tensorrt": ["model.engine"],
             "coreml": ["model.mlpackage"]}[backend]
    total = 0
    for name in files:
        p = path / name
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return total


# --------------------------------------------------------------------------------------------------------- worker


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next VmHWM is the peak of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def open_worker_session(spec: dict):
    backend, threads = spec["backend"], spec["threads"]
    if backend == "torch":
        import torch

        from .backends.tracing import TorchSession
        from .models import create_model
        model = create_model(spec["model"], pretrained=False)
        model.load_state_dict(torch.load(spec["weights"], map_location="cpu", weights_only=True))
        if spec["precision"] == "fp16":
            model = model.half()
        size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        return TorchSession(model.eval()), size, spec["precision"].replace("fp", "f")
    from .targets import open_session
    options = {}
    if backend == "onnxruntime":
        options = {"threads": threads}
    elif backend == "openvino":
        hint = spec["hint"]
        if hint == "default":
            hint = openvino_default_hint() or "f32"
        options = {"precision_hint": hint, "threads": threads}
    session = open_session(backend, spec["artifact"], spec.get("manifest") or {}, **options)
    precision = getattr(session, "inference_precision", "") or ""
    return session, artifact_bytes(Path(spec["artifact"]), backend), ov_type_name(precision) if precision else ""


def run_worker(spec: dict) -> dict:
    import torch

    from .parity.inputs import parity_inputs
    torch.set_num_threads(spec["threads"])
    # A rendered scene, the input parity uses: Gaussian noise through random weights drives softmax into float32
    # denormals, which x86 runs tens of times slower than any real image (biformer_tiny eager: 4.4 s vs 0.1 s).
    x = parity_inputs(tuple(spec["input_shape"]))[0][0]
    baseline_kib = _proc_status_kib("VmRSS")  # interpreter + imports (biformer_edge imports torch everywhere)
    session, size, precision = open_worker_session(spec)
    loaded_kib = _proc_status_kib("VmRSS")
    load_hwm_kib = _proc_status_kib("VmHWM")
    load_peak_kib = _maxrss_kib()
    hwm_reset = _reset_hwm()
    for _ in range(spec["warmup"]):
        session.run(x)
    latencies = []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        session.run(x)
        latencies.append((time.perf_counter() - t0) * 1e3)
    if hwm_reset and loaded_kib is not None and load_hwm_kib is not None:
        runs_hwm_kib = _proc_status_kib("VmHWM")
        activation_kib = max(runs_hwm_kib - loaded_kib, 0)
        # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's RSS (the pre-exec address space is
        # folded into it), so it would report the bench process's own peak.
        peak_kib = max(load_hwm_kib, runs_hwm_kib)
    else:  # no resettable high-water mark: what the runs added on top of the peak of loading (a lower bound)
        peak_kib = _maxrss_kib()
        activation_kib = max(peak_kib - load_peak_kib, 0)
    return {"latencies_ms": latencies, "peak_rss_mib": peak_kib / 1024,
            "loaded_rss_mib": (loaded_kib if loaded_kib is not None else load_peak_kib) / 1024,
            "baseline_rss_mib": baseline_kib / 1024 if baseline_kib is not None else None,
            "activation_mib": activation_kib / 1024, "artifact_bytes": size, "inference_precision": precision,
            "device": getattr(session, "device", "cpu"), "exact_activation": hwm_reset}


def worker_main(payload: str) -> int:
    try:
        result = run_worker(json.loads(payload))
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent as this configuration's failure
        text = str(exc).strip().splitlines()
        result = {"error": f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")}
        code = 1
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return code


def measure(spec: dict, row: Row) -> None:
    """Run one configuration in a fresh interpreter and fill ``row`` from its report."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "biformer_edge.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
    if result is None or "error" in result:
        row.status = "failed"
        if result is not None:
            row.note = result["error"]
        else:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            row.note = f"worker exited with {proc.returncode}" + (f": {tail[-1][:200]}" if tail else "")
        return
    row.latencies_ms = result["latencies_ms"]
    row.peak_rss_mib, row.loaded_rss_mib = result["peak_rss_mib"], result["loaded_rss_mib"]
    row.activation_mib, row.baseline_rss_mib = result["activation_mib"], result.get("baseline_rss_mib")
    row.artifact_mb = result["artifact_bytes"] / 1e6
    row.inference_precision, row.device = result["inference_precision"], result["device"]
    if row.config.hint == "default" and row.inference_precision:  # label with what the plugin really chose
        row.config.label = f"openvino ({row.inference_precision} default)"
    if not result["exact_activation"]:
        row.note = "activation: lower bound (no resettable RSS high-water mark here)"


# -------------------------------------------------------------------------------------------------------- reports


def fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        c, s = r.config, r.stats()
        n, _, h, w = c.input_shape
        if r.status != "ok":
            cells = ["-"] * 7
        else:
            cells = [fmt(s["median_ms"], 2), fmt(s["p90_ms"], 2), fmt(s["throughput_ips"], 1),
                     fmt(r.peak_rss_mib, 0), fmt(r.loaded_rss_mib, 0), fmt(r.activation_mib, 1),
                     fmt(r.artifact_mb, 2)]
        note = r.note if r.status == "ok" else f"{r.status}: {r.note}"
        if r.status == "ok" and c.backend == "openvino" and r.inference_precision:
            note = f"computes in {r.inference_precision}" + (f"; {note}" if note else "")
        out.append([c.model, c.label, c.precision, f"{n}x{h}x{w}", *cells, note])
    return out


HEADERS = ["model", "backend", "precision", "input", "median ms", "p90 ms", "img/s", "peak MiB", "loaded MiB",
           "act. MiB", "size MB", "note"]


def header_lines(meta: dict) -> list[str]:
    return [f"threads: {meta['threads']} for every backend (torch.set_num_threads, ORT intra_op_num_threads, "
            f"OV INFERENCE_NUM_THREADS); runs {meta['runs']} after {meta['warmup']} warm-up",
            f"machine: {meta['cpu']}, {meta['cores']} cores; load average at start {meta['load_start']}, "
            f"at end {meta['load_end']}",
            f"versions: {meta['versions']}; weights: {meta['weights']}",
            "each configuration runs in a fresh process: peak = its RSS high-water mark, VmHWM (interpreter + "
            "imports + session + runs; every worker imports torch, since biformer_edge does: see baseline_rss_mib "
            "in bench.csv); "
            "loaded = RSS once the session is created; act. = RSS high-water mark during the runs - loaded; "
            "size = artifact files (torch: parameters and buffers)"]


def render_text(rows: list[Row], meta: dict) -> str:
    body = table_rows(rows)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(HEADERS)]
    widths[-1] = len(HEADERS[-1])  # the note column is not padded
    numeric = set(range(4, 11))

    def line(cells):
        return "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()
    return "\n".join(header_lines(meta) + ["", line(HEADERS), line(["-" * w for w in widths])]
                     + [line(r) for r in body]) + "\n"


def render_markdown(rows: list[Row], meta: dict) -> str:
    lines = ["# biformer-bench", ""] + [f"- {h}" for h in header_lines(meta)] + [""]
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "|".join("---:" if 4 <= i <= 10 else "---" for i in range(len(HEADERS))) + "|")
    for r in table_rows(rows):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[Row], threads: int, runs: int, warmup: int) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            c, s = r.config, r.stats()
            n, _, h, w = c.input_shape
            rec = {"model": c.model, "backend": c.label, "precision": c.precision, "batch": n, "height": h,
                   "width": w, "threads": threads, "runs": runs, "warmup": warmup, "status": r.status,
                   "peak_rss_mib": r.peak_rss_mib, "loaded_rss_mib": r.loaded_rss_mib,
                   "activation_mib": r.activation_mib, "baseline_rss_mib": r.baseline_rss_mib,
                   "artifact_mb": r.artifact_mb,
                   "inference_precision": r.inference_precision, "device": r.device, "note": r.note, **s}
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v))
                             for k, v in rec.items()})


def write_plot(path: Path, rows: list[Row], meta: dict) -> str | None:
    """Bar chart of median latency with p90 whiskers. Returns a note when it could not be drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "bench.png skipped: matplotlib is not installed (pip install 'biformer-edge[apps]')"
    measured = [r for r in rows if r.status == "ok"]
    if not measured:
        return "bench.png skipped: no configuration was measured"
    labels = [f"{r.config.model}\n{r.config.label} {r.config.precision}" for r in measured]
    med = [r.stats()["median_ms"] for r in measured]
    p90 = [r.stats()["p90_ms"] for r in measured]
    palette = {"torch": "#ee4c2c", "onnxruntime": "#4c72b0", "openvino": "#6f42c1", "tensorrt": "#76b900",
               "coreml": "#999999"}
    colors = [palette.get(r.config.backend, "#555555") if r.config.hint != "default" else "#b39ddb"
              for r in measured]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(measured) + 2), 4.8))
    ax.bar(range(len(measured)), med, color=colors,
           yerr=[[0] * len(med), [max(p - m, 0) for p, m in zip(p90, med)]], capsize=4)
    for i, (m, p) in enumerate(zip(med, p90)):
        ax.annotate(f"{m:.1f}", (i, max(m, p)), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8)
    ax.margins(y=0.12)
    ax.set_xticks(range(len(measured)), labels, fontsize=7)
    ax.set_ylabel("latency ms (bar: median, whisker: p90)")
    ax.set_title(f"biformer-bench, {meta['threads']} threads, {meta['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def machine_meta(threads: int, runs: int, warmup: int, weights: str) -> dict:
    from importlib import metadata
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    versions = []
    for lib in ("torch", "onnxruntime", "openvino", "tensorrt", "coremltools"):
        try:
            versions.append(f"{lib} {metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            pass
    return {"threads": threads, "runs": runs, "warmup": warmup, "cpu": cpu, "cores": os.cpu_count(),
            "versions": ", ".join(versions), "weights": weights, "load_start": load_average(), "load_end": "?"}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ----------------------------------------------------------------------------------------------------------- main


def parser():
    from .console import OneLineParser
    p = OneLineParser(prog="biformer-bench",
                      description="Latency / throughput / memory of BiFormer across backends and precisions.")
    p.add_argument("--models", nargs="+", help=f"registered model names (default {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--backends", nargs="+", help=f"{', '.join(BACKENDS)} (default {' '.join(DEFAULT_BACKENDS)})")
    p.add_argument("--precisions", nargs="+", default=["fp32"], help="fp32 fp16 (default fp32)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="default: each model's own")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=30, help="timed inferences per configuration")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, help="threads for every backend (default: all cores)")
    p.add_argument("--output", default="bench_results", help="where bench.csv/md/png go (default bench_results/)")
    p.add_argument("--artifact", help="bench this existing artifact directory with the backends that can run it")
    p.add_argument("--random-weights", action="store_true",
                   help="bench models whose shipped weights are missing with random weights")
    return p


def validate(a) -> None:
    if a.runs < 1:
        raise UserError(f"--runs must be >= 1, got {a.runs}")
    if a.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {a.warmup}")
    if a.batch < 1:
        raise UserError(f"--batch must be >= 1, got {a.batch}")
    if a.threads is not None and a.threads < 1:
        raise UserError(f"--threads must be >= 1, got {a.threads}")
    if a.input_size is not None:
        from .models.biformer import MIN_INPUT_SIZE
        if min(a.input_size) < MIN_INPUT_SIZE:
            raise UserError(f"--input-size {a.input_size[0]} {a.input_size[1]} is below the minimum "
                            f"{MIN_INPUT_SIZE} {MIN_INPUT_SIZE}")
    for prec in a.precisions:
        if prec not in PRECISIONS:
            raise UserError(f"unknown precision '{prec}': choose from {', '.join(PRECISIONS[:2])}")
    a.backends = list(dict.fromkeys(resolve_backend(b) for b in a.backends)) if a.backends else None
    a.models = list(dict.fromkeys(a.models)) if a.models else None
    if a.artifact is not None:
        if a.models:
            raise UserError("--artifact benches the artifact's own model: drop --models")
        return
    from .models import get_spec
    for name in a.models or DEFAULT_MODELS:
        get_spec(name)


def artifact_configs(a) -> tuple[list[Config], dict, Path]:
    """Configurations for ``--artifact DIR``: every backend whose file is in it (or that was asked for)."""
    from .artifact import read_manifest
    from .targets import RUNTIMES as SESSIONS, unavailable_reason
    path = Path(a.artifact)
    manifest = read_manifest(path)
    shape = tuple(int(s) for s in manifest["input_shape"])
    if a.input_size and tuple(a.input_size) != shape[2:]:
        raise UserError(f"{path} has a static input of {shape[2]}x{shape[3]}: drop --input-size or re-export")
    if a.batch != 1 and a.batch != shape[0]:
        raise UserError(f"{path} has a static batch of {shape[0]}: drop --batch or re-export")
    model, precision = manifest["model"], manifest["precision"]
    configs = []
    for backend in a.backends or list(SESSIONS):
        if backend == "torch":
            configs.append(Config(model, "torch", precision, "torch", shape,
                                  skip="torch runs models, not exported artifacts"))
            continue
        reason = unavailable_reason(backend, path)
        if reason and reason.startswith("no ") and reason.endswith("in the artifact") and not a.backends:
            continue  # a file this kind of artifact never has
        if backend == "openvino":
            hint = OV_HINT.get(precision, "f32")
            configs.append(Config(model, backend, precision, "openvino", shape, hint=hint, skip=reason))
            if precision == "fp32":
                configs.append(openvino_default_config(model, shape, openvino_default_hint() if not reason else None,
                                                       reason))
        else:
            configs.append(Config(model, backend, precision, backend, shape, skip=reason))
    return configs, manifest, path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        if len(argv) != 2:
            raise UserError("--worker takes one JSON argument")
        return worker_main(argv[1])
    from tqdm import tqdm

    a = parser().parse_args(argv)
    validate(a)
    threads = a.threads or default_threads()
    out = Path(a.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out} ({exc.strerror}): choose a writable --output") from None

    manifest, artifact_dir = None, None
    if a.artifact:
        configs, manifest, artifact_dir = artifact_configs(a)
        weights = f"from the artifact ({manifest.get('weights', '?')})"
    else:
        from .models import get_spec
        models = a.models or DEFAULT_MODELS
        shapes = {m: (a.batch, 3, *(tuple(a.input_size) if a.input_size else get_spec(m).input_size))
                  for m in models}
        configs = plan(models, a.backends or DEFAULT_BACKENDS, list(dict.fromkeys(a.precisions)), shapes)
        weights = "random (seed 0)" if a.random_weights else "shipped where the model has them, else random (seed 0)"
    meta = machine_meta(threads, a.runs, a.warmup, weights)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="biformer-bench-") as tmp:
        arts = Artifacts(Path(tmp), a.random_weights)
        if artifact_dir is None:
            for name in dict.fromkeys(c.model for c in configs if not c.skip):
                arts.model(name)  # missing weights etc. fail here, before any measurement
        bar = tqdm(configs, desc="bench", unit="config", file=sys.stderr, dynamic_ncols=True)
        for config in bar:
            bar.set_postfix_str(f"{config.model} {config.label} {config.precision}")
            row = Row(config)
            rows.append(row)
            if config.skip:
                row.status, row.note = "skipped", config.skip
                continue
            spec = {"backend": config.backend, "model": config.model, "precision": config.precision,
                    "hint": config.hint, "input_shape": list(config.input_shape), "runs": a.runs,
                    "warmup": a.warmup, "threads": threads}
            try:
                if artifact_dir is not None:
                    spec.update(artifact=str(artifact_dir), manifest=manifest)
                elif config.backend == "torch":
                    spec["weights"] = str(arts.torch_weights(config.model))
                else:
                    spec["artifact"] = str(arts.export(config, log=lambda msg: None))
            except UserError as exc:
                if "--random-weights" in str(exc):
                    raise
                row.status, row.note = "skipped", f"export: {exc}"
                continue
            except Exception as exc:  # noqa: BLE001 - one broken export must not stop the table
                row.status, row.note = "failed", f"export: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            measure(spec, row)
        bar.close()

    meta["load_end"] = load_average()
    text = render_text(rows, meta)
    print(text, end="")
    write_csv(out / "bench.csv", rows, threads, a.runs, a.warmup)
    (out / "bench.md").write_text(render_markdown(rows, meta))
    plot_note = write_plot(out / "bench.png", rows, meta)
    written = ["bench.csv", "bench.md"] + ([] if plot_note else ["bench.png"])
    if plot_note:
        print(plot_note)
    print(f"wrote {', '.join(f'{out}/{n}' for n in written)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
