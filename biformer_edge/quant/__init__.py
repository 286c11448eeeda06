"""INT8: calibration (``calibration.py``), ModelOpt quantization with the router island (``int8.py``), and the
per-layer precision report of the exported graph (``report.py``).

``prepare_int8`` is what the exporter calls: it resolves the calibration recipe, renders or reads the samples with the
model's own preprocessing, reuses a cached calibration when the weights, data and settings are byte-identical, and
returns the fake-quantized model plus what the manifest records about it. ``prepare_qat`` does the same from a
biformer-qat checkpoint (``qat.py``): its fine-tuned weights, INT8 ranges and float layers, no calibration.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..artifact import save_npz
from ..backends.base import QuantSettings
from ..cpu import weight_bound
from ..errors import UserError
from .calibration import cache_dir, cache_key, calibration_inputs, resolve_recipe
from .int8 import FLOAT_LAYERS_KEY, QuantizedModel, int8_weight_share, quantize, toolkit_version
from .qar import MIN_INT8_SHARE, SEARCH_VERSION


def prepare_int8(model, settings: QuantSettings, input_shape: tuple[int, int, int, int],
                 log=print) -> tuple[QuantizedModel, dict]:
    from tqdm import tqdm

    recipe = resolve_recipe(settings.calib, settings.samples)
    inputs = calibration_inputs(recipe, input_shape)
    for note in recipe.notes:
        log(note)
    max_regret = settings.max_routing_regret if settings.routing == "qar" else None
    bound = weight_bound(settings.cpu)
    config = {"routing": settings.routing, "method": recipe.method, "input_shape": list(input_shape),
              "samples": int(np.prod(inputs.shape[:2])), "toolkit": toolkit_version(), "max_regret": max_regret,
              "search": SEARCH_VERSION, "schema": 3, "weight_bound": bound}
    key = cache_key(model.state_dict(), inputs, config)
    path = cache_dir() / f"{key}.npz"
    cached = _read_cache(path, log)
    source = "synthetic scenes" if recipe.source == "synthetic" else ", ".join(recipe.source)
    if cached is None:
        log(f"calibrating INT8 ({settings.routing} routing) on {config['samples']} samples of {source}")
        result = quantize(model, inputs, settings.routing, max_regret=max_regret, log=log, weight_bound=bound,
                          progress=lambda b: tqdm(b, desc="calibrate", unit="batch", leave=False, disable=None))
        _write_cache(path, result.cache_payload())
    else:
        try:
            result = quantize(model, inputs, settings.routing, cached=cached, max_regret=max_regret, log=log,
                              weight_bound=bound)
            log(f"INT8 calibration reused from the cache ({path.name[:12]}...)")
        except KeyError as exc:
            log(f"note: the cached INT8 calibration {path.name[:12]}... does not fit this model ({exc.args[0]}): "
                f"calibrating again")
            result = quantize(model, inputs, settings.routing, max_regret=max_regret, log=log, weight_bound=bound)
            _write_cache(path, result.cache_payload())
    share = int8_weight_share(result.model)
    info = {"toolkit": toolkit_version(), "routing": settings.routing, "router_precision":
            "fp32" if settings.routing == "qar" else "int8 inputs",
            "calibration": {**recipe.describe(), "samples": config["samples"], "source": recipe.source,
                            "cache_key": key, "cache": "hit" if result.from_cache else "miss"},
            "quantizers": result.quantizers, **weight_record(settings.cpu), **share}
    if result.search:
        info["routing_search"] = result.search
    return result, info


def qat_float_model(qat: dict):
    """The fine-tuned float model of a QAT checkpoint (what weights-only INT8 targets quantize)."""
    from ..models import create_model
    from ..models.checkpoint import load_state, state_mismatch
    model = create_model(qat["model"], pretrained=False)
    problem = state_mismatch(model, qat["state_dict"])
    if problem:
        raise UserError(f"the QAT checkpoint is damaged: its fine-tuned weights do not fit {qat['model']} ({problem}); "
                        f"re-run biformer-qat")
    load_state(model, qat["state_dict"], "(QAT fine-tuned weights)")
    return model


def qat_record(qat: dict, source: dict) -> dict:
    """What the manifest records of a QAT checkpoint: the file, the original FP32 weights it was distilled from, and
    its training record."""
    return {**source, "reference": qat["reference"], "train": qat.get("train") or {},
            "trained_with": qat.get("toolkit")}


def prepare_qat(qat: dict, source: dict, log=print, cpu: str | None = None) -> tuple[QuantizedModel, dict]:
    """The fake-quantized model of a QAT checkpoint, restored exactly as it was trained (full 8-bit weights; ``cpu``:
    the CPU class whose weight bound applies, :mod:`biformer_edge.cpu`), and its manifest record.
    ``source``: {"checkpoint": path, "sha256", "shipped": bool}."""
    cached = {name: amax.numpy() for name, amax in qat["quantizers"].items()}
    cached[FLOAT_LAYERS_KEY] = np.array(qat["float_layers"], dtype=str)
    finetuned = qat_float_model(qat)
    try:
        result = quantize(finetuned, np.zeros((1, 0, 3, 1, 1), np.float32), "qar", cached=cached, log=log,
                          weight_bound=weight_bound(cpu))
    except (KeyError, ValueError, RuntimeError):
        raise UserError(f"QAT checkpoint {source['checkpoint']} does not match this model's quantizers (damaged, or "
                        f"from another biformer-edge or ModelOpt version): re-run biformer-qat") from None
    share = int8_weight_share(result.model)
    if share["int8_weight_share"] < MIN_INT8_SHARE:
        raise UserError(f"QAT checkpoint {source['checkpoint']} keeps {len(qat['float_layers'])} layers float: only "
                        f"{share['int8_weight_share']:.2%} of the weights would be INT8, below the "
                        f"{MIN_INT8_SHARE:.0%} every INT8 export holds; re-run biformer-qat")
    train = qat.get("train") or {}
    decisive = (train.get("after") or {}).get("routing_decisive")
    log(f"INT8 from QAT checkpoint {source['checkpoint']} ({train.get('steps', '?')} steps; held-out decisive "
        f"{decisive:.4f})" if isinstance(decisive, float) else f"INT8 from QAT checkpoint {source['checkpoint']}")
    info = {"toolkit": toolkit_version(), "routing": "qar", "router_precision": "fp32",
            "calibration": {"source": "qat checkpoint", "cache": "none"},
            "qat": qat_record(qat, source),
            "quantizers": result.quantizers, **weight_record(cpu), **share}
    return result, info


def weight_record(cpu: str | None) -> dict:
    """What the manifest records of the INT8 path's CPU choice: the class the weights are made for (None: a GPU
    target) and their bound (|q| <= 64 where a CPU without VNNI must run them, 127 otherwise)."""
    bound = weight_bound(cpu)
    return {"cpu_class": cpu, "weight_bound": bound,
            "weight_range": f"int8 weights |q| <= {bound}" + (" (cannot saturate without VNNI)" if bound <= 64 else "")}


PAYLOAD_SHA256 = "__sha256__"   # a cache entry's hash of its own ranges: an edited or damaged entry is a miss


def _payload_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _read_cache(path, log=print) -> dict | None:
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


def _write_cache(path, ranges: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, {**ranges, PAYLOAD_SHA256: np.array(_payload_digest(ranges))})
    except (OSError, UserError):
        pass  # the cache only saves time; a read-only home must not fail an export


__all__ = ["prepare_int8", "prepare_qat", "qat_float_model", "qat_record"]
