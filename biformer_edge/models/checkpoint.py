"""Checkpoint loading: official BiFormer, mmseg fine-tunes and biformer-edge files, always strict.

Accepted containers: a bare state dict, or one wrapped in ``model`` / ``state_dict`` / ``module`` (the official
trainer and the mm loaders), with or without a ``module.`` prefix (DataParallel). Half-precision weights (the
shipped demo weights) are widened to the model's dtype. A biformer-qat checkpoint stands for the FP32 model it was
distilled from wherever FP32 weights are read (its ``reference_state_dict``): drift is always measured against the
user's original model, never against the fine-tuned one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError, short_reason

WRAPPER_KEYS = ("model", "state_dict", "module")
QAT_FORMAT = "biformer-edge-qat"   # the ``format`` tag of biformer-qat checkpoints (biformer_edge.quant.qat_checkpoint)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    return state_dict_from(read_checkpoint(path), path)


def read_checkpoint(path: str | Path):
    """What a checkpoint file holds (``torch.load`` with ``weights_only``), or a one-line UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory: pass the path of a .pth/.pt file")
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: pass the path of a .pth/.pt file")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a regular file (a device, FIFO or socket): pass the path of a "
                        f".pth/.pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # torch's unpickler raises anything from KeyError to RuntimeError on foreign bytes
        raise UserError(f"checkpoint {path} is not a readable PyTorch file ({short_reason(exc)}): re-download or "
                        f"re-save it") from None
    return obj


def state_dict_from(obj, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint (official, mmseg, wrapped; a QAT checkpoint's FP32 reference)."""
    if isinstance(obj, dict) and obj.get("format") == QAT_FORMAT:
        obj = obj.get("reference_state_dict")
    for _ in range(2):  # e.g. {"state_dict": {"module": {...}}}
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} holds no state dict (expected tensors, optionally under "
                        f"'model', 'state_dict' or 'module')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_task(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """An ImageNet checkpoint given to a segmentation model (or the reverse) gets a message naming the task, not a
    list of hundreds of missing keys."""
    is_seg_ckpt = any(k.startswith("backbone.") for k in state)
    task = getattr(model, "task", None)
    if task == "segmentation" and not is_seg_ckpt and any(k.startswith("stages.") for k in state):
        raise UserError(f"checkpoint {path} is a classification checkpoint (no 'backbone.' keys): a segmentation "
                        f"model needs an mmseg checkpoint with backbone./neck./decode_head. weights")
    if task == "classification" and is_seg_ckpt:
        raise UserError(f"checkpoint {path} is a segmentation checkpoint ('backbone.' keys): use a *_sfpn model")


def load_checkpoint(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load ``path`` strictly into ``model``; ``state``: its state dict when the caller already read it."""
    state = read_state_dict(path) if state is None else state
    check_task(model, state, Path(path))
    load_state(model, state, path)


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading strictly into ``model`` (missing, unexpected, reshaped keys), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]

    def few(keys):
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    parts = [f"{len(missing)} missing keys ({few(missing)})" if missing else "",
             f"{len(unexpected)} unexpected keys ({few(unexpected)})" if unexpected else "",
             f"{len(mismatched)} shape mismatches ({few(mismatched)})" if mismatched else ""]
    return "; ".join(p for p in parts if p) or None


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strict load of ``state`` (read from ``path``) with one readable message for any mismatch."""
    problem = state_mismatch(model, state)
    if problem:
        name = getattr(model, "name", type(model).__name__)
        raise UserError(f"checkpoint {path} does not match {name}: {problem}: is it from another model size or "
                        f"task? pick the matching --model")
    dtype_of = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtype_of[k]) for k, v in state.items()}, strict=True)
