"""argparse types the command lines share (and the export options the backends declare for biformer-export)."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type for counts (--batch, --samples, --runs ...): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
