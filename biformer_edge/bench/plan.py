"""What biformer-bench measures: its command line, the checks on it, and every model x runtime x precision
configuration, each with the reason it is skipped where it cannot run here.

Runtimes, export targets, their files and profiles come from ``biformer_edge.targets``; whether a target exports a
precision (and the one INT8 message) from the exporter's own ``validate``. Nothing here matches error text: a
``UserError`` is a configuration's skip reason, word for word.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..argtypes import positive_int
from ..console import OneLineParser
from ..errors import UserError
from ..targets import (
    DEFAULT_MODEL,
    RUNTIMES,
    TARGETS,
    load_profile,
    resolve_runtime,
    resolve_target,
    runtime_unavailable,
)

DEFAULT_MODELS = ["biformer_tiny"]
TORCH_PRECISIONS = ("fp32", "fp16")   # what the torch worker runs the model in (model.float() / model.half())


@dataclass
class Config:
    model: str
    backend: str                 # a runtime of targets.RUNTIMES
    precision: str               # fp32 | fp16 | int8
    label: str                   # backend as shown in the table, e.g. "openvino (bf16 default)"
    input_shape: tuple[int, int, int, int]
    hint: str | None = None      # the session's precision_hint (OpenVINO INFERENCE_PRECISION_HINT)
    default_hint: bool = False   # the row of the CPU plugin's own default hint (``hint`` is what it picks here)
    skip: str | None = None      # why this combination is not measured here


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runtime_order() -> list[str]:
    """Every runtime, the generic ones first (torch, onnxruntime, ...): AUTO_ORDER's registry read backwards."""
    return list(reversed(RUNTIMES))


def default_runtimes() -> list[str]:
    """What ``--backends`` defaults to: every runtime that runs on this machine."""
    return [r for r in runtime_order() if runtime_unavailable(r) is None]


def all_precisions() -> list[str]:
    """Every precision some target profile exports."""
    return sorted({p for t in TARGETS for p in load_profile(t)["target"]["precisions"]})


def export_target(runtime: str):
    """The export target whose artifact ``runtime`` runs: the one named like the runtime where several are made for
    it (tensorrt, not jetson: it can build the engine here). A ``targets.Target``; None for torch, which runs the
    model itself."""
    rt = RUNTIMES[runtime]
    made_for = [t for t in TARGETS.values() if t.device_runtime == rt.name]
    if rt.file is None or not made_for:
        return None
    try:
        named = resolve_target(rt.name)
    except UserError:
        named = None
    return named if named in made_for else made_for[0]


def runtime_files(runtime: str) -> tuple[str, ...]:
    """The artifact files ``runtime`` reads: its target's files where they include the runtime's file (model.xml +
    model.bin), else the runtime's file alone (model.engine, built from the target's ONNX)."""
    rt, target = RUNTIMES[runtime], export_target(runtime)
    if target is not None and rt.file in target.files:
        return target.files
    return (rt.file,) if rt.file else ()


def export_options(target) -> dict:
    """Build the runtime's file here when the target writes only what it is built from (an engine from ONNX)."""
    needs_build = RUNTIMES[target.device_runtime].file not in target.files
    return {"build": True} if needs_build and "build" in target.options else {}


def export_request(model, runtime: str, precision: str, shape: tuple, output: str | None = None,
                   calib_samples: int | None = None):
    """The exporter request that writes the artifact ``runtime`` runs (no parity: the bench times, it does not
    check). ``model``: a registered name (to validate) or the module to export. INT8 calibrates on the default
    recipe (synthetic scenes), ``calib_samples`` of them where given."""
    from ..exporter import ExportRequest
    target = export_target(runtime)
    return ExportRequest(target=target.name, precision=precision, model=model, input_size=tuple(shape[2:]),
                         batch=shape[0], output=output, parity=False, options=export_options(target),
                         calib_samples=calib_samples if precision == "int8" else None)


def precision_problem(model: str, runtime: str, precision: str, shape: tuple) -> str | None:
    """Why ``runtime`` cannot run ``model`` in ``precision`` (the exporter's own message, INT8 gate included), or
    None."""
    from ..exporter import validate
    if export_target(runtime) is None:  # torch: runs the FP32 model itself, no export and no quantization
        if precision not in TORCH_PRECISIONS:
            return f"{runtime} runs the model in {' or '.join(TORCH_PRECISIONS)}; {precision} is an export precision"
        return None
    try:
        validate(export_request(model, runtime, precision, shape))
    except UserError as exc:
        return str(exc)
    return None


def precision_hints(runtime: str) -> dict:
    """precision -> the hint its session computes in when parity checks it (the runtime's own lookup of its target
    profile); {} for runtimes that take none."""
    target, rt = export_target(runtime), RUNTIMES[runtime]
    if target is None or rt.hint_option is None:
        return {}
    profile = load_profile(target.name)
    return {p: hint for p in profile["target"]["precisions"] if (hint := rt.parity_hint(profile, p))}


def hint_name(value) -> str:
    """'f32' / 'bf16' / 'f16' from an OpenVINO type, its string or a precision name."""
    from ..backends.openvino.rules import PRECISION_HINTS
    text = value.to_string() if hasattr(value, "to_string") else str(value)
    return PRECISION_HINTS.get(text.lower(), text)


@lru_cache(maxsize=None)
def cpu_default_hint() -> str | None:
    """The OpenVINO CPU plugin's own INFERENCE_PRECISION_HINT here (bf16 on AVX512-BF16/AMX CPUs, f32 elsewhere)."""
    try:
        import openvino as ov
        return hint_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001 - no CPU plugin: the row says so
        return None


def default_hint_config(model: str, runtime: str, shape: tuple, skip: str | None) -> Config:
    """The extra FP32 row of a hinted runtime: what its CPU plugin computes in when nothing is pinned."""
    default = None if skip else cpu_default_hint()
    if skip is None and default is None:
        skip = "cannot read the CPU plugin's default INFERENCE_PRECISION_HINT"
    elif skip is None and default == precision_hints(runtime).get("fp32"):
        skip = f"the CPU plugin's default INFERENCE_PRECISION_HINT is {default} here: same as the pinned fp32 row"
    return Config(model, runtime, "fp32", f"{runtime} ({default or '?'} default)", shape, hint=default,
                  default_hint=True, skip=skip)


def plan(models: list[str], runtimes: list[str], precisions: list[str], shapes: dict[str, tuple]) -> list[Config]:
    """Every model x runtime x precision, with a skip reason where this machine or the exporter cannot run it."""
    missing = {r: runtime_unavailable(r) for r in runtimes}
    configs = []
    for model in models:
        shape = shapes[model]
        for runtime in runtimes:
            hints = precision_hints(runtime)
            for precision in precisions:
                skip = precision_problem(model, runtime, precision, shape) or missing[runtime]
                configs.append(Config(model, runtime, precision, runtime, shape, hint=hints.get(precision),
                                      skip=skip))
                if hints and precision == "fp32":
                    configs.append(default_hint_config(model, runtime, shape, skip))
    return configs


def artifact_configs(a) -> tuple[list[Config], dict]:
    """Configurations for ``--artifact DIR``: each runtime asked for, else every runtime whose file is in it plus the
    one its target is made for (a Jetson artifact's missing engine is worth a row that says so)."""
    from ..manifest import read_manifest
    from ..targets import unavailable_reason
    path = Path(a.artifact)
    manifest = read_manifest(path)
    shape = tuple(int(s) for s in manifest["input_shape"])
    if a.input_size and tuple(a.input_size) != shape[2:]:
        raise UserError(f"{path} has a static input of {shape[2]}x{shape[3]}: drop --input-size or re-export")
    if a.batch != 1 and a.batch != shape[0]:
        raise UserError(f"{path} has a static batch of {shape[0]}: drop --batch or re-export")
    model, precision = manifest["model"], manifest["precision"]
    made_for = resolve_target(manifest["target"]).device_runtime
    runtimes = a.backends or [r for r in runtime_order() if r == made_for
                              or (RUNTIMES[r].file and (path / RUNTIMES[r].file).exists())]
    configs = []
    for runtime in runtimes:
        if RUNTIMES[runtime].file is None:
            configs.append(Config(model, runtime, precision, runtime, shape,
                                  skip=f"{runtime} runs models, not exported artifacts"))
            continue
        reason = unavailable_reason(runtime, path)  # no file / no runtime here, word for word from targets
        hints = precision_hints(runtime)
        configs.append(Config(model, runtime, precision, runtime, shape, hint=hints.get(precision), skip=reason))
        if hints and precision == "fp32":
            configs.append(default_hint_config(model, runtime, shape, reason))
    return configs, manifest


# --------------------------------------------------------------------------------------------------- command line


def parser() -> OneLineParser:
    p = OneLineParser(prog="biformer-bench",
                      description="Latency / throughput / memory of BiFormer across backends and precisions.")
    p.add_argument("--models", nargs="+", help=f"registered model names (default {' '.join(DEFAULT_MODELS)}; "
                   f"with --profile {DEFAULT_MODEL})")
    p.add_argument("--backends", nargs="+",
                   help=f"any of {', '.join(runtime_order())} (default: every one that runs here)")
    p.add_argument("--precisions", nargs="+", default=["fp32"], help="fp32 fp16 int8 (default fp32)")
    p.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"), help="default: each model's own")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--runs", type=positive_int, default=30, help="timed inferences per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed inferences first (default 5)")
    p.add_argument("--threads", type=positive_int, help="threads for every backend (default: all cores)")
    p.add_argument("--output", default="bench_results",
                   help="where bench.csv/md/png (--profile: profile.md/png/json) go (default bench_results/)")
    p.add_argument("--artifact", help="bench this existing artifact directory with the backends that can run it")
    p.add_argument("--random-weights", action="store_true",
                   help="bench models whose shipped weights are missing with random weights")
    p.add_argument("--calib-samples", type=positive_int, metavar="N",
                   help="INT8 rows: calibrate on N synthetic scenes (default: the exporter's, 128)")
    p.add_argument("--profile", action="store_true",
                   help="where the time goes instead: each runtime's own per-op profiler (torch, onnxruntime, "
                        "openvino), time by op class and achieved GFLOP/s")
    return p


def parse_args(argv) -> object:
    a = parser().parse_args(argv)
    validate(a)
    return a


def validate(a) -> None:
    """Everything wrong with the arguments, before anything is built (UserError: one line, exit 2)."""
    if a.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {a.warmup}")
    known = all_precisions()
    a.precisions = [p for item in a.precisions for p in item.split(",") if p]   # "fp32,int8" or "fp32 int8"
    for prec in a.precisions:
        if prec not in known:
            raise UserError(f"unknown precision '{prec}': choose from {', '.join(known)}")
    a.precisions = list(dict.fromkeys(a.precisions))
    a.backends = list(dict.fromkeys(resolve_runtime(b).name for b in a.backends)) if a.backends else None
    a.models = list(dict.fromkeys(a.models)) if a.models else None
    if a.input_size is not None:
        from ..models.biformer import MIN_INPUT_SIZE
        if min(a.input_size) < MIN_INPUT_SIZE:
            raise UserError(f"--input-size {a.input_size[0]} {a.input_size[1]} is below the minimum "
                            f"{MIN_INPUT_SIZE} {MIN_INPUT_SIZE}")
    a.threads = a.threads or default_threads()
    if a.calib_samples is not None and "int8" not in a.precisions:
        raise UserError("--calib-samples only applies to --precisions int8")
    if a.profile:
        check_profile_args(a)
    if a.artifact is not None:
        if a.models:
            raise UserError("--artifact benches the artifact's own model: drop --models")
        if a.calib_samples is not None:
            raise UserError("--calib-samples applies to artifacts the bench exports, not to --artifact")
        return
    from ..models import get_spec
    a.models = a.models or ([DEFAULT_MODEL] if a.profile else list(DEFAULT_MODELS))
    for name in a.models:
        get_spec(name)


PROFILED_RUNTIMES = ("torch", "onnxruntime", "openvino")   # biformer-bench --profile: runtimes with a per-op profiler


def check_profile_args(a) -> None:
    """What --profile refuses up front (UserError: one line, exit 2)."""
    if a.backends:
        other = [b for b in a.backends if b not in PROFILED_RUNTIMES]
        if other:
            raise UserError(f"--profile reads the per-op profilers of {', '.join(PROFILED_RUNTIMES)}: drop --backends "
                            f"{' '.join(other)}")
        if a.artifact is not None and "torch" in a.backends:
            raise UserError("--profile --artifact profiles the artifact's files; torch profiles a model: use --models "
                            "for it")
