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
from .config import config_problem


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


CACHE_SCHEMA = 4                # part of the key: entries of another layout are never read
CONFIG_KEY = "__config__"       # the entry's QAR config, as JSON (quantizer names never start with "__")
PAYLOAD_SHA256 = "__sha256__"   # a cache entry's hash of its own ranges: an edited or damaged entry is a miss


def _payload_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def read_entry(path: Path, log=print) -> tuple[dict[str, np.ndarray], dict] | None:
    """A cache entry's (ranges, QAR config) when its payload matches the hash stored in it and the config is one,
    else None (a miss, noted when an entry was there). The ranges themselves are checked when they are restored
    (:func:`~.int8.restore_ranges`)."""
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            entry = {k: z[k] for k in z.files}
    except Exception:  # a corrupt or foreign cache file is a miss, never an error
        entry = None
    stored = entry.pop(PAYLOAD_SHA256, None) if entry is not None else None
    config = None
    if entry is not None and stored is not None and stored.shape == () and str(stored) == _payload_digest(entry):
        config = _config(entry.pop(CONFIG_KEY, None))
    if config is None:
        log(f"note: the cached INT8 calibration {path.name[:12]}... is damaged or was edited: calibrating again")
        return None
    return entry, config


def _config(stored: np.ndarray | None) -> dict | None:
    try:
        config = json.loads(str(stored)) if stored is not None and stored.shape == () else None
    except ValueError:
        return None
    return None if config_problem(config) else config


def write_entry(path: Path, ranges: dict[str, np.ndarray], config: dict) -> None:
    """Store a calibration: its 8-bit ranges and the QAR config they belong to (keep-float layers included)."""
    payload = {**ranges, CONFIG_KEY: np.array(json.dumps(config, sort_keys=True))}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, {**payload, PAYLOAD_SHA256: np.array(_payload_digest(payload))})
    except (OSError, UserError):
        pass  # the cache only saves time; a read-only home must not fail an export
