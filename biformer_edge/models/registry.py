"""Named model configs (timm style): ``@register_model`` on a factory, ``create_model(name)`` to build one."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model says about itself (timm's ``pretrained_cfg``); every built model carries it as
    ``model.spec``, so tools ask the model, not a table of their own."""

    name: str
    factory: Callable[..., nn.Module]
    input_size: tuple[int, int]          # the size exports use unless --input-size says otherwise
    task: str                            # "classification" | "segmentation"
    classifier: str                      # the layer that produces the logits (INT8 keeps it float: it decides labels)
    min_input_size: int                  # the smallest H and W the model takes
    # timm's group_matcher: module name -> (QAR search group, backbone stage it feeds), None after the last stage
    quant_group: Callable[[str], tuple[str, int] | None]
    shipped_weights: str | None = None   # file name under biformer_edge/weights/, loaded by default
    shipped_qat: str | None = None       # a biformer-qat checkpoint of those weights: what --int8 exports by default
    class_names: tuple[str, ...] = ()    # what each output class is, where the registry knows (labels files)


_REGISTRY: dict[str, ModelSpec] = {}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def register_model(name: str, input_size: tuple[int, int], task: str, classifier: str, min_input_size: int,
                   quant_group: Callable[[str], tuple[str, int] | None], shipped_weights: str | None = None,
                   shipped_qat: str | None = None, class_names: tuple[str, ...] = ()):
    def wrap(factory):
        _REGISTRY[name] = ModelSpec(name, factory, tuple(input_size), task, classifier, min_input_size, quant_group,
                                    shipped_weights, shipped_qat, tuple(class_names))
        return factory
    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown model '{name}': {hint}choose one of {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, checkpoint: str | Path | None = None, pretrained: bool = True,
                 state: dict[str, torch.Tensor] | None = None, **overrides) -> nn.Module:
    """Build a registered model in eval mode.

    ``checkpoint``: a file to load strictly (official, mmseg, or biformer-edge checkpoints); ``state``: its state
    dict when the caller already read it (no second read). Without a checkpoint, models that ship weights
    (``biformer_seg_demo``) load them unless ``pretrained=False``; the others start random.
    """
    from .checkpoint import load_checkpoint

    spec = get_spec(name)
    try:
        # Random init is seeded so that exports without weights are reproducible (same hashes, same reference).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = spec.factory(**overrides)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build {name}: {exc}") from None
    model.name, model.task, model.default_input_size, model.spec = name, spec.task, spec.input_size, spec
    model.checkpoint_path = None
    if checkpoint is None and pretrained and spec.shipped_weights:
        checkpoint = WEIGHTS_DIR / spec.shipped_weights
        if not checkpoint.is_file():
            raise UserError(f"{name}'s shipped weights {checkpoint} are missing: reinstall biformer-edge, or "
                            f"train them with 'python -m biformer_edge.train_demo'")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, state)
        model.checkpoint_path = str(checkpoint)
    return model.eval()
