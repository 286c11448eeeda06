"""Reference runs and parity reports: compare every backend that can run an artifact here with FP32 PyTorch."""
from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from .. import cpu, metrics
from ..contract import (
    MARGIN_PLOT,
    PARITY_JSON,
    PARITY_MD,
    PROBABILITIES_NAME,
    REFERENCE,
    REPORT_FILES,
    ROUTING_PREFIX,
    resize_bilinear,
)
from ..errors import UserError
from ..fileio import sha256_file, write_file, write_json
from ..manifest import read_verified
from ..targets import RUNTIMES, load_profile, open_session, unavailable_reason
from .inputs import parity_inputs
from .plots import write_margin_plot


def reference_device(preference: str = "auto") -> str:
    import torch
    if preference not in ("auto", "cuda", "cpu"):
        raise UserError(f"--reference must be auto, cuda or cpu, not '{preference}'")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("--reference cuda: no CUDA GPU is visible here; use --reference cpu (or auto)")
    return "cuda" if preference != "cpu" and torch.cuda.is_available() else "cpu"


def run_reference(model, inputs: np.ndarray, device: str) -> dict[str, np.ndarray]:
    """FP32 PyTorch outputs for batches (B, N, 3, H, W): logits (B, N, ...), routing_i (B, N, R, k) and the region
    affinities affinity_i (B, N, R, R) that tell a real routing flip from a choice among exactly tied regions."""
    import torch

    from ..models.routing import run_torch
    model = model.float().to(device).eval()
    runs = [run_torch(model, torch.from_numpy(batch), affinities=True) for batch in inputs]
    arrays = {"inputs": inputs, "logits": np.stack([r.logits for r in runs])}
    if not np.isfinite(arrays["logits"]).all():
        raise UserError("the FP32 model produces NaN or infinite outputs on the parity inputs: check the checkpoint "
                        "(nothing to compare an export against)")
    for i in range(len(runs[0].routing)):
        arrays[f"routing_{i}"] = np.stack([r.routing[i] for r in runs])
        arrays[f"affinity_{i}"] = np.stack([r.affinity[i] for r in runs])
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        import platform
        name = platform.processor() or platform.machine()
    arrays["device"] = np.array(f"{device} ({name})")
    return arrays


def numbered(arrays: dict, prefix: str) -> list[np.ndarray]:
    """``prefix0, prefix1, ...`` of a reference, in block order (``routing_`` or ``affinity_``)."""
    keys = sorted((k for k in arrays if k.startswith(prefix) and k[len(prefix):].isdigit()),
                  key=lambda k: int(k[len(prefix):]))
    return [np.asarray(arrays[k]) for k in keys]


# A graph with probabilities at its input size (manifest graph_io; DeepStream): the pixel agreement of their class map
# (what nvinfer draws) with the FP32 logits resized alike, held to the pixel threshold.
PIXEL_PROBABILITIES = "pixel_probabilities"


def measure_backend(session, ref: dict, task: str, num_classes: int | None, routing_out: list | None = None,
                    graph_io: dict | None = None) -> dict:
    """Run every reference batch through ``session`` and compare logits, labels and routing (the deployed routing,
    flattened per block, is appended to ``routing_out`` when given). ``graph_io``: the artifact's (its manifest's);
    for a graph with probabilities at its input size also :data:`PIXEL_PROBABILITIES`."""
    logits, routing, drawn = [], [], []
    for batch in ref["inputs"]:
        out = session.run(batch)
        logits.append(out.logits)
        routing.append(out.routing)
        if graph_io:
            if out.probabilities is None:
                raise UserError(f"the graph has no '{PROBABILITIES_NAME}' output, which its manifest's graph_io "
                                f"promises: re-export the artifact (and rebuild its engine)")
            drawn.append(metrics.to_labels(out.probabilities))
    test_routing = [np.stack([r[i] for r in routing]) for i in range(len(routing[0]))] if routing[0] else []

    def flat(arrays):
        return [a.reshape(-1, *a.shape[2:]) for a in arrays]
    if routing_out is not None:
        routing_out.extend(flat(test_routing))
    ref_logits = ref["logits"].reshape(-1, *ref["logits"].shape[2:])
    result = metrics.compare(ref_logits, flat(numbered(ref, ROUTING_PREFIX)),
                             np.stack(logits).reshape(ref_logits.shape), flat(test_routing), task,
                             num_classes, ref_affinity=flat(numbered(ref, "affinity_")) or None)
    if graph_io:   # softmax keeps each pixel's argmax: the resized logits' class map is the probabilities'
        size = tuple(graph_io["output_size"])   # one sample at a time: C x H x W float64 each
        want = np.concatenate([metrics.to_labels(resize_bilinear(one[None], size)) for one in ref_logits])
        result[PIXEL_PROBABILITIES] = metrics.agreement(want, np.concatenate(drawn))
    return result


def evaluate(artifact_dir: Path, manifest: dict, profile: dict, ref: dict, backends: list[str] | None = None,
             thresholds: dict | None = None, require: bool = False, ov_precision: str | None = None,
             plot: Path | None = None) -> ParityReport:
    """Parity of each backend against ``ref``, measured for ``manifest``. ``require``: a named backend that cannot
    run is an error. ``ov_precision``: the OpenVINO precision hint (auto, f32, f16, bf16) instead of the profile's
    ``[parity] hint``. ``plot``: where to write the routing-margin plot of the first backend measured (a report,
    not hashed)."""
    precision = manifest["precision"]
    graph_io = manifest.get("graph_io")
    user_thresholds = thresholds or {}
    thresholds = {**profile_thresholds(profile, manifest), **user_thresholds}
    names = backends or profile.get("parity", {}).get("backends", [])
    machine = cpu.detect()
    report = {"reference": {"device": str(ref["device"]), "samples": int(np.prod(ref["inputs"].shape[:2])),
                            "data": manifest.get("parity_data", "synthetic")},
              "thresholds": thresholds, "backends": {}}
    if graph_io:
        size = "x".join(str(d) for d in graph_io["output_size"])
        report["compared_as"] = (f"the logits and routing as for every artifact; {PIXEL_PROBABILITIES}: the class "
                                 f"map of the {size} probabilities (the graph's first output, what nvinfer draws) "
                                 f"against the FP32 logits resized bilinearly to {size}, held to the pixel threshold")
    for name in names:
        reason = unavailable_reason(name, artifact_dir) if name in RUNTIMES else f"unknown backend '{name}'"
        if reason:
            if require:
                raise UserError(f"cannot run {name} here: {reason}")
            report["backends"][name] = {"verdict": "skipped", "reason": reason}
            continue
        rt = RUNTIMES[name]
        hint = rt.parity_hint(profile, precision, ov_precision)
        options = {rt.hint_option: hint} if hint else {}
        session = open_session(name, artifact_dir, manifest, **options)
        limits = thresholds
        if options:
            # What the runtime actually computes in: an f16 hint runs in bf16 on CPUs with BF16 but no FP16 units.
            computes = str(getattr(session, "inference_precision", hint))
            if computes == "bf16" and getattr(session, "requested_hint", hint) != "bf16":
                raise UserError(f"openvino computes the '{options['precision_hint']}' hint in bf16 on this CPU (no "
                                f"native f16): check bf16 against its own thresholds with --ov-precision bf16, or "
                                f"use --ov-precision auto (f32 compute here)")
            if computes == "bf16" and precision != "int8":  # asked for: [thresholds.bf16] (FP16/FP32 IRs in bf16)
                limits = {**profile.get("thresholds", {}).get("bf16", thresholds), **user_thresholds}
        deployed: list = []
        result = measure_backend(session, ref, manifest["task"], manifest.get("num_classes"), deployed, graph_io)
        affinity = [a.reshape(-1, *a.shape[2:]) for a in numbered(ref, "affinity_")]
        if plot is not None and deployed and affinity:
            skipped = write_margin_plot(plot, [r.reshape(-1, *r.shape[2:]) for r in numbered(ref, ROUTING_PREFIX)],
                                        deployed, affinity, f"{manifest['model']} {manifest['target']} "
                                        f"{precision}: routing flips against FP32 margins ({name})")
            report["margin_plot"] = skipped or f"{plot.name} ({name})"
            plot = None
        bad = metrics.failures(result, limits)
        drawn = result.get(PIXEL_PROBABILITIES)
        if drawn is not None and "pixel" in limits and not drawn >= limits["pixel"]:
            bad.append(f"{PIXEL_PROBABILITIES} {drawn:.6g} (needs >= {limits['pixel']}, the pixel threshold)")
        per_block = result.pop("routing_per_block", None)
        entry = {"metrics": {k: round(v, 9) for k, v in result.items()}, "failures": bad,
                 "verdict": "fail" if bad else "pass", "device": getattr(session, "device", "cpu")}
        if per_block is not None:
            entry["routing_per_block"] = [round(v, 6) for v in per_block]
        if getattr(session, "device", "cpu") == "cpu":
            entry["cpu"] = machine
            # OpenVINO's INT8 kernels saturate without VNNI; onnxruntime's measured unaffected (docs/cpu_classes.md)
            note = cpu.saturation_note(manifest, machine) if name == "openvino" else None
            if note:
                entry["cpu_note"] = note
        if hasattr(session, "executed"):
            entry["executed"] = session.executed()
        if options:
            entry["precision_hint"] = hint
            entry["inference_precision"] = computes
            if limits is not thresholds:
                entry["thresholds"] = limits
        report["backends"][name] = entry
    measured = [b for b in report["backends"].values() if b["verdict"] != "skipped"]
    checks_ok = all(c.get("ok", True) for c in manifest.get("checks", {}).values())
    if any(b["verdict"] == "fail" for b in measured) or not checks_ok:
        report["verdict"] = "fail"
    else:
        report["verdict"] = "pass" if measured else "not-measured"
    return ParityReport(report, manifest)


class ParityReport(dict):
    """A parity report (what ``parity.json`` holds) with the manifest it was measured against: ``manifest``, and
    ``markdown()``, what ``parity.md`` holds (rendered once), so no caller reads or renders either again."""

    def __init__(self, report: dict, manifest: dict):
        super().__init__(report)
        self.manifest = manifest
        self._markdown: str | None = None

    def markdown(self) -> str:
        if self._markdown is None:
            self._markdown = render_markdown(self.manifest, self)
        return self._markdown


def render_markdown(manifest: dict, report: dict) -> str:
    lines = [f"# Parity: {manifest['model']} -> {manifest['target']} ({manifest['precision']})", "",
             f"Reference: FP32 PyTorch on {report['reference']['device']}, {report['reference']['samples']} "
             f"samples ({report['reference']['data']}). Verdict: **{report['verdict']}**.", ""]
    if report.get("compared_as"):
        lines[-1:-1] = [f"Compared as: {report['compared_as']}."]
    names = sorted({k for b in report["backends"].values() for k in b.get("metrics", {})})
    lines += ["| backend | " + " | ".join(names) + " | verdict |", "|---" * (len(names) + 2) + "|"]
    for backend, entry in report["backends"].items():
        if entry["verdict"] == "skipped":
            lines.append(f"| {backend} | " + " | ".join("-" for _ in names) + f" | skipped: {entry['reason']} |")
            continue
        cells = [f"{entry['metrics'][n]:.6g}" if n in entry["metrics"] else "-" for n in names]
        label = backend + (f" (hint {entry['precision_hint']}, computes {entry['inference_precision']})"
                           if "precision_hint" in entry else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {entry['verdict']} |")
    def limits(th):
        return ", ".join(f"{k} {'>=' if metrics.HIGHER_IS_BETTER.get(k, True) else '<='} {v}"
                         for k, v in sorted(th.items()))
    lines += ["", "Thresholds: " + limits(report["thresholds"])]
    for backend, entry in report["backends"].items():
        if entry.get("thresholds") and entry["thresholds"] != report["thresholds"]:
            lines.append(f"Thresholds for {backend} (computes {entry.get('inference_precision')}): "
                         + limits(entry["thresholds"]))
    for backend, entry in report["backends"].items():
        if entry.get("cpu"):
            lines.append(f"CPU ({backend}): {cpu.describe(entry['cpu'])}")
        if entry.get("executed"):
            ex = entry["executed"]
            lines.append(f"Executed ({backend}): compute layers by precision "
                         + ", ".join(f"{p} {n}" for p, n in ex["by_precision"].items())
                         + ("; INT8 kernels " + ", ".join(f"{k} x{n}" for k, n in ex["int8_kernels"].items())
                            if ex["int8_kernels"] else ""))
        if entry.get("cpu_note"):
            lines.append(f"- note ({backend}): {entry['cpu_note']}")
    for backend, entry in report["backends"].items():
        if entry.get("routing_per_block"):
            lines.append(f"Routing per block ({backend}): " + ", ".join(f"{v:.4f}" for v in entry["routing_per_block"]))
    if report.get("margin_plot"):
        lines.append(f"Routing flips against their FP32 margins: {report['margin_plot']}")
    for name, check in manifest.get("checks", {}).items():
        lines.append(f"- check {name}: {'ok' if check.get('ok') else 'FAILED'} {check.get('summary', '')}".rstrip())
    for backend, entry in report["backends"].items():
        for failure in entry.get("failures", []):
            lines.append(f"- {backend}: {failure}")
    return "\n".join(lines) + "\n"


def write_reports(artifact_dir: Path, report: ParityReport) -> None:
    """parity.json and parity.md: reports of a check, not part of the hashed artifact (a re-check keeps it valid);
    written atomically, never through a link."""
    write_json(artifact_dir / PARITY_JSON, report)
    write_file(artifact_dir / PARITY_MD, report.markdown())


def write_junit(path: Path, manifest: dict, report: dict) -> None:
    cases = []
    for backend, entry in report["backends"].items():
        name = quoteattr(f"{manifest['model']}.{manifest['target']}.{manifest['precision']}.{backend}")
        if entry["verdict"] == "skipped":
            cases.append(f'  <testcase name={name}><skipped message={quoteattr(entry["reason"])}/></testcase>')
        elif entry["failures"]:
            msg = "; ".join(entry["failures"])
            cases.append(f'  <testcase name={name}><failure message={quoteattr(msg)}>{escape(msg)}</failure>'
                         f'</testcase>')
        else:
            cases.append(f"  <testcase name={name}/>")
    failures = sum(1 for e in report["backends"].values() if e.get("failures"))
    skipped = sum(1 for e in report["backends"].values() if e["verdict"] == "skipped")
    write_file(path, f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="biformer-parity" '
                    f'tests="{len(cases)}" failures="{failures}" skipped="{skipped}">\n' + "\n".join(cases)
                    + "\n</testsuite>\n")


def profile_thresholds(profile: dict, manifest: dict) -> dict:
    """The profile's thresholds for an artifact: ``[thresholds.<precision>]``, and for INT8 with the router island
    (``routing = "qar"``) also ``[thresholds.int8_qar]``, which adds decisive-route and regret limits that naive INT8
    is not held to (it flips decisive routes by design: that is what it measures)."""
    tables = profile.get("thresholds", {})
    limits = dict(tables.get(manifest["precision"], {}))
    if manifest["precision"] == "int8" and manifest.get("routing") == "qar":
        limits.update(tables.get("int8_qar", {}))
    return limits


def reference_model(manifest: dict, checkpoint: str | Path | None):
    """The FP32 model an artifact was exported from: shipped weights, or the checkpoint (hash-checked)."""
    from ..models import create_model

    weights = manifest.get("weights")
    if weights == "shipped":
        if checkpoint is not None:
            raise UserError(f"this artifact was exported from {manifest['model']}'s shipped weights: drop --checkpoint "
                            f"(the reference is recomputed from them)")
        return create_model(manifest["model"])
    if weights in ("random", "in-memory"):
        raise UserError(f"{manifest['model']} was exported with {weights} weights, so there is no FP32 model to "
                        f"recompute a reference from: re-export with --checkpoint, or drop --data")
    ckpt = checkpoint or manifest.get("checkpoint_path")
    if not ckpt or not Path(ckpt).is_file():
        raise UserError(f"--data needs the FP32 model: pass --checkpoint (the file {manifest['model']} was exported "
                        f"from, sha256 {manifest['checkpoint_sha256'][:12]}...)")
    if sha256_file(ckpt) != manifest["checkpoint_sha256"]:
        raise UserError(f"--checkpoint {ckpt} is not the checkpoint this artifact was exported from (sha256 "
                        f"differs): pass the original file")
    return create_model(manifest["model"], checkpoint=ckpt)


def load_reference(artifact_dir: Path, manifest: dict) -> dict:
    """The stored FP32 reference, checked against the manifest (shapes, routing blocks, finite numbers)."""
    path = artifact_dir / REFERENCE
    if not path.is_file():
        raise UserError(f"{path} is missing: re-export the artifact (it holds the FP32 reference)")
    try:
        with np.load(path, allow_pickle=False) as z:
            ref = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/numpy format errors of any kind
        raise UserError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:80]}): re-export the "
                        f"artifact") from None
    problem = reference_problem(ref, manifest)
    if problem:
        raise UserError(f"{path} does not match its manifest ({problem}): re-export the artifact")
    return ref


def reference_problem(ref: dict, manifest: dict) -> str | None:
    inputs, logits = ref.get("inputs"), ref.get("logits")
    if inputs is None or logits is None:
        return "no inputs or logits"
    if inputs.dtype != np.float32 or inputs.ndim != 5 or list(inputs.shape[1:]) != list(manifest["input_shape"]):
        return f"inputs {inputs.dtype} {inputs.shape} for an input of {manifest['input_shape']}"
    if inputs.shape[0] < 1 or logits.dtype.kind != "f" or logits.ndim < 3 or logits.shape[:2] != inputs.shape[:2]:
        return f"logits {logits.dtype} {logits.shape} for inputs {inputs.shape}"
    routing = numbered(ref, ROUTING_PREFIX)
    if len(routing) != manifest.get("routing_blocks", len(routing)):
        return f"{len(routing)} routing outputs for {manifest.get('routing_blocks')} routing blocks"
    for r in routing:
        if r.dtype.kind not in "iu" or r.ndim != 4 or r.shape[:2] != inputs.shape[:2]:
            return f"routing {r.dtype} {r.shape}"
    affinity = numbered(ref, "affinity_")
    if affinity and len(affinity) != len(routing):
        return f"{len(affinity)} affinity arrays for {len(routing)} routing outputs"
    for a, r in zip(affinity, routing):
        if a.dtype.kind != "f" or a.ndim != 4 or a.shape[:3] != r.shape[:3] or a.shape[3] != a.shape[2]:
            return f"affinity {a.dtype} {a.shape} for routing {r.shape}"
        if not np.isfinite(a).all():
            return "non-finite affinities"
    if "device" not in ref:
        return "no reference device"
    if not (np.isfinite(inputs).all() and np.isfinite(logits).all()):
        return "non-finite numbers"
    return None


def check_parity(artifact_dir: str | Path, backends: list[str] | None = None, data: str | Path | None = None,
                 checkpoint: str | Path | None = None, samples: int | None = None, reference: str = "auto",
                 thresholds: dict | None = None, write: bool = True, ov_precision: str | None = None) -> ParityReport:
    """Re-check an artifact where it is deployed. Without ``data`` it reuses the stored reference; with ``data`` the
    FP32 reference is recomputed from the model (the shipped weights, or ``checkpoint``). The report (a dict, as
    ``parity.json``) also carries the manifest it read and its markdown."""
    artifact_dir = Path(artifact_dir)
    if isinstance(backends, str):
        backends = [backends]
    manifest = read_verified(artifact_dir)
    profile = load_profile(manifest["target"])
    writes = write and data is None and not backends and not ov_precision
    if writes:
        for name in REPORT_FILES:
            if (artifact_dir / name).is_symlink():
                raise UserError(f"{artifact_dir / name} is a symbolic link: biformer-parity never writes through "
                                f"links; remove it and retry")
    if data is None:
        ref = load_reference(artifact_dir, manifest)
    else:
        model = reference_model(manifest, checkpoint)
        inputs, source = parity_inputs(tuple(manifest["input_shape"]), data,
                                       samples or profile.get("parity", {}).get("samples", 4))
        ref = run_reference(model, inputs, reference_device(reference))
        manifest = {**manifest, "parity_data": source}
    report = evaluate(artifact_dir, manifest, profile, ref, backends, thresholds, require=bool(backends),
                      plot=artifact_dir / MARGIN_PLOT if writes else None,
                      ov_precision=ov_precision)
    if writes:
        write_reports(artifact_dir, report)
    return report


def assert_parity(artifact: str | Path, data: str | Path | None = None, backends: list[str] | None = None,
                  **thresholds) -> dict:
    """For users' own pytest suites: fail with the metric table when any backend misses a threshold.

    ``assert_parity("artifacts/x", data="val_images/", pixel=0.999, routing=0.99)``
    """
    if isinstance(backends, str):
        backends = [backends]
    metrics.check_thresholds(thresholds)
    report = check_parity(artifact, backends=backends, data=data, thresholds=thresholds, write=False)
    if report["verdict"] == "fail":
        raise AssertionError("parity failed\n" + report.markdown())
    if report["verdict"] == "not-measured":
        reasons = "; ".join(f"{k}: {v.get('reason')}" for k, v in report["backends"].items())
        raise AssertionError(f"no backend could run {artifact} here ({reasons})")
    return report

