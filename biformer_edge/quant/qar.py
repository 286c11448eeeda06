"""Routing-aware PTQ (QAR step 2): keep the fewest, most routing-sensitive layers in float until the routing regret
on the calibration set meets a target.

Measured on the default model (128x128, held-out scenes; ``benchmarks/qar_ptq_search.py``): after max calibration
the routing regret is 0.0127 and decisive-route agreement 0.931, and almost all of it comes from the first stage:
the stem convolution's input quantizer (its INT8 step is coarser than one uint8 pixel level) and the first block's
LayerNorm and position-embedding inputs. Keeping those float (0.3 % of the weights) gives regret 0.0011, decisive
0.997, strict 0.933, pixel 0.9988. So the search is greedy and cheap: at each step, the candidate group (the stem,
a downsampling conv, or one part of a BRA block: pos / qkv / attention output / mlp) whose float-ness lowers the
calibration regret most is kept float, until the regret target holds, the INT8 weight share would fall below its
floor, or the step / time budget runs out. Only groups before the last router can change a route, so only they are
candidates.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..metrics import runs_agreement
from ..models.routing import run_torch
from .settings import DEFAULT_MAX_ROUTING_REGRET

SEARCH_VERSION = 3   # part of the calibration cache key: a changed search never reuses an old result
MIN_INT8_SHARE = 0.9   # no INT8 export keeps more float: the search stops here, a QAT checkpoint is refused below it
MAX_STEPS = 4
MIN_DECISIVE = 0.995  # stop only when decisive-route agreement also holds (regret alone stopped too early once)
# The search's budget in work, not wall time, so that an export does not depend on the machine's load (a wall-clock
# budget once ended the search before its first step on a busy machine). Trials x scored samples x input pixels: the
# default model's full search (4 steps over its 19 groups, 32 samples at 128x128) fits; a larger input gets fewer
# trials. The first step always runs whole.
MAX_SEARCH_WORK = 80 * 32 * 128 * 128
SEARCH_SAMPLES = 32  # calibration samples the search scores on (whole batches of the export's batch size)

def quantized_modules(qmodel: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in qmodel.named_modules()
            if getattr(m, "input_quantizer", None) is not None and m.input_quantizer.is_enabled}


def set_float(modules: list[nn.Module], on: bool) -> None:
    for module in modules:
        for q in (module.input_quantizer, getattr(module, "weight_quantizer", None)):
            if q is not None:
                q.disable() if on else q.enable()


def weights(modules: list[nn.Module]) -> int:
    return sum(m.weight.numel() for m in modules if isinstance(m, (nn.Conv2d, nn.Linear)))


def router_stages(model: nn.Module) -> int:
    """The last stage index that holds a BRA router (later stages cannot change any route)."""
    from ..models.bra import BiLevelRoutingAttention
    groups = [model.spec.quant_group(name) for name, m in model.named_modules()
              if isinstance(m, BiLevelRoutingAttention)]
    return max((g[1] for g in groups if g is not None), default=-1)


def keep_float_search(qmodel: nn.Module, fp32_model: nn.Module, batches: np.ndarray,
                      max_regret: float = DEFAULT_MAX_ROUTING_REGRET, log=print) -> dict:
    """Greedy: keep float the group that lowers calibration regret most, until ``max_regret`` holds. Changes
    ``qmodel`` in place; returns what it chose and the routing before and after, for the manifest."""
    started = time.perf_counter()
    batches = batches[:max(1, -(-SEARCH_SAMPLES // batches.shape[1]))]
    max_trials = max(1, MAX_SEARCH_WORK // int(np.prod(batches.shape[:2]) * np.prod(batches.shape[-2:])))
    trials_run = 0
    refs = [run_torch(fp32_model, b, affinities=True) for b in batches]
    last_stage = router_stages(fp32_model)
    modules = quantized_modules(qmodel)
    total_weights = weights([m for m in qmodel.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    int8_weights = sum(weights([m]) for m in modules.values() if getattr(m, "weight_quantizer", None) is not None
                       and m.weight_quantizer.is_enabled)
    groups: dict[str, list[str]] = {}
    for name in modules:
        found = fp32_model.spec.quant_group(name)   # the model's own group matcher (its spec)
        if found is not None and found[1] <= last_stage:
            groups.setdefault(found[0], []).append(name)

    def score() -> dict:
        with torch.no_grad():
            m = runs_agreement(refs, [run_torch(qmodel, b) for b in batches])
        return {k: round(float(m[k]), 6) for k in ("routing_regret", "routing_decisive", "routing_strict")}

    before = current = score()
    chosen: list[str] = []
    def done(m: dict) -> bool:
        return m["routing_regret"] <= max_regret and m["routing_decisive"] >= MIN_DECISIVE

    while not done(current) and len(chosen) < MAX_STEPS and groups:
        eligible = [g for g, names in groups.items()
                    if (int8_weights - weights([modules[n] for n in names])) / total_weights >= MIN_INT8_SHARE]
        if not eligible or (chosen and trials_run + len(eligible) > max_trials):
            break
        trials = {}
        for group in eligible:
            members = [modules[n] for n in groups[group]]
            set_float(members, True)
            trials[group] = score()
            set_float(members, False)
        trials_run += len(trials)
        best = min(trials, key=lambda g: trials[g]["routing_regret"])
        if trials[best]["routing_regret"] > current["routing_regret"] - 3e-4:
            break   # nothing left that helps routing measurably
        members = [modules[n] for n in groups.pop(best)]
        set_float(members, True)
        int8_weights -= weights(members)
        chosen.append(best)
        current = trials[best]
        log(f"QAR: keeping {best} float: calibration regret {current['routing_regret']:.4f}, decisive "
            f"{current['routing_decisive']:.4f}")
    return {"max_regret": max_regret, "float_groups": chosen,
            "float_layers": [n for n, m in modules.items() if not m.input_quantizer.is_enabled],
            "calibration_before": before, "calibration_after": current,
            "met": done(current), "trials": trials_run, "seconds": round(time.perf_counter() - started, 1)}
