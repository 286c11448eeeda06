"""Console entry points: biformer-export, biformer-parity, biformer-qat, biformer-bench, biformer-zoo.

Exit status (``biformer_edge.console``): 0 ok / parity passed, 1 artifact written but parity failed, 2 bad input
or environment (one line on stderr, no traceback, nothing left behind), 3 internal error, 130 Ctrl-C, 143 SIGTERM.
``--debug`` (or BIFORMER_EDGE_DEBUG=1) shows tracebacks of internal errors. Torch is imported only by the commands
that need it (export, zoo, and parity with --data).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .argtypes import positive_int
from .backends import PRECISIONS
from .console import OneLineParser, error_boundary, utf8_path
from .errors import UserError
from .fileio import check_not_input
from .quant.settings import DEFAULT_MAX_ROUTING_REGRET
from .targets import DEFAULT_MODEL, TARGETS, option_flags


def export_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="biformer-export", description="Export BiFormer to an edge runtime and measure its drift.")
    p.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    prec = p.add_mutually_exclusive_group()
    for name in ("int8", "fp16", "fp32"):
        prec.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                          help=f"{name.upper()} (default: the target profile's)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})")
    p.add_argument("--checkpoint", help="weights to load strictly (official, mmseg or biformer-edge)")
    p.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"), help="static input size")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--calib", nargs="+", help="INT8 calibration: image folders or videos")
    p.add_argument("--calib-samples", type=positive_int)
    p.add_argument("--routing", default="qar", choices=("qar", "naive"),
                   help="INT8: qar (router FP32, LayerNorm inputs float, routing-aware layer choice) or naive")
    p.add_argument("--max-routing-regret", type=float, default=DEFAULT_MAX_ROUTING_REGRET, metavar="R",
                   help="INT8 qar: keep the fewest layers float until the calibration routing regret is <= R "
                        f"(default {DEFAULT_MAX_ROUTING_REGRET})")
    p.add_argument("--reference", default="auto", choices=("auto", "cuda", "cpu"), help="where FP32 runs")
    p.add_argument("--data", help="images or a video for the parity check (default: synthetic scenes)")
    p.add_argument("--output", help="artifact directory (default artifacts/<model>-<target>-<precision>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing artifact directory")
    p.add_argument("--no-parity", dest="parity", action="store_false")
    g = p.add_argument_group("target options")
    for spec, takers in option_flags():   # from the backends' options dataclasses
        only = "".join(f" --{p}" for p in spec.precisions) if len(spec.precisions) < len(PRECISIONS) else ""
        help = f"{'/'.join(takers)}{only}: {spec.help}"
        if spec.type is None:
            g.add_argument(spec.flag, action="store_true", help=help)
        else:
            g.add_argument(spec.flag, type=spec.type, help=help)
    return p


def target_options(a: argparse.Namespace) -> dict:
    """The target flags as ExportRequest.options: a switch not given is None, like a value not given."""
    return {spec.name: getattr(a, spec.name) if spec.type else getattr(a, spec.name) or None
            for spec, _ in option_flags()}


@error_boundary
def export_main(argv=None):
    a = export_parser().parse_args(argv)
    for value, what in ((a.output, "--output"), (a.checkpoint, "--checkpoint"), (a.data, "--data"),
                        *((c, "--calib") for c in a.calib or [])):
        if value:
            utf8_path(value, what)
    from .exporter import ExportRequest, export, summary_lines  # torch: only once the arguments parsed
    req = ExportRequest(
        target=a.target, precision=a.precision, model=a.model, checkpoint=a.checkpoint,
        input_size=tuple(a.input_size) if a.input_size else None, batch=a.batch, calib=a.calib,
        calib_samples=a.calib_samples, routing=a.routing, max_routing_regret=a.max_routing_regret,
        reference=a.reference, output=a.output, force=a.force,
        parity=a.parity, data=a.data,
        options=target_options(a))
    out, manifest = export(req, log=lambda msg: print(msg, flush=True))
    print("\n".join(summary_lines(out, manifest, req)))
    return 1 if manifest["parity"]["verdict"] == "fail" else 0


def check_report_path(text: str, inputs: list) -> None:
    """--junit may create or replace a regular file, never a link, a device, a FIFO, an input of the run (the
    artifact, --data, --checkpoint) or anything inside the artifact."""
    if not text.strip():
        raise UserError("--junit needs a file name, e.g. --junit parity.xml")
    path = Path(text)
    folder = Path(os.path.abspath(path)).parent
    if not folder.is_dir():
        raise UserError(f"--junit {path}: folder {folder} does not exist; create it or choose another path")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"--junit {path} is a link, a directory or a device: choose a regular file path")
    check_not_input(path, inputs, "--junit")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--junit {path}: cannot write to {folder}")


@error_boundary
def parity_main(argv=None):
    from .parity.check import check_parity, write_junit
    p = OneLineParser(prog="biformer-parity", description="Re-check an exported artifact where it is deployed.")
    p.add_argument("artifact", help="artifact directory written by biformer-export")
    p.add_argument("--backend", action="append", help="backend(s) to run (default: the profile's, where available)")
    p.add_argument("--data", help="images folder, image or video to check on (default: the stored reference)")
    p.add_argument("--checkpoint", help="with --data: the checkpoint the artifact was exported from")
    p.add_argument("--samples", type=positive_int, help="with --data: how many images/frames")
    p.add_argument("--reference", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--ov-precision", choices=("auto", "f32", "f16", "bf16"),
                   help="what OpenVINO computes in (default: the profile's, auto for FP16: f16 where the CPU has "
                        "native f16, else f32); bf16 is checked against its own thresholds; reports are not written")
    p.add_argument("--junit", help="also write a JUnit XML report to this file")
    a = p.parse_args(argv)
    for value, what in ((a.artifact, "artifact"), (a.data, "--data"), (a.checkpoint, "--checkpoint"),
                        (a.junit, "--junit")):
        if value:
            utf8_path(value, what)
    if (a.samples or a.checkpoint) and not a.data:
        raise UserError("--samples and --checkpoint only apply with --data (a re-reference on your own images)")
    if a.junit is not None:  # refuse a bad report path before the check, not after it passed
        check_report_path(a.junit, [a.artifact, a.data, a.checkpoint])
    report = check_parity(a.artifact, backends=a.backend, data=a.data, checkpoint=a.checkpoint, samples=a.samples,
                          reference=a.reference, ov_precision=a.ov_precision)
    print(report.markdown())
    if a.junit is not None:
        write_junit(Path(a.junit), report.manifest, report)
    return 1 if report["verdict"] == "fail" else 0


def qat_parser() -> argparse.ArgumentParser:
    from .quant.qat import QATSettings
    d = QATSettings(model=DEFAULT_MODEL)
    p = OneLineParser(prog="biformer-qat", description="Routing-consistent QAT: a short INT8 fake-quant fine-tune "
                      "distilled from your FP32 model, label-free. Multi-process: torchrun --nproc_per_node N "
                      "$(which biformer-qat) ...")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})")
    p.add_argument("--checkpoint", help="your FP32 checkpoint, the teacher (default: the model's shipped weights)")
    p.add_argument("--data", nargs="+", help="unlabeled image folders, images or videos (default: synthetic scenes)")
    p.add_argument("--samples", type=positive_int, default=d.samples, help=f"training images (default {d.samples})")
    p.add_argument("--val-samples", type=positive_int, default=d.val_samples,
                   help=f"held-out images the report is measured on (default {d.val_samples})")
    p.add_argument("--calib-samples", type=positive_int, default=d.calib_samples,
                   help=f"images the INT8 ranges are calibrated on before training (default {d.calib_samples})")
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"global batch (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate, cosine decay (default {d.lr})")
    p.add_argument("--routing-weight", type=float, default=d.routing_weight,
                   help=f"weight of the teacher-relative routing term: keep the FP32 model's routes (default "
                        f"{d.routing_weight}; 0: output distillation only)")
    p.add_argument("--routing-margin", type=float, default=d.routing_margin, metavar="W",
                   help="weight of the teacher-free routing margin hinge on the student's own quantized affinities, "
                        "as train_demo --routing-margin: makes near-tie routes decisive (default 0: off; try 0.3)")
    p.add_argument("--margin", type=float, default=d.margin, metavar="M",
                   help=f"the relative k-th/(k+1)-th region gap that hinge asks for (default {d.margin})")
    p.add_argument("--max-routing-regret", type=float, default=d.max_routing_regret, metavar="R",
                   help=f"the PTQ-QAR start point's keep-float target (default {d.max_routing_regret})")
    p.add_argument("--seed", type=int, default=d.seed, help="data order and flips (default 0)")
    p.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"), help="training size")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--output", help="QAT checkpoint to write (default <model>-qat.pt)")
    p.add_argument("--save-every", type=positive_int, default=d.save_every,
                   help=f"save the resumable state every N steps (default {d.save_every})")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run saved beside --output")
    p.add_argument("--force", action="store_true", help="replace an earlier biformer-qat checkpoint at --output")
    return p


@error_boundary
def qat_main(argv=None):
    a = qat_parser().parse_args(argv)
    for value, what in ((a.output, "--output"), (a.checkpoint, "--checkpoint"), *((d, "--data") for d in a.data or [])):
        if value:
            utf8_path(value, what)
    from .quant.qat import QATSettings, train
    settings = QATSettings(
        model=a.model, checkpoint=a.checkpoint, data=list(a.data or []), samples=a.samples,
        val_samples=a.val_samples, calib_samples=a.calib_samples, steps=a.steps, batch=a.batch, lr=a.lr,
        routing_weight=a.routing_weight, routing_margin=a.routing_margin, margin=a.margin, seed=a.seed,
        input_size=tuple(a.input_size) if a.input_size else None,
        max_routing_regret=a.max_routing_regret, output=a.output, resume=a.resume, force=a.force,
        save_every=a.save_every, device=a.device)
    out, record = train(settings, log=lambda msg: print(msg, flush=True))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out} ({record['steps']} steps, {record['processes']} process(es), {record['seconds']} s)")
        print("next:")
        print(f"  biformer-export --target jetson --int8 --model {a.model} --checkpoint {out}")
    return 0


@error_boundary
def bench_main(argv=None):
    from .bench import main
    return main(argv)


@error_boundary
def zoo_main(argv=None):
    """Build every registered model, run one forward pass, print params, output shape and latency."""
    import time

    import torch

    from .models import create_model, get_spec, list_models
    p = OneLineParser(prog="biformer-zoo")
    p.add_argument("--models", nargs="+", default=list_models())
    a = p.parse_args(argv)
    print(f"{'model':22s} {'params M':>9s} {'input':>9s} {'output':>18s} {'ms':>8s}")
    for name in a.models:
        spec = get_spec(name)
        model = create_model(name, pretrained=False)
        x = torch.randn(1, 3, *spec.input_size)
        with torch.no_grad():
            model(x)
            t0 = time.perf_counter()
            y = model(x)
            ms = (time.perf_counter() - t0) * 1e3
        params = sum(t.numel() for t in model.parameters()) / 1e6
        print(f"{name:22s} {params:9.2f} {'x'.join(map(str, spec.input_size)):>9s} {str(tuple(y.shape)):>18s} "
              f"{ms:8.1f}")
    return 0
