"""The INT8 calibration cache: a calibration (its quantizer ranges and QAR's choices) is reused when the weights, the
calibration inputs and every setting are byte-identical (:func:`cache_key`). Entries live in
``$BIFORMER_EDGE_CACHE`` (default ``~/.cache/biformer-edge/calibration``), one ``<key>.npz`` each, and carry a hash of
their own payload: a damaged or edited entry is a miss, never an error, and a read-only home never fails an export.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fileio import save_npz


def cache_dir() -> Path:
    root = os.environ.get("BIFORMER_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "biformer-edge")
    return Path(root) / "calibration"


def cache_key(state: dict, inputs: np.ndarray, settings: dict) -> str:
    """Content hash of everything calibration depends on: the weights, the calibration inputs, the settings (routing
    mode, method, shape, toolkit version). A cached result is reused only when all of them are identical."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update((tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy().tobytes())
    digest.update(np.ascontiguousarray(inputs))   # the buffer itself: no copy of every sample
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


PAYLOAD_SHA256 = "__sha256__"   # a cache entry's hash of its own ranges: an edited or damaged entry is a miss


def _payload_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def read_entry(path: Path, log=print) -> dict | None:
    """A cache entry whose payload matches the hash stored in it, else None (a miss, noted when an entry was there).
    The ranges themselves are checked when they are restored (:func:`~.int8.restore_ranges`)."""
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            entry = {k: z[k] for k in z.files}
    except Exception:  # a corrupt or foreign cache file is a miss, never an error
        entry = None
    stored = entry.pop(PAYLOAD_SHA256, None) if entry is not None else None
    if entry is None or stored is None or stored.shape != () or str(stored) != _payload_digest(entry):
        log(f"note: the cached INT8 calibration {path.name[:12]}... is damaged or was edited: calibrating again")
        return None
    return entry


def write_entry(path: Path, ranges: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, {**ranges, PAYLOAD_SHA256: np.array(_payload_digest(ranges))})
    except (OSError, UserError):
        pass  # the cache only saves time; a read-only home must not fail an export
