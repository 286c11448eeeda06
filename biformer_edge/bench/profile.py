"""``biformer-bench --profile``: where the time goes, per runtime. For each model x precision (or ``--artifact``) and
each profiled runtime (torch, onnxruntime, OpenVINO; one that is not installed is skipped with the reason), its own
per-op profiler (``profilers.py``, in the bench's worker process) gives the time of every op type over the timed
runs; ``opclasses.py`` sums them into op classes (matmul/conv, attention, layout, gather, normalisation, elementwise,
other), and the model's FLOP count over the median latency of the same runs gives the achieved GFLOP/s.

Printed, and written to ``--output``: profile.md (the class shares and every op type per runtime), profile.png (one
stacked bar per runtime; skipped with a note without matplotlib) and profile.json (the raw per-op times, to compare
two formulations).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .opclasses import CLASSES, OTHER, op_class
from .plan import PROFILED_RUNTIMES, Config, artifact_configs, plan, runtime_order

PROFILE_FILES = ("profile.md", "profile.png", "profile.json")
TOP_OPS_PRINTED = 10

FLOPS_COUNTED = ("FLOP = 2 x the multiply-accumulates of the convolutions (depthwise included), linear layers and the "
                 "attention and routing matmuls of one forward pass of the FP32 model (torch.utils.flop_counter."
                 "FlopCounterMode: aten convolution, mm, addmm, bmm); normalisation, softmax, activations, resizing, "
                 "gather and TopK count nothing; INT8 rows count the same operations")


def profile_configs(a) -> list[Config]:
    """The configurations --profile measures: the bench's own plan (or ``--artifact``'s), the profiled runtimes only,
    each OpenVINO precision at its pinned hint."""
    if a.artifact:
        configs, manifest = artifact_configs(a)
        configs = [c for c in configs if c.backend in PROFILED_RUNTIMES and not c.default_hint]
        if not configs:
            raise UserError(f"{a.artifact} is a {manifest['target']} artifact without model.onnx or model.xml: "
                            f"--profile profiles onnxruntime and OpenVINO artifacts (or a model with --models)")
        return configs
    from ..models import get_spec
    shapes = {m: (a.batch, 3, *(tuple(a.input_size) if a.input_size else get_spec(m).input_size)) for m in a.models}
    runtimes = a.backends or [r for r in runtime_order() if r in PROFILED_RUNTIMES]
    return [c for c in plan(a.models, runtimes, a.precisions, shapes) if not c.default_hint]


def model_flops(model, shape: tuple) -> int:
    """FLOPs of one forward pass of ``model`` (FP32) on an input of ``shape``: see :data:`FLOPS_COUNTED`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    return int(counter.get_total_flops())


@dataclass
class ProfileRow:
    config: Config
    status: str = "ok"           # ok | skipped | failed
    note: str = ""
    flops: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    ops: dict = field(default_factory=dict)   # op type -> {"ms", "calls"} per run
    inference_precision: str = ""
    runtime_config: str = ""

    def record(self, result: dict) -> None:
        if "error" in result:
            self.status, self.note = "failed", result["error"]
            return
        runs = len(result["latencies_ms"])
        self.latencies_ms = result["latencies_ms"]
        self.ops = {op: {"ms": v["ms"] / runs, "calls": v["calls"] / runs} for op, v in result["ops"].items()}
        self.inference_precision, self.runtime_config = result["inference_precision"], result["config"]

    @property
    def median_ms(self) -> float:
        import statistics
        return statistics.median(self.latencies_ms)

    @property
    def profiled_ms(self) -> float:
        return sum(v["ms"] for v in self.ops.values())

    def class_ms(self) -> dict[str, float]:
        """ms per run of each op class, in CLASSES order (op types the table does not name count as other)."""
        out = dict.fromkeys(CLASSES, 0.0)
        for op, v in self.ops.items():
            out[op_class(op) or OTHER] += v["ms"]
        return out

    def shares(self) -> dict[str, float]:
        """Percent of the profiled op time per class (sums to 100)."""
        total = self.profiled_ms
        return {c: 100.0 * ms / total if total else 0.0 for c, ms in self.class_ms().items()}

    def unclassified(self) -> list[str]:
        return sorted(op for op, v in self.ops.items() if op_class(op) is None and v["ms"] > 0)

    def coverage(self) -> float:
        """The profiled op time over the mean wall time of the same runs."""
        wall = sum(self.latencies_ms) / len(self.latencies_ms)
        return self.profiled_ms / wall if wall else 0.0

    def gflops_per_s(self) -> float | None:
        return self.flops / self.median_ms / 1e6 if self.flops else None

    def top_ops(self, n: int | None = None) -> list[tuple[str, dict]]:
        ranked = sorted(((op, v) for op, v in self.ops.items() if v["ms"] > 0), key=lambda kv: -kv[1]["ms"])
        return ranked[:n] if n else ranked

    def to_json(self) -> dict:
        c = self.config
        out = {"model": c.model, "backend": c.backend, "precision": c.precision, "input_shape": list(c.input_shape),
               "status": self.status, "note": self.note, "flops": self.flops}
        if self.status == "ok":
            out.update({"median_ms": self.median_ms, "latencies_ms": self.latencies_ms,
                        "gflops_per_s": self.gflops_per_s(), "profiled_ms": self.profiled_ms,
                        "coverage": self.coverage(), "inference_precision": self.inference_precision,
                        "runtime_config": self.runtime_config, "class_ms": self.class_ms(), "shares": self.shares(),
                        "ops": {op: {**v, "class": op_class(op) or OTHER} for op, v in self.top_ops()}})
        return out


def groups(rows: list[ProfileRow]) -> dict[tuple, list[ProfileRow]]:
    """Rows by (model, input shape, precision), runtimes in the order measured."""
    out: dict[tuple, list[ProfileRow]] = {}
    for r in rows:
        out.setdefault((r.config.model, tuple(r.config.input_shape), r.config.precision), []).append(r)
    return out


def shape_text(shape) -> str:
    return "x".join(map(str, shape))


def header_lines(meta: dict) -> list[str]:
    return [f"machine: {meta['machine']}, {meta['cores']} cores; load average at start {meta['load_start']}, "
            f"at end {meta['load_end']}",
            f"threads: {meta['threads']} for every runtime; {meta['runs']} profiled runs after {meta['warmup']} "
            f"warm-up; latency and op times from the same runs, profiler on",
            f"versions: {meta['versions']}; weights: {meta['weights']}",
            "shares: each runtime's op time by op class (biformer_edge/bench/opclasses.py), out of the op time "
            "its profiler reports; profiled/wall: that op time over the wall time of the runs",
            FLOPS_COUNTED]


def class_table(rows: list[ProfileRow]) -> tuple[list[str], list[list[str]]]:
    """Header and body of one group's table: a column per measured runtime."""
    measured = [r for r in rows if r.status == "ok"]
    head = ["", *(r.config.backend for r in measured)]
    body = [["median ms", *(f"{r.median_ms:.2f}" for r in measured)],
            ["GFLOP/s", *(f"{r.gflops_per_s():.1f}" if r.flops else "-" for r in measured)]]
    body += [[cls, *(f"{r.shares()[cls]:.1f} %" for r in measured)] for cls in CLASSES]
    body += [["profiled/wall", *(f"{100 * r.coverage():.0f} %" for r in measured)],
             ["computes in", *(r.inference_precision or "-" for r in measured)]]
    return head, body


def group_title(key: tuple, rows: list[ProfileRow]) -> str:
    model, shape, precision = key
    flops = next((r.flops for r in rows if r.flops), None)
    return f"{model} {shape_text(shape)} {precision}" + (f": {flops / 1e9:.3f} GFLOP" if flops else "")


def notes(rows: list[ProfileRow]) -> list[str]:
    out = []
    for r in rows:
        if r.status != "ok":
            out.append(f"{r.config.backend}: {r.status}: {r.note}")
            continue
        out.append(f"{r.config.backend}: {r.runtime_config}")
        if r.unclassified():
            out.append(f"{r.config.backend}: not in the op-class table, counted as other: "
                       f"{', '.join(r.unclassified())}")
    return out


def render_text(rows: list[ProfileRow], meta: dict) -> str:
    lines = header_lines(meta)
    for key, members in groups(rows).items():
        lines += ["", group_title(key, members)]
        head, body = class_table(members)
        if len(head) > 1:
            widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
            for cells in [head, *body]:
                lines.append("  " + "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                                              for i, c in enumerate(cells)))
        lines += [f"  {n}" for n in notes(members)]
        for r in members:
            if r.status != "ok":
                continue
            lines.append(f"  {r.config.backend}, top op types (ms per run, share, calls per run):")
            total = r.profiled_ms
            for op, v in r.top_ops(TOP_OPS_PRINTED):
                lines.append(f"    {op:<34} {op_class(op) or OTHER + '?':<14} {v['ms']:9.3f} ms "
                             f"{100 * v['ms'] / total:5.1f} % {v['calls']:6.0f}")
    return "\n".join(lines) + "\n"


def render_markdown(rows: list[ProfileRow], meta: dict) -> str:
    lines = ["# biformer-bench --profile", ""] + [f"- {h}" for h in header_lines(meta)]
    for key, members in groups(rows).items():
        lines += ["", f"## {group_title(key, members)}", ""]
        head, body = class_table(members)
        if len(head) > 1:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|---|" + "---:|" * (len(head) - 1))
            lines += ["| " + " | ".join(cells) + " |" for cells in body]
            lines.append("")
        lines += [f"- {n}" for n in notes(members)]
        for r in members:
            if r.status != "ok":
                continue
            total = r.profiled_ms
            lines += ["", f"### {r.config.backend}: every op type", "",
                      "| op type | class | ms per run | share | calls per run |", "|---|---|---:|---:|---:|"]
            lines += [f"| {op} | {op_class(op) or OTHER + ' (unclassified)'} | {v['ms']:.3f} | "
                      f"{100 * v['ms'] / total:.1f} % | {v['calls']:.0f} |" for op, v in r.top_ops()]
    return "\n".join(lines) + "\n"


def write_plot(path: Path, rows: list[ProfileRow], meta: dict) -> str | None:
    """One 100 % stacked bar per measured runtime, a segment per op class. A note where it could not be drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "profile.png skipped: matplotlib is not installed (pip install 'biformer-edge[apps]')"
    measured = [r for r in rows if r.status == "ok"]
    if not measured:
        return "profile.png skipped: no runtime was profiled"
    palette = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, max(2.4, 0.8 + 0.55 * len(measured))))
    labels = []
    for i, r in enumerate(measured):
        c = r.config
        gflops = f", {r.gflops_per_s():.1f} GFLOP/s" if r.flops else ""
        labels.append(f"{c.model} {shape_text(c.input_shape[2:])} {c.precision}\n{c.backend}: {r.median_ms:.1f} ms"
                      f"{gflops}")
        left = 0.0
        for k, (cls, share) in enumerate(r.shares().items()):
            ax.barh(i, share, left=left, color=palette(k), label=cls if i == 0 else None)
            if share >= 6:
                ax.text(left + share / 2, i, f"{share:.0f}", ha="center", va="center", fontsize=7)
            left += share
    ax.set_yticks(range(len(measured)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the profiled op time, %")
    ax.set_title(f"biformer-bench --profile, {meta['threads']} threads, {meta['machine']}", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def run_profile(a, out: Path) -> int:
    import tempfile

    from tqdm import tqdm

    from ..cpu import describe, detect
    from ..fileio import AtomicOutputs
    from . import report
    from .artifacts import Artifacts
    from .worker import measure

    configs = profile_configs(a)
    weights = ("from the artifact" if a.artifact else
               "random (seed 0)" if a.random_weights else "shipped where the model has them, else random (seed 0)")
    meta = {**report.machine_meta(a.threads, a.runs, a.warmup, weights), "machine": describe(detect())}
    rows: list[ProfileRow] = []
    flops: dict[tuple, int] = {}
    with tempfile.TemporaryDirectory(prefix="biformer-profile-") as tmp:
        arts = Artifacts(Path(tmp), a.random_weights, a.calib_samples)
        for config in configs:   # the model (and its FLOPs) first: missing weights fail here (exit 2)
            key = (config.model, tuple(config.input_shape))
            if key not in flops:
                if a.artifact:
                    from ..models import create_model
                    model = create_model(config.model, pretrained=False).eval()   # FLOPs need no weights
                else:
                    model = arts.model(config.model)
                flops[key] = model_flops(model, config.input_shape)
        bar = tqdm(configs, desc="profile", unit="runtime", file=sys.stderr, dynamic_ncols=True, disable=None)
        for config in bar:
            bar.set_postfix_str(f"{config.model} {config.backend} {config.precision}")
            row = ProfileRow(config, flops=flops[(config.model, tuple(config.input_shape))])
            rows.append(row)
            if config.skip:
                row.status, row.note = "skipped", config.skip
                continue
            spec = {"profile": True, "backend": config.backend, "model": config.model,
                    "precision": config.precision, "hint": config.hint, "input_shape": list(config.input_shape),
                    "runs": a.runs, "warmup": a.warmup, "threads": a.threads}
            if not arts.add_worker_inputs(spec, row, a.artifact):
                continue
            row.record(measure(spec))
        bar.close()

    meta["load_end"] = report.load_average()
    print(render_text(rows, meta), end="")
    out.mkdir(parents=True, exist_ok=True)   # only now: a failed or interrupted run leaves no empty folder
    md, png, js = (out / name for name in PROFILE_FILES)
    with AtomicOutputs([md, png, js]) as files:
        files.temp(md).write_text(render_markdown(rows, meta))
        files.temp(js).write_text(json.dumps({"meta": meta, "flops_counted": FLOPS_COUNTED,
                                              "profiles": [r.to_json() for r in rows]}, indent=1))
        plot_note = write_plot(files.temp(png), rows, meta)
        if plot_note:
            files.temps.pop(png).unlink()
        files.commit()
    if plot_note:
        print(plot_note)
    print(f"wrote {', '.join(str(p) for p in (md, js) + (() if plot_note else (png,)))}")
    return 0
