"""biformer-bench: latency, throughput and memory of each model x backend x precision, on this machine.

    plan.py       the command line, its checks, the configurations and why each skipped one is skipped
    artifacts.py  the models and the artifacts timed, written by the exporter (``biformer_edge.exporter.export``)
    worker.py     the measuring subprocess: one configuration per fresh interpreter, latencies and RSS
    report.py     the console table, bench.csv, bench.md, bench.png
    profile.py    ``--profile``: time by op class and GFLOP/s per runtime, profile.md/png/json
    profilers.py  ``--profile``'s measuring side: onnxruntime, OpenVINO and torch.profiler per-op times
    opclasses.py  the one table of op type -> op class

Artifacts come from the exporter (the code ``biformer-export`` runs, parity off), written into a temporary
directory; ``--artifact DIR`` benches an existing export instead. INT8 rows time the exporter's INT8 artifacts (the
Q/DQ ONNX for onnxruntime, the INT8 IR for OpenVINO), calibrated on the default synthetic recipe (``--calib-samples``
sets how many scenes); torch has no INT8 row. Every backend gets the same thread count
(``--threads``, default: every core this process may use). Entry point: ``biformer_edge.cli:bench_main`` ->
:func:`main`; ``python -m biformer_edge.bench`` runs the same behind the same error boundary.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UserError
from ..fileio import AtomicOutputs

__all__ = ["main"]


def main(argv=None) -> int:
    import tempfile

    from tqdm import tqdm

    from . import report
    from .artifacts import Artifacts, artifact_bytes
    from .plan import artifact_configs, default_runtimes, parse_args, plan
    from .worker import measure

    a = parse_args(argv)
    threads = a.threads
    out = Path(a.output)
    existing = next((p for p in (out, *out.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(f"cannot write the results under {out} ({existing} is not a writable folder): choose "
                        f"another --output")
    if a.profile:
        from .profile import run_profile
        return run_profile(a, out)

    if a.artifact:
        configs, manifest = artifact_configs(a)
        weights = f"from the artifact ({manifest.get('weights', '?')})"
    else:
        from ..models import get_spec
        shapes = {m: (a.batch, 3, *(tuple(a.input_size) if a.input_size else get_spec(m).input_size))
                  for m in a.models}
        configs = plan(a.models, a.backends or default_runtimes(), a.precisions, shapes)
        weights = "random (seed 0)" if a.random_weights else "shipped where the model has them, else random (seed 0)"
    meta = report.machine_meta(threads, a.runs, a.warmup, weights)

    rows: list[report.Row] = []
    with tempfile.TemporaryDirectory(prefix="biformer-bench-") as tmp:
        arts = Artifacts(Path(tmp), a.random_weights, a.calib_samples)
        if not a.artifact:
            for name in dict.fromkeys(c.model for c in configs if not c.skip):
                arts.model(name)  # missing weights etc. fail here (exit 2), before any measurement
        bar = tqdm(configs, desc="bench", unit="config", file=sys.stderr, dynamic_ncols=True, disable=None)
        for config in bar:
            bar.set_postfix_str(f"{config.model} {config.label} {config.precision}")
            row = report.Row(config)
            rows.append(row)
            if config.skip:
                row.status, row.note = "skipped", config.skip
                continue
            spec = {"backend": config.backend, "model": config.model, "precision": config.precision,
                    "hint": config.hint, "input_shape": list(config.input_shape), "runs": a.runs,
                    "warmup": a.warmup, "threads": threads}
            if not arts.add_worker_inputs(spec, row, a.artifact):
                continue
            row.record(measure(spec), artifact_bytes(Path(spec["artifact"]), config.backend)
                       if "artifact" in spec else None)
        bar.close()

    meta["load_end"] = report.load_average()
    print(report.render_text(rows, meta), end="")
    out.mkdir(parents=True, exist_ok=True)   # only now: a failed or interrupted run leaves no empty folder
    with AtomicOutputs([out / "bench.csv", out / "bench.md", out / "bench.png"]) as files:  # never through links
        report.write_csv(files.temp(out / "bench.csv"), rows, threads, a.runs, a.warmup)
        files.temp(out / "bench.md").write_text(report.render_markdown(rows, meta))
        plot_note = report.write_plot(files.temp(out / "bench.png"), rows, meta)
        if plot_note:
            files.temps.pop(out / "bench.png").unlink()
        files.commit()
    written = ["bench.csv", "bench.md"] + ([] if plot_note else ["bench.png"])
    if plot_note:
        print(plot_note)
    print(f"wrote {', '.join(f'{out}/{n}' for n in written)}")
    return 0
