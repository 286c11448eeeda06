"""QAR as data: the INT8 config of one model, in ModelOpt's format, that calibration starts from, QAR's keep-float
search extends, and the calibration cache, a biformer-qat checkpoint and the manifest store.

    {"base": "INT8_DEFAULT_CFG",            # ModelOpt's INT8 config: Conv/Linear, weights per channel, int8
     "algorithm": "max",
     "router": "fp32",                      # the router island; "int8" for --routing naive (its inputs quantized)
     "quant_cfg": [                         # applied after the base's entries, in order (ModelOpt wildcards)
         {"quantizer_name": "decode_head.conv_seg.*", "enable": False},   # the model's classifier
         {"quantizer_name": "*input_quantizer", "parent_class": "nn.LayerNorm", "enable": False}],   # QAR
     "keep_float": ["backbone.downsample_layers.0.0", ...]}   # what the search keeps float, module by module

:func:`modelopt_config` turns it into the dict ``mtq.quantize`` takes. Torch-free: ModelOpt is imported only there.
"""
from __future__ import annotations

import copy

BASE = "INT8_DEFAULT_CFG"
ALGORITHM = "max"   # max ranges: the others calibrate this model the same (measured)
ROUTERS = {"qar": "fp32", "naive": "int8"}
FLOAT_LAYERNORM_INPUTS = {"quantizer_name": "*input_quantizer", "parent_class": "nn.LayerNorm", "enable": False}


def qar_config(classifier: str, routing: str = "qar") -> dict:
    """The starting config of a model whose logits layer is ``classifier`` (its ``spec.classifier``). With the router
    island (``qar``) LayerNorm inputs stay float too: the residual stream they read is where the routers' q/k come
    from, and INT8 there flips routes (the first block's norm is the second most sensitive layer of the default
    model)."""
    entries = [{"quantizer_name": f"{classifier}.*", "enable": False}]
    if routing == "qar":
        entries.append(dict(FLOAT_LAYERNORM_INPUTS))
    return {"base": BASE, "algorithm": ALGORITHM, "router": ROUTERS[routing], "quant_cfg": entries, "keep_float": []}


def keep_float(config: dict, modules: list[str]) -> dict:
    """``config`` with ``modules`` (names in the model) kept float as well."""
    return {**config, "keep_float": [*config["keep_float"], *(m for m in modules if m not in config["keep_float"])]}


def modelopt_config(config: dict) -> dict:
    """The dict ``mtq.quantize`` takes: the base's entries, then the config's, then one disabling entry per module
    kept float."""
    import modelopt.torch.quantization as mtq
    base = copy.deepcopy(getattr(mtq, config["base"]))
    base["quant_cfg"] = [*base["quant_cfg"], *copy.deepcopy(config["quant_cfg"]),
                         *({"quantizer_name": f"{name}.*", "enable": False} for name in config["keep_float"])]
    base["algorithm"] = config["algorithm"]
    return base


def config_problem(config) -> str | None:
    """What makes a stored config unusable (a damaged cache entry or checkpoint), or None."""
    if not isinstance(config, dict) or set(config) != {"base", "algorithm", "router", "quant_cfg", "keep_float"}:
        return "not a QAR config"
    if config["base"] != BASE or config["algorithm"] != ALGORITHM or config["router"] not in ROUTERS.values():
        return f"base {config['base']!r}, algorithm {config['algorithm']!r}, router {config['router']!r}"
    if not (isinstance(config["quant_cfg"], list) and all(isinstance(e, dict) and isinstance(e.get("quantizer_name"),
                                                                                             str)
                                                          for e in config["quant_cfg"])):
        return "quant_cfg is not a list of quantizer entries"
    if not (isinstance(config["keep_float"], list) and all(isinstance(m, str) and m for m in config["keep_float"])):
        return "keep_float is not a list of module names"
    return None
