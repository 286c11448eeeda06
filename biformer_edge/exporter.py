"""biformer-export: one entry point, one backend module per format, arguments validated per target.

Flow: validate -> build model -> export into a temp dir -> structural checks -> FP32 reference -> parity on every
backend that runs here -> manifest -> rename into place. Any failure or Ctrl-C leaves nothing behind.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import __version__, cpu
from .artifact import atomic_directory, check_output_dir
from .backends.base import ExportContext
from .contract import DS_APP_CONFIG, DS_PIPELINE, INPUT_NAME, MARGIN_PLOT, ONNX_FILE, REFERENCE, ROUTER_PRECISION
from .errors import UserError
from .fileio import check_not_input, save_npz, sha256_file
from .manifest import GENERATOR, SCHEMA_VERSION, Manifest, file_table, write_manifest
from .memory import check_fits
from .models import create_model, get_spec
from .models.routing import bra_blocks
from .parity.check import evaluate, reference_device, run_reference, write_reports
from .parity.inputs import parity_inputs
from .quant.settings import DEFAULT_MAX_ROUTING_REGRET, ROUTINGS, QuantSettings, check_available
from .targets import DEFAULT_MODEL, Target, backend_module, check_options, load_profile, resolve_target

LIBRARIES = ("torch", "numpy", "onnx", "onnxruntime", "onnxsim", "openvino", "coremltools", "tensorrt",
             "nvidia-modelopt")


@dataclass
class ExportRequest:
    target: str
    precision: str | None = None
    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    input_size: tuple[int, int] | None = None
    batch: int = 1
    calib: list[str] | None = None
    calib_samples: int | None = None
    routing: str = "qar"
    max_routing_regret: float = DEFAULT_MAX_ROUTING_REGRET   # QAR: keep layers float until calibration regret <= it
    reference: str = "auto"
    output: str | None = None
    force: bool = False
    parity: bool = True
    data: str | None = None
    options: dict | None = None       # target-specific: dla_core, workspace_mib, build, ios, weights_8bit


def validate(req: ExportRequest) -> tuple[Target, dict, dict]:
    """Check every argument against the target profile before any work starts. Returns (target, profile, options).
    """
    target = resolve_target(req.target)
    req.target = target.name
    profile = load_profile(req.target)
    t = profile["target"]
    req.precision = req.precision or t["default_precision"]
    if req.precision not in t["precisions"]:
        raise UserError(f"--{req.precision} is not available for --target {req.target}: choose "
                        + " or ".join(f"--{p}" for p in t["precisions"]))
    if req.precision == "int8":
        check_available(target.int8)
    if (req.calib or req.calib_samples) and req.precision != "int8":
        raise UserError("--calib/--calib-samples only apply to --int8 exports")
    if req.routing not in ROUTINGS:
        raise UserError(f"--routing must be qar or naive, not '{req.routing}'")
    if not (isinstance(req.max_routing_regret, (int, float)) and 0 < req.max_routing_regret <= 1):
        raise UserError(f"--max-routing-regret must be in (0, 1], not {req.max_routing_regret}")
    if req.routing == "naive" and req.precision != "int8":
        raise UserError("--routing naive only changes INT8 exports (FP32/FP16 always keep the router in FP32)")
    spec = get_spec(model_name(req.model))
    if type(req.batch) is not int or req.batch < 1:
        raise UserError(f"--batch must be a whole number >= 1, got {req.batch}")
    if req.input_size is not None:
        h, w, least = *req.input_size, spec.min_input_size
        if h < least or w < least:
            raise UserError(f"--input-size {h} {w} is below the minimum {least} {least}")
    options = check_options(target, req.precision, req.options)
    return target, profile, options


def qat_checkpoint(req: ExportRequest, spec, log=print, hashes: dict | None = None) -> tuple[dict, dict] | None:
    """The biformer-qat checkpoint this export uses, with where it came from: the one given to --checkpoint, or, for
    a default ``--int8`` export of a model that ships one, the shipped QAT state of its shipped weights. ``hashes``
    collects the sha256 of every file it hashed (path -> hex), so that no file is hashed twice."""
    hashes = {} if hashes is None else hashes
    from .models.registry import WEIGHTS_DIR
    from .quant.qat_checkpoint import read_qat_checkpoint, tagged_qat
    if not isinstance(req.model, str):
        return None
    name = model_name(req.model)
    loaded = tagged_qat(req.checkpoint)
    if loaded is not None:
        path = req.checkpoint
        if req.precision != "int8":
            raise UserError(f"--checkpoint {path} is a biformer-qat checkpoint: it exports only with --int8 (export "
                            f"FP32/FP16 from the original FP32 checkpoint)")
        if req.routing != "qar":
            raise UserError(f"--checkpoint {path} is a biformer-qat checkpoint, trained with the router island: "
                            f"--routing naive does not apply")
        if req.calib or req.calib_samples:
            raise UserError(f"--calib does not apply to a biformer-qat checkpoint: {path} carries the INT8 ranges "
                            f"it was trained with")
        qat = read_qat_checkpoint(path, loaded)
        if qat["model"] != name:
            try:
                get_spec(qat["model"])
            except UserError:
                raise UserError(f"--checkpoint {path} names an unknown model '{qat['model']}': it is damaged or from "
                                f"a newer biformer-edge; re-run biformer-qat") from None
            raise UserError(f"--checkpoint {path} was trained for {qat['model']}, not {name}: pass --model "
                            f"{qat['model']}")
        trained = tuple(qat.get("input_size") or ())
        wanted = tuple(req.input_size or spec.input_size)
        if trained and trained != wanted:
            log(f"note: {path} was trained at {trained[0]}x{trained[1]}, exporting at {wanted[0]}x{wanted[1]}: its "
                f"INT8 ranges carry over, but check the parity report (or pass --input-size {trained[0]} "
                f"{trained[1]})")
        _regret_note(req, f"{path}", "", log)
        hashes[str(path)] = sha256_file(path)
        return qat, {"checkpoint": str(path), "sha256": hashes[str(path)], "shipped": False}
    if (req.precision == "int8" and req.routing == "qar" and not req.checkpoint and not req.calib
            and not req.calib_samples and spec.shipped_qat and (WEIGHTS_DIR / spec.shipped_qat).is_file()):
        path = WEIGHTS_DIR / spec.shipped_qat
        qat = read_qat_checkpoint(path)
        weights = WEIGHTS_DIR / spec.shipped_weights
        hashes[str(weights)] = sha256_file(weights)
        if qat["model"] != name or qat["reference"].get("sha256") != hashes[str(weights)]:
            log(f"note: the shipped QAT state {path.name} is not of the shipped weights: calibrating instead")
            return None
        _regret_note(req, f"the shipped QAT state {path.name}",
                     " (pass --calib-samples N to calibrate with your regret target instead)", log)
        return qat, {"checkpoint": path.name, "sha256": sha256_file(path), "shipped": True}
    return None


def _regret_note(req: ExportRequest, what: str, hint: str, log) -> None:
    if req.max_routing_regret != DEFAULT_MAX_ROUTING_REGRET:
        log(f"note: --max-routing-regret {req.max_routing_regret} does not apply: {what} carries the float layers "
            f"it was trained with{hint}")


def quant_settings(req: ExportRequest, options: dict) -> QuantSettings | None:
    if req.precision != "int8":
        return None
    return QuantSettings(calib=list(req.calib or []), samples=req.calib_samples, routing=req.routing,
                         max_routing_regret=req.max_routing_regret, cpu=options.get("cpu"))


def model_name(model) -> str:
    return model if isinstance(model, str) else getattr(model, "name", None) or type(model).__name__


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "biformer-edge": __version__}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return versions


def default_output(req: ExportRequest) -> Path:
    return Path("artifacts") / f"{model_name(req.model)}-{req.target}-{req.precision}"


def next_steps(req: ExportRequest, out: Path, manifest: dict) -> list[str]:
    name = out.name
    if req.target == "jetson":
        steps = [f"scp -r {out} jetson:~/ && ssh jetson 'cd ~/{name} && ./build_engine.sh && biformer-parity .'",
                 f"on the Jetson (with this repo's apps/): apps/jetson_camera.sh ~/{name} camera.mp4"]
        if (manifest.get("options") or {}).get("deepstream"):
            steps.append(f"DeepStream on the Jetson: ~/{name}/{DS_PIPELINE} video.mp4 out.mp4 (or deepstream-app -c "
                         f"~/{name}/{DS_APP_CONFIG}; docs/deepstream.md)")
        return steps
    if req.target == "tensorrt":
        return [f"cd {out} && ./build_engine.sh && biformer-parity .   (on the GPU host)"]
    if req.target == "coreml":
        return [f"on a Mac: biformer-parity {out} --backend coreml",
                f"open {out}/model.mlpackage in Xcode to profile it on a device"]
    demo = f"python apps/video_segmentation.py --artifact {out} --input synthetic --output demo.mp4"
    lines = [f"biformer-parity {out}", f"biformer-bench --artifact {out}"]
    return lines + ([demo] if manifest["task"] == "segmentation" else [])


def export(req: ExportRequest, log=print) -> tuple[Path, dict]:
    """Run one export. Returns (artifact directory, manifest)."""
    target, profile, options = validate(req)
    out = Path(req.output) if req.output else default_output(req)
    check_output_dir(out, req.force)
    ref_device = reference_device(req.reference)
    name = model_name(req.model)
    spec = get_spec(name)
    hashes: dict[str, str] = {}
    qat = qat_checkpoint(req, spec, log, hashes)
    if isinstance(req.model, str):
        # of a QAT checkpoint: its original FP32 weights, as read already
        reference = qat[0]["reference_state_dict"] if qat is not None and req.checkpoint else None
        model = create_model(name, checkpoint=req.checkpoint, state=reference)
        ckpt = model.checkpoint_path
        weights = "checkpoint" if req.checkpoint else ("shipped" if ckpt else "random")
    else:  # a module from create_model, possibly fine-tuned in this process: its weights live only in memory
        model, ckpt, weights = req.model.eval(), None, "in-memory"
    if weights == "random":
        log(f"note: {name} has no weights here (random init): parity still compares runtimes, but pass "
            f"--checkpoint for numbers that mean something")
    h, w = req.input_size or spec.input_size
    input_shape = (req.batch, 3, h, w)
    check_fits(model, input_shape)
    module = backend_module(target)
    settings = quant_settings(req, options)
    started = time.perf_counter()

    check_not_input(out, [req.checkpoint, req.data, *(req.calib or [])], "--output")   # after the inputs' own checks
    with atomic_directory(out, req.force) as work:
        ctx = ExportContext(workdir=work, target=req.target, precision=req.precision, input_shape=input_shape,
                            opset=profile["target"].get("opset", 17), profile=profile, options=options, log=log,
                            routing=req.routing)
        log(f"exporting {name} {h}x{w} batch {req.batch} -> {req.target} {req.precision}")
        int8 = None
        if settings is not None:
            from .quant.prepare import prepare
            int8 = prepare(model, target.int8, settings, input_shape, qat, log)
            ctx.calibration = int8.calibration
        files = module.export(int8.model if int8 else model, ctx)   # the reference below stays the FP32 model
        if int8 is not None and int8.fake_quantized:
            from .quant.report import check_int8_graph
            files += check_int8_graph(work, module.int8_graph(work), req.routing, ctx.checks)
        speed_note = cpu.int8_speed_note(cpu.detect()) if settings is not None and settings.cpu else None
        if speed_note:
            log(speed_note)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION, generator=GENERATOR, model=name, task=spec.task,
            num_classes=getattr(model, "num_classes", None) if spec.task == "segmentation" else None,
            weights=weights, checkpoint_path=ckpt,
            checkpoint_sha256=(hashes.get(str(ckpt)) or sha256_file(ckpt)) if ckpt else None,
            target=req.target, backend=target.backend, precision=req.precision,
            routing=req.routing, router_precision=ROUTER_PRECISION[req.routing],
            quantization=int8.record if int8 else None, input_name=INPUT_NAME,
            input_shape=list(input_shape), opset=ctx.opset if ONNX_FILE in files else None,
            routing_blocks=len(bra_blocks(model)), graph_io=ctx.graph_io, options=options,
            versions=library_versions(),
            checks=ctx.checks, artifacts=files, parity={"verdict": "not-run"})
        if req.parity:
            samples = profile.get("parity", {}).get("samples", 4)
            inputs, source = parity_inputs(input_shape, req.data, samples)
            log(f"FP32 reference on {ref_device} over {inputs.shape[0] * inputs.shape[1]} inputs ({source})")
            ref = run_reference(model, inputs, ref_device)
            save_npz(work / REFERENCE, ref)
            manifest.reference_device = str(ref["device"])
            manifest.parity_data = source
            report = evaluate(work, manifest.to_dict(), profile, ref, plot=work / MARGIN_PLOT)
            write_reports(work, report)
            manifest.parity = {"verdict": report["verdict"],
                               "backends": {k: v["verdict"] for k, v in report["backends"].items()}}
        manifest.files = file_table(work)
        written = write_manifest(work, manifest)
    written["export_seconds"] = round(time.perf_counter() - started, 1)
    return out, written


def summary_lines(out: Path, manifest: dict, req: ExportRequest) -> list[str]:
    lines = [f"wrote {out}/ ({', '.join(manifest['artifacts'])}) in {manifest['export_seconds']} s"]
    parity = manifest["parity"]
    if parity["verdict"] != "not-run":
        lines.append(f"parity: {parity['verdict']} ({', '.join(f'{k} {v}' for k, v in parity['backends'].items())})"
                     f" -> {out}/parity.md")
        if parity["verdict"] == "fail":
            lines.append(f"see {out}/parity.md for the metrics that missed their thresholds")
    lines.append("next:")
    lines += [f"  {step}" for step in next_steps(req, out, manifest)]
    return lines
