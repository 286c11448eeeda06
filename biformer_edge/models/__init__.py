from . import biformer, segmentation  # noqa: F401  (registers the models)
from .bra import AttentionLePE, BiLevelRoutingAttention
from .checkpoint import load_checkpoint, read_state_dict
from .registry import create_model, get_spec, list_models

__all__ = ["AttentionLePE", "BiLevelRoutingAttention", "create_model", "get_spec", "list_models",
           "load_checkpoint", "read_state_dict"]
