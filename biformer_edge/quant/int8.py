"""INT8 post-training quantization through NVIDIA ModelOpt (``modelopt.torch.quantization``), which runs on CPU.

What gets quantized (explicit Q/DQ, the only INT8 form TensorRT 11 keeps): the inputs of every Conv and Linear,
symmetric per output channel for weights and per tensor for activations, int8 with zero point 0. LayerNorm,
BatchNorm, Softmax, GELU, residual adds, the attention matmuls and the final classifier / segmentation layer stay in
float. Chosen over onnxruntime's quantizer, NNCF and torchao PT2E because ModelOpt quantizes the PyTorch model
itself (one quantized model for every target, exported by the same TorchScript exporter as FP32/FP16), writes the
Q/DQ TensorRT expects, and already leaves anything named ``router`` unquantized.

Weights keep the full 8-bit range (|q| <= 127) for GPU targets; CPU targets bound them to |q| <= 64 where the CPU
class they are made for has no VNNI (:func:`bound_weights`, :mod:`biformer_edge.cpu`).

The router island (QAR): the router (``attn.router``: region pooling, affinity, TopK) has no Conv/Linear, so with
``routing="qar"`` no quantizer sits on any path into TopK. ``routing="naive"`` quantizes the affinity's inputs (the
pooled q and k regions) like any matmul input, so the cost of quantizing the router is measured, not claimed.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import io
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..cpu import FULL_WEIGHT_BOUND
from ..errors import UserError
from ..models.bra import RegionRouter
from .config import ROUTERS, keep_float, modelopt_config, qar_config

ROUTER_QUANTIZERS = ("q_region_quantizer", "k_region_quantizer")


def modelopt():
    try:
        import modelopt.torch.quantization as mtq
    except ImportError:
        raise UserError("INT8 needs NVIDIA ModelOpt: pip install 'biformer-edge[int8]'") from None
    return mtq


def toolkit_version() -> str:
    try:
        return f"nvidia-modelopt {importlib.metadata.version('nvidia-modelopt')}"
    except importlib.metadata.PackageNotFoundError:
        return "nvidia-modelopt (unknown version)"


def model_config(model: nn.Module, routing: str = "qar") -> dict:
    """The starting QAR config of ``model`` (:func:`.config.qar_config`), from what its spec says (its classifier)."""
    spec = getattr(model, "spec", None)
    if spec is None or spec.classifier not in dict(model.named_modules()):
        raise UserError(f"{getattr(model, 'name', type(model).__name__)} is not a registered BiFormer model built by "
                        f"create_model: INT8 supports those")
    return qar_config(spec.classifier, routing)


def insert_router_quantizers(model: nn.Module) -> None:
    """--routing naive: put INT8 per-tensor quantizers where the router's affinity reads the pooled q and k. Done
    after ModelOpt converted the model (a model that already holds quantizers is not converted again)."""
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer
    for module in model.modules():
        if isinstance(module, RegionRouter):
            for name in ROUTER_QUANTIZERS:
                setattr(module, name, TensorQuantizer(QuantizerAttributeConfig(num_bits=8, axis=None)))


@dataclass
class QuantizedModel:
    model: nn.Module                       # fake-quantized copy; the FP32 model given is left unchanged
    amax: dict[str, np.ndarray]            # calibrated range of every enabled quantizer (what the cache stores)
    config: dict                           # the QAR config it was made with, the search's keep-float layers included
    quantizers: int = 0
    from_cache: bool = False
    search: dict = field(default_factory=dict)   # QAR's routing-aware keep-float search (qar routing only)


def quantizer_ranges(model: nn.Module) -> dict[str, np.ndarray]:
    from modelopt.torch.quantization.nn import TensorQuantizer
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and module.is_enabled and module.amax is not None:
            out[name] = module.amax.detach().cpu().float().numpy().copy()   # not a view: amax changes in place
    return out


def quantize(model: nn.Module, batches: np.ndarray, config: dict, ranges: dict | None = None, progress=None,
             max_regret: float | None = None, log=print, weight_bound: int = FULL_WEIGHT_BOUND) -> QuantizedModel:
    """A fake-quantized copy of ``model`` made by ``config`` (:mod:`.config`): calibrated on ``batches``
    (B, N, 3, H, W), or, with the ``ranges`` of an identical earlier calibration (the cache, a QAT checkpoint),
    restored from them without running a batch. With the router island and ``max_regret``, a fresh calibration runs
    the routing-aware keep-float search (:mod:`.qar`), which extends the config. ``weight_bound``: the largest
    |integer| an INT8 weight takes (:func:`bound_weights`; 64 for CPUs without VNNI), applied before the search so
    that it chooses for the weights that deploy. The ranges returned (and cached) are the calibrated 8-bit ones,
    whatever the bound."""
    from .qar import keep_float_search

    mtq = modelopt()
    qmodel = copy.deepcopy(model).float().eval()

    def forward_loop(m):
        with torch.no_grad():
            for batch in (progress(batches) if progress else batches):
                m(torch.from_numpy(np.ascontiguousarray(batch)))

    search: dict = {}
    island = config["router"] == ROUTERS["qar"]
    with contextlib.redirect_stdout(io.StringIO()):  # ModelOpt prints "Inserted N quantizers" itself
        qmodel = mtq.quantize(qmodel, modelopt_config(config), forward_loop if ranges is None else (lambda m: None))
        if not island:
            insert_router_quantizers(qmodel)
            if ranges is None:
                qmodel = mtq.calibrate(qmodel, config["algorithm"], forward_loop)
    qmodel.eval()
    if ranges is not None:
        modules = dict(qmodel.named_modules())
        if any(getattr(modules.get(n), "input_quantizer", None) is None for n in config["keep_float"]):
            raise KeyError("the config's float layers are not this model's")   # a cache miss for the caller
        restore_ranges(qmodel, ranges)
        if island and max_regret is not None:
            search = {"max_regret": max_regret, "float_layers": list(config["keep_float"]), "from_cache": True}
    calibrated = quantizer_ranges(qmodel)
    bound_weights(qmodel, weight_bound)
    if ranges is None and island and max_regret is not None:
        search = keep_float_search(qmodel, model, batches, max_regret, log=log)
        config = keep_float(config, search["float_layers"])
    kept = {name: calibrated[name] for name in quantizer_ranges(qmodel)}
    missing = [n for n, m in enabled_quantizers(qmodel) if n not in kept]
    if missing:
        raise UserError(f"calibration left {len(missing)} quantizers without a range (e.g. {missing[0]}): the "
                        f"calibration data never reached them; pass more or other --calib data")
    return QuantizedModel(qmodel, kept, config, quantizers=len(kept), from_cache=ranges is not None, search=search)


def bound_weights(qmodel: nn.Module, bound: int) -> None:
    """Bound every INT8 weight to |q| <= ``bound``: clip each weight to its quantizer's range (what the 8-bit
    quantizer already did to weights beyond it, e.g. QAT-trained weights that outgrew their fixed range), then widen
    that range by 127 / bound, so ModelOpt's round(w x 127 / amax) becomes round(w x bound / range). The exported
    Q/DQ graph is unchanged but for the weight scales. 64 is the bound for CPUs without VNNI
    (:mod:`biformer_edge.cpu`)."""
    if not 1 <= bound <= FULL_WEIGHT_BOUND:
        raise ValueError(f"weight bound {bound} outside 1..{FULL_WEIGHT_BOUND}")
    if bound == FULL_WEIGHT_BOUND:
        return
    modules = dict(qmodel.named_modules())
    for name, module in enabled_quantizers(qmodel):
        owner, kind = name.rsplit(".", 1)
        weight = getattr(modules[owner], "weight", None)
        if kind != "weight_quantizer" or module.amax is None or weight is None:
            continue
        limit = module.amax.to(weight.dtype)
        with torch.no_grad():
            weight.copy_(torch.maximum(torch.minimum(weight, limit), -limit))
        module.amax = module.amax * (FULL_WEIGHT_BOUND / bound)


def enabled_quantizers(model: nn.Module):
    from modelopt.torch.quantization.nn import TensorQuantizer
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled]


def restore_ranges(qmodel: nn.Module, ranges: dict[str, np.ndarray]) -> None:
    """Set every enabled quantizer's range from ``ranges`` (a cache entry or a QAT checkpoint). Each must be finite,
    positive and of the shape calibration gives: a scalar for activations (one that merely broadcasts would change
    the rank of what the layer reads), a scalar or exactly (out, 1, ..., 1) of the weight's rank for weights."""
    quantizers = dict(enabled_quantizers(qmodel))
    if set(quantizers) != set(ranges):
        raise KeyError("cached ranges do not match the quantizers")  # the caller treats it as a cache miss
    modules = dict(qmodel.named_modules())
    for name, module in quantizers.items():
        value = np.asarray(ranges[name])
        if value.dtype.kind != "f":
            raise KeyError(f"range of {name} is of type {value.dtype}")
        amax = torch.from_numpy(value.astype(np.float32))
        owner, kind = name.rsplit(".", 1)
        weight = getattr(modules[owner], "weight", None)
        shapes = {()} if kind != "weight_quantizer" or weight is None else {
            (), (weight.shape[0],) + (1,) * (weight.dim() - 1)}
        if tuple(amax.shape) not in shapes:
            raise KeyError(f"range of {name} has shape {tuple(amax.shape)}")   # a cache miss / damaged checkpoint
        if not bool(torch.isfinite(amax).all()) or not bool((amax > 0).all()):
            raise KeyError(f"range of {name} is not a finite positive number")
        module.amax = amax


def int8_weight_share(model: nn.Module) -> dict:
    """Weight parameters of Conv/Linear layers whose weight *and* input are INT8, over all weight parameters of
    Conv/Linear layers (what the issue calls INT8 on both inputs of their layer), plus the layers left in float."""
    quantized, total, float_layers = 0, 0, []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        n = module.weight.numel()
        total += n
        w_q, i_q = getattr(module, "weight_quantizer", None), getattr(module, "input_quantizer", None)
        if w_q is not None and i_q is not None and w_q.is_enabled and i_q.is_enabled:
            quantized += n
        else:
            float_layers.append(name)
    return {"int8_weight_params": quantized, "weight_params": total,
            "int8_weight_share": round(quantized / total, 6) if total else 0.0, "float_layers": float_layers}
