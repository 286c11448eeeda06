"""What the demo runs: the artifact (manifest read and every file verified), the runtime session that runs it
(``biformer_edge.targets``), and the FP32 PyTorch model it came from (``--compare``, ``--backend torch``, the sheet's
reference column). Only the FP32 model imports torch, and only when asked for."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..contract import MANIFEST, graph_probabilities
from ..errors import UserError
from ..manifest import read_manifest, require_unchanged
from ..targets import first_runnable, load_profile, open_session


@dataclass
class Deployed:
    session: object
    backend: str
    label: str                      # for the HUD / sheet, e.g. "openvino fp16 (f16 compute)"
    notes: list[str] = field(default_factory=list)


def load_artifact(path: str) -> tuple[Path, dict]:
    """The artifact directory and its manifest: a segmentation artifact whose files all match the manifest."""
    artifact = Path(path)
    manifest = read_manifest(artifact)
    if manifest["task"] != "segmentation":
        raise UserError(f"this demo needs a segmentation artifact; {artifact} was exported from a {manifest['task']} "
                        f"model ({manifest['model']}): export a segmentation model, e.g. biformer-export --target "
                        f"{manifest['target']} --model biformer_seg_demo")
    require_unchanged(artifact, manifest)
    return artifact, manifest


def artifact_inputs(artifact: Path, manifest: dict) -> list[Path]:
    """The artifact's files (manifest and model files): inputs of the run that no output may replace."""
    return [artifact / MANIFEST, *(artifact / rel for rel in manifest["files"])]


def fp32_model(manifest: dict, checkpoint: str | None, why: str):
    """The FP32 model the artifact came from (parity.check.reference_model), on CUDA when there is one."""
    weights = manifest.get("weights")
    if weights in ("random", "in-memory"):
        raise UserError(f"{why} needs the FP32 model, but {manifest['model']} was exported with {weights} weights: "
                        f"re-export it with --checkpoint")
    if importlib.util.find_spec("torch") is None:
        raise UserError(f"{why} needs the FP32 PyTorch model, and PyTorch is not installed here (pip install torch); "
                        f"the deployed runtimes run without it")
    if weights == "checkpoint" and not checkpoint:
        stored = manifest.get("checkpoint_path")
        if not stored or not Path(stored).is_file():
            raise UserError(f"{why} needs the checkpoint {manifest['model']} was exported from ({stored}), which "
                            f"is not here: pass --checkpoint PATH")
    if checkpoint and not Path(checkpoint).is_file():
        raise UserError(f"--checkpoint {checkpoint}: no such file")
    from ..parity.check import reference_device, reference_model

    model = reference_model(manifest, checkpoint)
    return model.float().to(reference_device("auto")).eval()


def torch_session(manifest: dict, checkpoint: str | None, why: str):
    """A Session running the FP32 model (imports torch), its class scores those the artifact's graph draws
    (:class:`DrawnScores`: a DeepStream graph's probabilities at the input size, so the deployed label maps it is
    compared with have its size)."""
    model = fp32_model(manifest, checkpoint, why)
    from ..backends.pytorch.session import TorchSession

    session = TorchSession(model)
    return DrawnScores(session, manifest["graph_io"]) if manifest.get("graph_io") else session


class DrawnScores:
    """A Session of an artifact whose graph has probabilities at its input size (manifest graph_io; DeepStream), for
    the demo: the class scores it returns as ``logits`` are those probabilities, what nvinfer draws, not the model's
    logits at its own resolution (parity compares those). A session without them (the FP32 model) computes them as
    the graph does (``contract.graph_probabilities``)."""

    def __init__(self, session, graph_io: dict):
        self.session, self.graph_io = session, graph_io

    def run(self, x):
        out = self.session.run(x)
        drawn = out.probabilities if out.probabilities is not None else graph_probabilities(out.logits, self.graph_io)
        return replace(out, logits=drawn)

    def __getattr__(self, name):
        return getattr(self.session, name)


def default_precision_hint(manifest: dict) -> str | None:
    """The OpenVINO hint the artifact's parity check used for its precision (export profile), if any."""
    try:
        hints = load_profile(manifest["target"]).get("parity", {}).get("hint", {})
    except UserError:
        return None
    return hints.get(manifest["precision"])


def open_deployed(artifact: Path, manifest: dict, backend: str | None, precision_hint: str | None,
                  checkpoint: str | None) -> Deployed:
    """The artifact's runtime session: ``backend`` (a runtime name of ``biformer_edge.targets``) or the first of
    AUTO_ORDER that can run it here, else the FP32 PyTorch model."""
    notes = []
    if backend is None:
        backend, reasons = first_runnable(artifact)
        if backend is None:
            backend = "torch"
            why = "; ".join(f"{k}: {v}" for k, v in reasons.items())
            notes.append(f"no runtime can run this artifact here ({why}): running the FP32 PyTorch model")
    if precision_hint and backend != "openvino":
        notes.append(f"--precision-hint {precision_hint} only applies to openvino: ignored for {backend}")
    if backend == "torch":
        session = torch_session(manifest, checkpoint, "--backend torch")
        return Deployed(session, "torch", f"torch fp32 ({session.device})", notes)
    options = {}
    if backend == "openvino":
        hint = precision_hint or default_precision_hint(manifest)
        if hint:
            options["precision_hint"] = hint
    session = open_session(backend, artifact, manifest, **options)
    if manifest.get("graph_io"):
        session = DrawnScores(session, manifest["graph_io"])
    label = f"{backend} {manifest['precision']}"
    ran = getattr(session, "inference_precision", None)
    if ran:
        label += f" ({ran} compute)"
        asked = getattr(session, "precision_hint", None)
        if asked and asked != ran:
            notes.append(f"openvino was asked to compute in {asked} but this CPU computes in {ran} (no native "
                         f"{asked} support): the numbers are those of {ran} inference")
    device = getattr(session, "device", "cpu")
    if device and device != "cpu":
        label += f" [{device}]"
    return Deployed(session, backend, label, notes)
