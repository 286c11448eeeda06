"""INT8 for an export, in one call: :func:`prepare` turns the FP32 model into what the target's backend exports.

Targets quantize in one of two ways (``Target.int8`` in :mod:`biformer_edge.targets`):

- ``qdq``: a fake-quantized copy (ModelOpt, explicit Q/DQ, the router island and QAR's keep-float search,
  :mod:`.int8`), calibrated on the export's recipe or reused from the cache (:mod:`.cache`), or restored from a
  biformer-qat checkpoint. Its graph is then checked and reported by :func:`.report.check_int8_graph`.
- ``weights``: the float model (the QAT checkpoint's fine-tuned weights where one is given); the backend quantizes
  weights itself and, where its runtime calibrates activations (Core ML W8A8 on a Mac), asks for the calibration
  batches through :attr:`PreparedInt8.calibration`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..contract import ROUTER_PRECISION
from ..cpu import weight_bound
from ..errors import UserError
from .cache import CACHE_SCHEMA, cache_dir, cache_key, read_entry, write_entry
from .calibration import calibration_inputs, resolve_recipe
from .config import keep_float
from .int8 import QuantizedModel, int8_weight_share, model_config, quantize, toolkit_version
from .qar import MIN_INT8_SHARE, SEARCH_VERSION
from .settings import QuantSettings


@dataclass
class PreparedInt8:
    model: object                      # what the backend exports (fake-quantized for qdq, float for weights)
    record: dict | None                # the manifest's "quantization"
    fake_quantized: bool               # the exported graph carries quantizers: check and report it
    calibration: Callable[[], np.ndarray] | None = None   # weights-only targets whose runtime calibrates itself


def prepare(model, kind: str, settings: QuantSettings, input_shape: tuple[int, int, int, int],
            qat: tuple[dict, dict] | None = None, log=print) -> PreparedInt8:
    """The one INT8 step of an export. ``kind``: the target's INT8 form (``qdq`` or ``weights``); ``qat``: a
    biformer-qat checkpoint and where it came from, or None to calibrate."""
    if kind == "qdq":
        if qat is not None:
            quantized, record = prepare_qat(*qat, log, cpu=settings.cpu)
        else:
            quantized, record = prepare_int8(model, settings, input_shape, log)
        return PreparedInt8(quantized.model, record, fake_quantized=True)   # the reference stays the FP32 model
    if qat is not None:
        model, record = qat_float_model(qat[0]), {"qat": qat_record(*qat)}
    else:
        record = None
    return PreparedInt8(model, record, fake_quantized=False,
                        calibration=lambda: calibration_batches(settings, input_shape, log))


def calibration_batches(settings: QuantSettings, input_shape: tuple[int, int, int, int], log=print) -> np.ndarray:
    """The export's calibration samples (B, N, 3, H, W), for runtimes that calibrate activations themselves."""
    recipe = resolve_recipe(settings.calib, settings.samples)
    batches = calibration_inputs(recipe, tuple(input_shape))
    for line in recipe.notes:   # after reading the data: it adds notes of its own
        log(line)
    return batches


def prepare_int8(model, settings: QuantSettings, input_shape: tuple[int, int, int, int],
                 log=print) -> tuple[QuantizedModel, dict]:
    from tqdm import tqdm

    recipe = resolve_recipe(settings.calib, settings.samples)
    inputs = calibration_inputs(recipe, input_shape)
    for note in recipe.notes:
        log(note)
    max_regret = settings.max_routing_regret if settings.routing == "qar" else None
    bound = weight_bound(settings.cpu)
    start = model_config(model, settings.routing)
    samples = int(np.prod(inputs.shape[:2]))
    key_settings = {"config": start, "method": recipe.method, "input_shape": list(input_shape), "samples": samples,
                    "toolkit": toolkit_version(), "max_regret": max_regret, "search": SEARCH_VERSION,
                    "schema": CACHE_SCHEMA, "weight_bound": bound}
    key = cache_key(model.state_dict(), inputs, key_settings)
    path = cache_dir() / f"{key}.npz"
    cached = read_entry(path, log)
    source = "synthetic scenes" if recipe.source == "synthetic" else ", ".join(recipe.source)
    result = None
    if cached is not None:
        ranges, config = cached
        try:
            result = quantize(model, inputs, config, ranges, max_regret=max_regret, log=log, weight_bound=bound)
            log(f"INT8 calibration reused from the cache ({path.name[:12]}...)")
        except KeyError as exc:
            log(f"note: the cached INT8 calibration {path.name[:12]}... does not fit this model ({exc.args[0]}): "
                f"calibrating again")
    if result is None:
        log(f"calibrating INT8 ({settings.routing} routing) on {samples} samples of {source}")
        result = quantize(model, inputs, start, max_regret=max_regret, log=log, weight_bound=bound,
                          progress=lambda b: tqdm(b, desc="calibrate", unit="batch", leave=False, disable=None))
        write_entry(path, result.amax, result.config)
    share = int8_weight_share(result.model)
    info = {"toolkit": toolkit_version(), "routing": settings.routing, "router_precision":
            ROUTER_PRECISION[settings.routing],
            "calibration": {**recipe.describe(), "samples": samples, "source": recipe.source,
                            "cache_key": key, "cache": "hit" if result.from_cache else "miss"},
            "config": result.config, "quantizers": result.quantizers, **weight_record(settings.cpu), **share}
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
    ranges = {name: amax.numpy() for name, amax in qat["quantizers"].items()}
    finetuned = qat_float_model(qat)
    config = qat_config(qat, finetuned)
    try:
        result = quantize(finetuned, np.zeros((1, 0, 3, 1, 1), np.float32), config, ranges, log=log,
                          weight_bound=weight_bound(cpu))
    except (KeyError, ValueError, RuntimeError):
        raise UserError(f"QAT checkpoint {source['checkpoint']} does not match this model's quantizers (damaged, or "
                        f"from another biformer-edge or ModelOpt version): re-run biformer-qat") from None
    share = int8_weight_share(result.model)
    if share["int8_weight_share"] < MIN_INT8_SHARE:
        raise UserError(f"QAT checkpoint {source['checkpoint']} keeps {len(config['keep_float'])} layers float: only "
                        f"{share['int8_weight_share']:.2%} of the weights would be INT8, below the "
                        f"{MIN_INT8_SHARE:.0%} every INT8 export holds; re-run biformer-qat")
    train = qat.get("train") or {}
    decisive = (train.get("after") or {}).get("routing_decisive")
    log(f"INT8 from QAT checkpoint {source['checkpoint']} ({train.get('steps', '?')} steps; held-out decisive "
        f"{decisive:.4f})" if isinstance(decisive, float) else f"INT8 from QAT checkpoint {source['checkpoint']}")
    info = {"toolkit": toolkit_version(), "routing": "qar", "router_precision": ROUTER_PRECISION["qar"],
            "calibration": {"source": "qat checkpoint", "cache": "none"},
            "qat": qat_record(qat, source), "config": result.config,
            "quantizers": result.quantizers, **weight_record(cpu), **share}
    return result, info


def qat_config(qat: dict, model) -> dict:
    """A QAT checkpoint's QAR config; checkpoints written before configs were stored (the shipped one) list their
    float layers instead, which map onto the model's starting config (a checkpoint filter, timm style)."""
    if "config" in qat:
        return qat["config"]
    return keep_float(model_config(model, "qar"), list(qat["float_layers"]))


def weight_record(cpu: str | None) -> dict:
    """What the manifest records of the INT8 path's CPU choice: the class the weights are made for (None: a GPU
    target) and their bound (|q| <= 64 where a CPU without VNNI must run them, 127 otherwise)."""
    bound = weight_bound(cpu)
    return {"cpu_class": cpu, "weight_bound": bound,
            "weight_range": f"int8 weights |q| <= {bound}" + (" (cannot saturate without VNNI)" if bound <= 64 else "")}
