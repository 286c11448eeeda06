from ..metrics import compare, flicker_rate, routing_agreement, to_labels
from .check import assert_parity, check_parity

__all__ = ["assert_parity", "check_parity", "compare", "flicker_rate", "routing_agreement", "to_labels"]
