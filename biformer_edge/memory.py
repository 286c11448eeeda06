"""Refuse an export that cannot fit in memory before allocating anything.

BRA's attention matrix grows with the square of the tokens per region, so a large ``--input-size`` needs far more
memory than its input tensor suggests. The estimate runs the model once on PyTorch's ``meta`` device (shapes only,
no memory), records the largest tensor any op produces, and compares a conservative peak (that tensor three times:
its inputs, itself and the exporter's copy, plus the weights) with the memory this machine has available.
"""
from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch only inside the model estimate: the sample-count checks serve the torch-free device side
    import torch

GiB = 1 << 30


def _largest_tensor_mode():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel() * t.element_size())
            return out
    return LargestTensor()


def estimate_peak_bytes(model: torch.nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(estimated peak bytes of one FP32 forward pass, bytes of its largest single tensor)."""
    import torch
    meta = copy.deepcopy(model).to("meta").float()
    weights = sum(p.numel() * 4 for p in model.parameters())
    counter = _largest_tensor_mode()
    with torch.no_grad(), counter:
        meta(torch.empty(input_shape, device="meta"))
    return 3 * counter.largest + 2 * weights, counter.largest


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(model: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
    """UserError when one forward pass at ``input_shape`` would not fit in the memory available here."""
    numel = 1
    for d in input_shape:
        numel *= int(d)
    if numel * 4 > (1 << 40):  # over a TiB of input alone: no need to trace anything to refuse it
        raise UserError(f"input {'x'.join(map(str, input_shape))} alone needs {numel * 4 / GiB:,.0f} GiB: use a "
                        f"smaller --input-size or --batch")
    peak, largest = estimate_peak_bytes(model, input_shape)
    have = available_bytes()
    if have is not None and peak > have:
        raise UserError(f"input {'x'.join(map(str, input_shape))} needs about {peak / GiB:,.1f} GiB for one forward "
                        f"pass (largest tensor {largest / GiB:,.1f} GiB) and {have / GiB:,.1f} GiB is available: use a "
                        f"smaller --input-size or --batch")


# Preprocessed samples (float32, 3xHxW each) may take at most this share of the memory available: the rest is for
# the model, its activations, and in QAT its gradients and optimizer state.
SAMPLE_SHARE = 0.5


def max_samples(size: tuple[int, int], copies: float) -> int:
    """How many preprocessed samples of ``size`` (H, W) fit here when ``copies`` times their float32 bytes are held
    at once (the array itself plus whatever copy its user makes, e.g. a digest or the decoded uint8 images)."""
    have = available_bytes()
    budget = have * SAMPLE_SHARE if have is not None else 1 << 40
    return int(budget // (copies * 3 * size[0] * size[1] * 4))


def check_samples(count: int, size: tuple[int, int], copies: float, option: str) -> None:
    """UserError, before anything is rendered or decoded, when ``count`` samples of ``size`` cannot be held;
    ``option`` is the flag to lower, named in the message."""
    fit = max_samples(size, copies)
    if count > fit:
        need = count * copies * 3 * size[0] * size[1] * 4
        advice = f"use {option} {fit} or fewer" if fit >= 1 else "use a smaller --input-size"
        raise UserError(f"{count:,} samples at {size[0]}x{size[1]} need about {need / GiB:,.1f} GiB in memory, more "
                        f"than this machine can hold now: {advice}")
