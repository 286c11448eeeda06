"""What biformer-bench writes: one Row per configuration, the console table, bench.csv, bench.md and bench.png, and
the machine they were measured on."""
from __future__ import annotations

import csv
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..targets import RUNTIMES
from .plan import Config, runtime_order

CSV_FIELDS = ["model", "backend", "precision", "batch", "height", "width", "threads", "runs", "warmup", "status",
              "median_ms", "p90_ms", "mean_ms", "min_ms", "throughput_ips", "peak_rss_mib", "loaded_rss_mib",
              "activation_mib", "baseline_rss_mib", "artifact_mb", "inference_precision", "device", "note"]
HEADERS = ["model", "backend", "precision", "input", "median ms", "p90 ms", "img/s", "peak MiB", "loaded MiB",
           "act. MiB", "size MB", "note"]


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

    def record(self, result: dict, artifact_bytes: int | None) -> None:
        """Fill the row from a worker's result (``artifact_bytes``: the files timed; None: the worker's model)."""
        if "error" in result:
            self.status, self.note = "failed", result["error"]
            return
        self.latencies_ms = result["latencies_ms"]
        self.peak_rss_mib, self.loaded_rss_mib = result["peak_rss_mib"], result["loaded_rss_mib"]
        self.activation_mib, self.baseline_rss_mib = result["activation_mib"], result.get("baseline_rss_mib")
        size = artifact_bytes if artifact_bytes is not None else result.get("model_bytes")
        self.artifact_mb = size / 1e6 if size is not None else None
        self.inference_precision, self.device = result["inference_precision"], result["device"]
        if self.config.default_hint and self.inference_precision:  # label with what the plugin really chose
            self.config.label = f"{self.config.backend} ({self.inference_precision} default)"
        if not result["exact_activation"]:
            self.note = "activation: lower bound (no resettable RSS high-water mark here)"


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
        if r.status == "ok" and c.hint is not None and r.inference_precision:
            note = f"computes in {r.inference_precision}" + (f"; {note}" if note else "")
        out.append([c.model, c.label, c.precision, f"{n}x{h}x{w}", *cells, note])
    return out


def header_lines(meta: dict) -> list[str]:
    return [f"threads: {meta['threads']} for every backend (torch.set_num_threads, ORT intra_op_num_threads, "
            f"OV INFERENCE_NUM_THREADS); runs {meta['runs']} after {meta['warmup']} warm-up",
            f"machine: {meta['cpu']}, {meta['cores']} cores, INT8 class {meta.get('cpu_class', '?')}; load "
            f"average at start {meta['load_start']}, "
            f"at end {meta['load_end']}",
            f"versions: {meta['versions']}; weights: {meta['weights']}",
            *([f"Jetson: {meta['jetson_power']}"] if meta.get("jetson_power") else []),
            "each configuration runs in a fresh process: peak = its RSS high-water mark, VmHWM (interpreter + "
            "imports + session + runs; only the torch row's worker imports torch: see "
            "baseline_rss_mib in bench.csv); "
            "loaded = RSS once the session is created; act. = RSS high-water mark during the runs - loaded; "
            "size = artifact files (torch: parameters and buffers)"]


def int8_lines(rows: list[Row], meta: dict) -> list[str]:
    """INT8 against FP32 of the same model, backend and input, from this run's medians, and, where INT8 is not
    faster, one line saying so and what to use instead (without VNNI, x86 INT8 kernels gain little: cpu.py)."""
    by_key = {(r.config.model, r.config.backend, tuple(r.config.input_shape), r.config.precision): r.stats()
              for r in rows if r.status == "ok" and not r.config.default_hint}
    lines = []
    for (model, backend, shape, precision), stats in by_key.items():
        fp32 = by_key.get((model, backend, shape, "fp32"))
        if precision != "int8" or not fp32:
            continue
        ratio = fp32["median_ms"] / stats["median_ms"]
        lines.append(f"int8 vs fp32, {model} {backend}: {ratio:.2f}x")
        if ratio < 1.0:
            lines.append(f"note: this CPU ({meta.get('cpu_class', '?')}) gains nothing from INT8 in {backend} "
                         f"({model}: {ratio:.2f}x of FP32): deploy FP32 here"
                         + (", and INT8 where the CPU has VNNI or AMX" if "no VNNI" in meta.get("cpu_class", "")
                            else ""))
    return lines


def render_text(rows: list[Row], meta: dict) -> str:
    body = table_rows(rows)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(HEADERS)]
    widths[-1] = len(HEADERS[-1])  # the note column is not padded
    numeric = set(range(4, 11))

    def line(cells):
        return "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()
    summary = int8_lines(rows, meta)
    return "\n".join(header_lines(meta) + ["", line(HEADERS), line(["-" * w for w in widths])]
                     + [line(r) for r in body] + ([""] + summary if summary else [])) + "\n"


def render_markdown(rows: list[Row], meta: dict) -> str:
    lines = ["# biformer-bench", ""] + [f"- {h}" for h in header_lines(meta)] + [""]
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "|".join("---:" if 4 <= i <= 10 else "---" for i in range(len(HEADERS))) + "|")
    for r in table_rows(rows):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    summary = int8_lines(rows, meta)
    return "\n".join(lines + ([""] + [f"- {s}" for s in summary] if summary else [])) + "\n"


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
    palette = plt.get_cmap("tab10")  # one colour per runtime, paler for a plugin's default-hint row
    order = runtime_order()
    colors = [(*palette(order.index(r.config.backend) % 10)[:3], 0.45 if r.config.default_hint else 1.0)
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


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what Python's platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        name = None
    return name or platform.processor() or platform.machine()


def machine_meta(threads: int, runs: int, warmup: int, weights: str) -> dict:
    cpu = cpu_name()
    versions = [f"{rt.package} {rt.version()}" for rt in (RUNTIMES[r] for r in runtime_order()) if rt.version()]
    from ..cpu import class_phrase, detect
    return {"threads": threads, "runs": runs, "warmup": warmup, "cpu": cpu, "cores": os.cpu_count(),
            "cpu_class": class_phrase(detect()),
            "versions": ", ".join(versions), "weights": weights, "load_start": load_average(), "load_end": "?",
            "jetson_power": jetson_power()}


def jetson_power(devfreq: str | Path = "/sys/class/devfreq") -> str | None:
    """On a Jetson (``nvpmodel`` on the PATH): the power mode as ``nvpmodel -q`` states it (mode numbers differ by
    board, so its name is what a reader compares) and the GPU clock, pinned when its devfreq minimum equals its maximum
    (what ``sudo jetson_clocks`` sets); None elsewhere."""
    nvpmodel = shutil.which("nvpmodel")
    if nvpmodel is None:
        return None
    try:
        out = subprocess.run([nvpmodel, "-q"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    mode = " ".join(line.strip() for line in out.splitlines() if line.strip()) or "unknown (nvpmodel -q said nothing)"
    clocks = []
    for gpu in sorted(Path(devfreq).glob("*")):
        if not any(key in gpu.name for key in ("gpu", "ga10b", "gv11b", "gb10b")):
            continue
        try:
            cur, low, high = (int((gpu / f"{k}_freq").read_text()) // 1_000_000 for k in ("cur", "min", "max"))
        except (OSError, ValueError):
            continue
        clocks.append(f"GPU {cur} MHz, " + ("pinned (jetson_clocks)" if low == high else f"DVFS {low}-{high} MHz"))
    return f"power mode {mode}; " + ("; ".join(clocks) or "GPU clock unknown")


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"
