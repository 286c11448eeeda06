"""The files of routing-consistent QAT: the finished QAT checkpoint that ``biformer-export --int8 --checkpoint``
consumes, and the resumable training state beside it.

QAT checkpoint (``torch.save`` of plain tensors, strings and numbers, so it loads with ``weights_only=True``)::

    format      "biformer-edge-qat", version 1
    model       registered model name (the size it was trained for)
    state_dict  the fine-tuned float weights (same keys as the FP32 model)
    quantizers  {quantizer name: amax tensor}: the INT8 ranges it was trained with (fixed during QAT)
    config      the QAR config it was trained with (:mod:`.config`: router island, layers kept float by the
                keep-float search before training); checkpoints of earlier versions list ``float_layers`` instead
    reference_state_dict  the user's original FP32 weights, as they were read: every export of this checkpoint
                measures drift against them, never against the fine-tuned weights
    reference   {"origin": "shipped" | "checkpoint", "path", "sha256"}: where those weights came from
    train       settings, steps, seconds, processes, held-out metrics before/after (for the manifest)

The training state (``OUTPUT.resume``) holds the same plus the optimizer and the step; it is written atomically at
every ``--save-every`` steps and when the run is interrupted, so an interrupted run resumes from its last good step.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from ..errors import UserError, short_reason
from ..fileio import check_not_input, write_file
from ..models.biformer import MIN_INPUT_SIZE
from ..models.checkpoint import QAT_FORMAT
from .config import config_problem

STATE_FORMAT = "biformer-edge-qat-state"
QAT_VERSION = 1


def state_path(output: Path) -> Path:
    return output.with_name(output.name + ".resume")


def save(path: Path, obj: dict) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_file(path, buffer.getvalue())


def _load(path: Path, what: str) -> dict | None:
    """The dict in ``path``, or None when the file is a PyTorch file but not a dict."""
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{what} {path} is not a regular file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # torch's unpickler raises anything on foreign or truncated bytes
        raise UserError(f"{what} {path} is not a readable PyTorch file ({short_reason(exc)}): re-create it") from None
    return obj if isinstance(obj, dict) else None


def tagged_qat(path: str | Path | None) -> dict | None:
    """The loaded file when it carries the QAT format tag (not yet validated), else None: one read that both tells a
    QAT checkpoint from an FP32 one and hands the content on to :func:`read_qat_checkpoint`."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None   # not ours; the normal checkpoint loader reports what is wrong with it
    return obj if isinstance(obj, dict) and obj.get("format") == QAT_FORMAT else None


def is_qat_checkpoint(path: str | Path | None) -> bool:
    return tagged_qat(path) is not None


def read_qat_checkpoint(path: str | Path, loaded: dict | None = None) -> dict:
    """A validated QAT checkpoint: every field the exporter reads is present and of the right type. ``loaded``: its
    content when :func:`tagged_qat` already read it."""
    path = Path(path)
    obj = loaded if loaded is not None else _load(path, "QAT checkpoint")
    if obj is None or obj.get("format") != QAT_FORMAT:
        raise UserError(f"{path} is not a biformer-qat checkpoint")
    if obj.get("version") != QAT_VERSION:
        raise UserError(f"QAT checkpoint {path} has version {obj.get('version')!r}; this biformer-edge reads version "
                        f"{QAT_VERSION}: re-run biformer-qat")
    damaged = f"QAT checkpoint {path} is damaged"
    for key in ("state_dict", "reference_state_dict", "quantizers"):
        _require_tensors(obj.get(key), f"{damaged}: '{key}'")
    _require_ranges(obj["quantizers"], damaged)
    if not all(v.is_floating_point() for v in obj["state_dict"].values()):
        raise UserError(f"{damaged}: its fine-tuned weights are not floating point; re-run biformer-qat")
    reference = obj.get("reference")
    if not isinstance(obj.get("model"), str) or not _qar_config(obj) or not isinstance(
            reference, dict) or not all(isinstance(reference.get(k), str) for k in ("origin", "path", "sha256")):
        raise UserError(f"{damaged} (model / config / reference); re-run biformer-qat")
    train = obj.get("train", {})
    if not isinstance(train, dict) or not all(train.get(k) is None or _metrics(train[k]) for k in ("before", "after")):
        raise UserError(f"{damaged} (train record); re-run biformer-qat")
    size = obj.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            type(v) is int and v >= MIN_INPUT_SIZE for v in size)):
        raise UserError(f"{damaged} (input_size {size!r}); re-run biformer-qat")
    return obj


def read_state(path: Path) -> dict:
    """A validated resume state (every field ``train`` reads, with its type); anything else is one line, exit 2."""
    obj = _load(path, "QAT resume state")
    bad = f"{path} is not a usable biformer-qat resume state"
    if obj is None or obj.get("format") != STATE_FORMAT or not isinstance(obj.get("fingerprint"), dict):
        raise UserError(f"{bad}: move it away or choose another --output")
    step, steps = obj.get("step"), obj["fingerprint"].get("steps")
    if type(step) is not int or type(steps) is not int or not 0 <= step <= steps:
        raise UserError(f"{bad} (step {step!r} of {steps!r}): move it away to start over")
    for key in ("optimizer", "scheduler", "before"):
        if not isinstance(obj.get(key), dict):
            raise UserError(f"{bad} ('{key}' missing): move it away to start over")
    _require_tensors(obj.get("student"), f"{bad}: 'student'")
    _require_tensors(obj.get("quantizers"), f"{bad}: 'quantizers'")
    _require_ranges(obj["quantizers"], bad)
    if not _qar_config(obj) or not _history(obj.get("history", [])) or not _number(
            obj.get("seconds", 0.0)) or not _metrics(obj["before"]):
        raise UserError(f"{bad} (config / history / seconds / before): move it away to start over")
    return obj


def check_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """After ``load_state_dict`` (which checks only the number of parameters): every saved moment has the shape of
    its parameter, so a damaged state is refused here rather than at the first step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if name != "step" and (not isinstance(value, torch.Tensor) or value.shape != param.shape):
                    raise UserError(f"{path} is damaged (optimizer '{name}' of shape "
                                    f"{tuple(getattr(value, 'shape', ()))} for a parameter of shape "
                                    f"{tuple(param.shape)}): move it away to start over")


METRICS = ("routing_decisive", "routing_regret", "routing_strict", "label_agreement")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metrics(value) -> bool:
    """Held-out figures as ``held_out_metrics`` writes them."""
    return isinstance(value, dict) and all(_number(value.get(k)) for k in METRICS)


def _history(value) -> bool:
    """[[step, output loss, routing loss, margin hinge], ...] (states of earlier versions: no margin hinge)"""
    return isinstance(value, list) and all(isinstance(row, list) and len(row) in (3, 4) and type(row[0]) is int and all(
        _number(v) for v in row[1:]) for row in value)


def _require_tensors(value, what: str) -> None:
    if not isinstance(value, dict) or not value or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise UserError(f"{what} holds no tensors; re-run biformer-qat")
    if not all(bool(torch.isfinite(v).all()) for v in value.values() if v.is_floating_point()):
        raise UserError(f"{what} holds NaN or infinite values; re-run biformer-qat (lower --lr)")


def _require_ranges(ranges: dict, what: str) -> None:
    if not all(v.is_floating_point() and v.numel() >= 1 and bool((v > 0).all()) for v in ranges.values()):
        raise UserError(f"{what}: an INT8 range is not a positive number; re-run biformer-qat")


def _qar_config(obj: dict) -> bool:
    """A usable QAR config: a valid ``config`` (:func:`.config.config_problem`), or, in files of earlier versions,
    a ``float_layers`` list of names and no ``config``."""
    if "config" in obj:
        return config_problem(obj["config"]) is None
    return _strings(obj.get("float_layers"))


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_same_run(saved: dict, current: dict, path: Path) -> None:
    """A resume continues only the run it was saved from: same model, FP32 weights, data and settings."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise UserError(f"{path} was saved by a run with other {key.replace('_', ' ')} ({saved.get(key)!r}, "
                            f"now {current.get(key)!r}): resume with the same settings, or choose another --output "
                            f"to start a new run")


def check_output(output: Path, force: bool, resume: bool, inputs=()) -> None:
    """Refuse anything that would overwrite or follow what the tool did not write, before any work starts.
    ``inputs``: the run's --checkpoint and --data, which the output must not be, nor lie in."""
    state = state_path(output)
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: folder {output.parent} does not exist; create it first")
    for path in (output, state):
        check_not_input(path, inputs, "--output" if path == output else "the resume state")
    for path in (output, state):
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link: biformer-qat never writes through links; choose another "
                            f"--output")
    if output.is_dir():
        raise UserError(f"--output {output} is a directory: pass a file path, e.g. {output / 'qat.pt'}")
    if output.exists():
        if not force:
            raise UserError(f"{output} exists: pass --force to replace an earlier biformer-qat checkpoint, or choose "
                            f"another --output")
        if not is_qat_checkpoint(output):
            raise UserError(f"{output} exists and is not a biformer-qat checkpoint: --force replaces only those; "
                            f"choose another --output")
    if state.exists() and not resume:
        raise UserError(f"{state} holds an unfinished run: pass --resume to continue it, or choose another --output")
    if resume and not state.exists():
        raise UserError(f"--resume: there is no unfinished run at {state}; run without --resume to start one")
