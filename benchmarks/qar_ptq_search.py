"""What post-training quantization alone can do for routing (PTQ-QAR): activation-range search and a greedy
keep-float search, scored by routing regret / decisive flips against FP32.

    python benchmarks/qar_ptq_search.py [--calib-samples 64] [--score-samples 64] [--held-out 64] [--steps 10]
        [--target-regret 0.002] [--min-share 0.90] [--granularity group|layer] [--no-coordinate] [--slow-hist]
        [--greedy-from shipped max best-global best]

For biformer_seg_demo (shipped weights) at 128x128, on the fake-quantized PyTorch model that
``biformer_edge.quant.int8.quantize`` returns (the exported Q/DQ graph matches it to ~1e-7, so no export is run):

1. FP32 references (logits, top-k routes, region affinities) on the calibration set (the default recipe,
   ``--calib-samples`` scenes; the searches score on the first ``--score-samples``) and on held-out scenes (the
   "held_out" scene set of biformer_edge/data/seeds.py; never used for a choice).
2. Baseline: ``quantize(model, calib, model_config(model, "qar"))``: max ranges; every Conv/Linear input and weight
   INT8 but the model's classifier (``spec.classifier``); LayerNorm inputs float (QAR's config, quant/config.py).
3. Range search over ALL enabled input quantizers (weights stay per-channel max unless said): a global factor on the
   max amax, ModelOpt's histogram calibrator (percentiles; entropy and histogram-MSE with --slow-hist, minutes on
   CPU), ModelOpt's ``algorithm="mse"`` (weights only: ``quantize`` with the QAR config's algorithm set to "mse"),
   and a per-quantizer sweep (each input quantizer picks max or a percentile, by calibration score; ~2 min,
   --no-coordinate skips it). Score = regret + (1 - decisive) + (1 - cosine) on the calibration set. Ranges are read
   from what ``quantize`` returns (``QuantizedModel.amax``) and set with ``quant.int8.restore_ranges``.
4. Greedy keep-float search, from one or more starts (--greedy-from):
   - ``shipped``: the library's own search, ``quant.qar.keep_float_search``, called as an export calls it (max
     ranges, its defaults: ``DEFAULT_MAX_ROUTING_REGRET``, ``MIN_DECISIVE``, ``MAX_STEPS``, ``MIN_INT8_SHARE``, its
     90 s budget, the first ``SEARCH_SAMPLES`` calibration scenes), so that row is exactly what exports ship; its
     choices are then replayed one by one to fill the same columns as the other runs.
   - ``max`` / ``best-global`` / ``best`` / a range label: the benchmark's own greedy search from those ranges.
     Candidates and groups are the library's (``model.spec.quant_group``: stem, downN, each block's pos / norm /
     qkv / attn_out / mlp; the groups printed were named ``wo+lepe`` before they took the library's ``attn_out``),
     plus the benchmark's own groups past the backbone, which the library's matcher does not name: ``fpn`` (the
     neck) and ``head`` (the decode head but its classifier); stage-4 groups (``s3.*``), which the library's search
     never scores (no router follows them), are kept as output-phase candidates. --granularity layer: single
     modules. Routing phase: at each step the group whose float-ness lowers calibration regret most is kept float
     (``quant.qar.set_float``: input and weight quantizer disabled), while it lowers regret by >= --min-gain; only
     groups upstream of some router are candidates (the others cannot move a route), each scored by a forward that
     starts at its own backbone unit from cached inputs and stops after the last router (exactly the routes of a
     full forward, checked at start). Then an output phase while calibration pixel < --target-pixel. Stops at the
     targets, --steps, or INT8 weight share < --min-share.
     Same algorithm as ``keep_float_search`` in its routing phase (same greedy rule, same candidates in effect, same
     0.0003 minimum gain, same share floor), but it differs in: the score set (--score-samples, not the first
     ``SEARCH_SAMPLES``); the stopping rule (regret <= --target-regret ends the routing phase, where the library also
     wants decisive >= ``MIN_DECISIVE``); --steps instead of ``MAX_STEPS`` and no time budget; ties broken by
     decisive, then weights; the two groups of the last router's block that feed no router (attn_out, mlp) are not
     scored (the library scores them, but they cannot win); the output phase; --granularity layer; --min-gain.
5. Where flips come from: per-block metrics, the per-block effect of each group kept float alone, of each group
   (then each single quantizer of the worst three) quantized alone with everything else float, and of input-only /
   weight-only INT8.

Prints Markdown tables and writes them to bench_results/qar_ptq_search.md (--output). About 2.5 min on 2 busy cores
with the defaults, 30 s with --no-coordinate, plus the shipped search (its budget is checked between steps, so one
step may overrun it). On 2 cores loaded by other jobs (load ~4), --no-coordinate --calib-samples 16 --score-samples 16
--held-out 16 --steps 3 took 9.8 min, 172 s of it the shipped search.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biformer_edge.data.seeds import scene_set
from biformer_edge.data.synthetic import render_scene
from biformer_edge.metrics import compare, routing_agreement
from biformer_edge.models import create_model
from biformer_edge.models.bra import BiLevelRoutingAttention
from biformer_edge.models.routing import bra_blocks, recording, run_torch
from biformer_edge.preprocess import preprocess
from biformer_edge.quant import qar
from biformer_edge.quant.calibration import calibration_inputs, resolve_recipe
from biformer_edge.quant.config import modelopt_config
from biformer_edge.quant.int8 import (
    enabled_quantizers,
    int8_weight_share,
    model_config,
    modelopt,
    quantize,
    restore_ranges,
)
from biformer_edge.quant.settings import DEFAULT_MAX_ROUTING_REGRET

RESULTS = Path(__file__).resolve().parent.parent / "bench_results"
BATCH = 8
SHIPPED = "shipped"   # --greedy-from: the library's keep_float_search, as exports run it


def load() -> str:
    try:
        return "load %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load n/a"


def held_out(n: int, size: tuple[int, int]) -> np.ndarray:
    x = np.stack([preprocess(render_scene(seed, size)[0], size) for seed in scene_set("held_out", n)])
    x = x.astype(np.float32)
    return x.reshape(-1, BATCH, 3, *size)


# ---------------------------------------------------------------------------------------------------------- runs
class Reference:
    """FP32 logits, routes and affinities of one set, concatenated over its batches."""

    def __init__(self, model: nn.Module, batches: np.ndarray):
        runs = [run_torch(model, b, affinities=True) for b in batches]
        self.logits = np.concatenate([r.logits for r in runs])
        self.routing = [np.concatenate([r.routing[i] for r in runs]) for i in range(len(runs[0].routing))]
        self.affinity = [np.concatenate([r.affinity[i] for r in runs]) for i in range(len(runs[0].affinity))]
        self.batches = batches


def full_metrics(qmodel: nn.Module, ref: Reference, num_classes: int) -> dict:
    runs = [run_torch(qmodel, b) for b in ref.batches]
    logits = np.concatenate([r.logits for r in runs])
    routing = [np.concatenate([r.routing[i] for r in runs]) for i in range(len(ref.routing))]
    m = compare(ref.logits, ref.routing, logits, routing, "segmentation", num_classes, ref.affinity)
    m["per_block"] = per_block(ref, routing)
    m["score"] = m["routing_regret"] + (1 - m["routing_decisive"]) + (1 - m["cosine"])
    return m


def per_block(ref: Reference, routing: list[np.ndarray]) -> list[dict]:
    return [routing_agreement([r], [t], [a]) for r, t, a in zip(ref.routing, routing, ref.affinity)]


class RouteRunner:
    """The backbone as a chain of units (downsample, block, block, ..., up to the last BRA block); runs them from
    any unit on cached inputs and collects each BRA block's top-k routes. A candidate that changes unit u needs only
    units u.. re-run: the inputs of u and the routes of blocks before it are those of the base state."""

    def __init__(self, qmodel: nn.Module):
        bb = qmodel.backbone
        self.units: list[tuple[str, nn.Module, BiLevelRoutingAttention | None]] = []
        for i, (down, stage) in enumerate(zip(bb.downsample_layers, bb.stages)):
            self.units.append((f"down{i}", down, None))
            for j, blk in enumerate(stage):
                attn = getattr(blk, "attn", None)
                self.units.append((f"s{i}.{j}", blk, attn if isinstance(attn, BiLevelRoutingAttention) else None))
        last = max(k for k, u in enumerate(self.units) if u[2] is not None)
        self.units = self.units[:last + 1]
        self.index = {name: k for k, (name, _, _) in enumerate(self.units)}
        self.block_units = [k for k, u in enumerate(self.units) if u[2] is not None]
        self.blocks = bra_blocks(qmodel)

    def run(self, batches: np.ndarray, start: int = 0, base: dict | None = None, record: bool = False) -> dict:
        inputs = {k: [] for k in range(len(self.units))} if record else None
        routes = {k: [] for k in self.block_units}
        with torch.no_grad(), recording(self.blocks, indices=True):
            for b, batch in enumerate(batches):
                h = torch.from_numpy(np.ascontiguousarray(batch)) if start == 0 else base["inputs"][start][b]
                for k in range(start, len(self.units)):
                    _, unit, attn = self.units[k]
                    if record:
                        inputs[k].append(h)
                    h = unit(h)
                    if attn is not None:
                        routes[k].append(attn.last_routing.cpu().numpy().astype(np.int64))
        out_routes = []
        for k in self.block_units:
            out_routes.append(np.concatenate(routes[k]) if k >= start else base["routes"][self.block_units.index(k)])
        return {"routes": out_routes, "inputs": inputs}


# ------------------------------------------------------------------------------------------------------- groups
# The library's groups (model.spec.quant_group) cover the backbone; past it the matcher names none and the shipped
# search keeps nothing float. The benchmark's own additions, for its output phase: the neck and the decode head.
OWN_GROUPS = (("neck.", "fpn"), ("decode_head.", "head"))


def group_name(spec, name: str) -> str:
    """The keep-float group of module ``name``: the library's, else the benchmark's own (fpn, head), else itself."""
    found = spec.quant_group(name)
    if found is not None:
        return found[0]
    return next((group for prefix, group in OWN_GROUPS if name.startswith(prefix)), name)


def layer_groups(spec, qmodel: nn.Module, per_layer: bool = False) -> dict[str, list[str]]:
    """Group name -> its quantized modules (``quant.qar.quantized_modules``: every module whose input quantizer is
    enabled; the classifier is not); one module each with ``per_layer``."""
    groups: dict[str, list[str]] = {}
    for name in qar.quantized_modules(qmodel):
        groups.setdefault(name if per_layer else group_name(spec, name), []).append(name)
    return groups


def group_unit(found: tuple[str, int] | None, runner: RouteRunner) -> int | None:
    """The backbone unit a library group (``quant_group``'s answer) lives in, or None past the last router."""
    if found is None:
        return None
    group = found[0]
    unit = "down0" if group == "stem" else group if group.startswith("down") else group.rsplit(".", 1)[0]
    return runner.index.get(unit)


def moves_routes(found: tuple[str, int] | None, runner: RouteRunner) -> bool:
    """Whether keeping a library group float can change any route: it sits before some router (pos-embed, norm and
    qkv feed their own block's router; attn_out and mlp only the routers of later blocks). Finer than the library's
    rule (every group of a stage up to ``quant.qar.router_stages``) by the last router block's attn_out and mlp."""
    k = group_unit(found, runner)
    if k is None:
        return False
    return k < runner.block_units[-1] or found[0].endswith((".pos", ".qkv", ".norm"))


# ------------------------------------------------------------------------------------------------------ ranges
def ranges_of(amax: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """The ``input_quantizer`` or ``weight_quantizer`` entries of ``quantizer_ranges`` / ``QuantizedModel.amax``."""
    return {n: v for n, v in amax.items() if n.endswith(kind)}


def histogram_ranges(model: nn.Module, calib: np.ndarray, methods: list[tuple[str, str, dict]]) -> dict:
    """Input-quantizer amax from ModelOpt's HistogramCalibrator for each (label, method, kwargs). max_calibrate
    cannot finish a histogram calibrator (it calls compute_amax() without a method), so the quantizers are inserted
    with algorithm=None and the stats collected with ModelOpt's own enable_stats_collection."""
    mtq = modelopt()
    from modelopt.torch.quantization.model_calib import enable_stats_collection
    cfg = modelopt_config({**model_config(model, "qar"), "algorithm": None})
    for entry in cfg["quant_cfg"]:
        if entry.get("quantizer_name") == "*input_quantizer" and "cfg" in entry:
            entry["cfg"] = {**entry["cfg"], "calibrator": "histogram"}
    hmodel = copy.deepcopy(model).float().eval()
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        hmodel = mtq.quantize(hmodel, cfg, None)
        enable_stats_collection(hmodel)
        for batch in calib:
            hmodel(torch.from_numpy(np.ascontiguousarray(batch)))
    quantizers = [(n, q) for n, q in hmodel.named_modules()
                  if n.endswith("input_quantizer") and getattr(q, "_calibrator", None) is not None and q.is_enabled]
    out = {}
    for label, method, kwargs in methods:
        started = time.perf_counter()
        ranges = {}
        for name, q in quantizers:
            amax = q._calibrator.compute_amax(method, **kwargs)
            ranges[name] = torch.as_tensor(amax, dtype=torch.float32).reshape(()).numpy()
        out[label] = (ranges, time.perf_counter() - started)
    return out


def weight_mse_ranges(model: nn.Module, calib: np.ndarray) -> dict[str, np.ndarray]:
    """Weight amax of ModelOpt's algorithm="mse" (per-channel multiplier search on the weights; inputs stay max):
    ``quantize`` with the QAR config's algorithm set to "mse"."""
    with contextlib.redirect_stderr(io.StringIO()):
        qres = quantize(model, calib, {**model_config(model, "qar"), "algorithm": "mse"})
    return ranges_of(qres.amax, "weight_quantizer")


# ------------------------------------------------------------------------------------------------------ report
def fmt_metrics(m: dict) -> list[str]:
    return [f"{m['routing_decisive']:.4f}", f"{m['routing_regret']:.4f}", f"{m['routing_strict']:.4f}",
            f"{m['pixel']:.4f}", f"{m['cosine']:.5f}"]


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


class Report:
    def __init__(self):
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        print(text + "\n", flush=True)


# ------------------------------------------------------------------------------------------------------ search
class Search:
    """The fake-quant model, its references and the runs the searches score with."""

    def __init__(self, a, model: nn.Module, calib: np.ndarray, score_set: np.ndarray, held: np.ndarray):
        self.a, self.model, self.calib = a, model, calib
        self.num_classes = model.num_classes
        self.refs = {"calib": Reference(model, score_set), "held-out": Reference(model, held)}
        started = time.perf_counter()
        qres = quantize(model, calib, model_config(model, "qar"))
        self.t_quant = time.perf_counter() - started
        self.n_quantizers = qres.quantizers
        mods = dict(qres.model.named_modules())
        kinds: dict[str, int] = {}
        for n, _ in enabled_quantizers(qres.model):
            kind = f"{type(mods[n.rsplit('.', 1)[0]]).__name__}.{n.rsplit('.', 1)[1]}"
            kinds[kind] = kinds.get(kind, 0) + 1
        self.quantizer_kinds = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        self.qmodel = qres.model
        self.base_inputs, self.base_weights = ranges_of(qres.amax, "input_quantizer"), ranges_of(qres.amax,
                                                                                                 "weight_quantizer")
        self.runner = RouteRunner(self.qmodel)
        self.modules = qar.quantized_modules(self.qmodel)
        spec = model.spec
        self.groups = layer_groups(spec, self.qmodel, a.granularity == "layer")
        self.members = {g: [self.modules[n] for n in names] for g, names in self.groups.items()}
        found = {g: spec.quant_group(names[0]) for g, names in self.groups.items()}   # the library group it is in
        self.unit = {g: group_unit(f, self.runner) for g, f in found.items()}
        self.movers = [g for g in self.groups if moves_routes(found[g], self.runner)]
        self.library_groups: dict[str, list[nn.Module]] = {}   # what keep_float_search keeps float, group by group
        for name, module in self.modules.items():
            f = spec.quant_group(name)
            if f is not None:
                self.library_groups.setdefault(f[0], []).append(module)
        share = int8_weight_share(self.qmodel)
        self.total_w, self.base_int8 = share["weight_params"], share["int8_weight_params"]
        # the runner's routes must be exactly those of a full forward
        x = self.refs["calib"].batches[:1]
        check = self.runner.run(x)["routes"]
        assert all(np.array_equal(r, f) for r, f in zip(check, run_torch(self.qmodel, x[0]).routing)), \
            "RouteRunner routes differ from run_torch"

    def evaluate(self, sets=("calib", "held-out")) -> dict:
        return {k: full_metrics(self.qmodel, self.refs[k], self.num_classes) for k in sets}

    def routes_metrics(self, routes: list[np.ndarray]) -> dict:
        cal = self.refs["calib"]
        m = routing_agreement(cal.routing, routes, cal.affinity)
        m["per_block"] = per_block(cal, routes)
        return m

    def set_ranges(self, inputs: dict, weight_amax: dict) -> None:
        """Every enabled quantizer's range (``restore_ranges``: the sets must cover them all)."""
        restore_ranges(self.qmodel, {**inputs, **weight_amax})

    def share_with(self, floated: list[str]) -> float:
        return (self.base_int8 - sum(qar.weights(self.members[g]) for g in floated)) / self.total_w

    # -------------------------------------------------------------- routing-aware per-quantizer ranges
    def coordinate_ranges(self, start: tuple, options: dict[str, dict]) -> tuple[dict, int]:
        """One sweep over every input quantizer (forward order): each takes the option (max or a histogram
        percentile, per quantizer) that lowers the calibration score most; the others stay as they are."""
        current = dict(start[1])
        self.set_ranges(current, start[2])
        best = self.evaluate(("calib",))["calib"]["score"]
        evals = 0
        for name in current:
            keep = current[name]
            for label, ranges in options.items():
                if np.array_equal(ranges[name], current[name]):
                    continue
                self.set_ranges({**current, name: ranges[name]}, start[2])
                score = self.evaluate(("calib",))["calib"]["score"]
                evals += 1
                if score < best - 1e-6:
                    best, keep = score, ranges[name]
            current[name] = keep
            self.set_ranges(current, start[2])
        return current, evals

    # -------------------------------------------------------------- greedy keep-float
    def greedy(self, start: tuple, report_rows: list, tag: str) -> dict:
        a, runner = self.a, self.runner
        self.set_ranges(start[1], start[2])
        chosen: list[str] = []
        state = start[3]
        share = self.share_with([])
        history = [("(none)", state, share)]
        report_rows.append([tag, "0", "", f"(none; ranges: {start[0]})", *fmt_metrics(state["calib"])[:4],
                            *fmt_metrics(state["held-out"]), f"{share:.4f}", ""])
        print(" | ".join(report_rows[-1]), flush=True)
        routing_stalled = False
        first_step: dict[str, dict] = {}
        for step in range(1, a.steps + 1):
            cal = state["calib"]
            started = time.perf_counter()
            pick, phase, n_scored = None, None, 0
            if cal["routing_regret"] > a.target_regret and not routing_stalled:
                phase = "routing"
                base = runner.run(self.refs["calib"].batches, record=True)
                scored = []
                for g in self.movers:
                    if g in chosen:
                        continue
                    qar.set_float(self.members[g], True)
                    routes = runner.run(self.refs["calib"].batches, start=self.unit[g], base=base)["routes"]
                    qar.set_float(self.members[g], False)
                    m = self.routes_metrics(routes)
                    scored.append((m["routing_regret"], -m["routing_decisive"], qar.weights(self.members[g]), g))
                    if step == 1:
                        first_step[g] = m
                n_scored = len(scored)
                for s in sorted(scored):
                    if self.share_with(chosen + [s[3]]) >= a.min_share:
                        if cal["routing_regret"] - s[0] >= a.min_gain:
                            pick = s[3]
                        break
                if pick is None:
                    routing_stalled = True
                    print(f"[{tag}] step {step}: no group lowers calibration regret by >= {a.min_gain} within the "
                          f"INT8 share budget: routing phase stalls", flush=True)
            if pick is None and cal["pixel"] < a.target_pixel:
                phase = "output"
                scored = []
                for g in self.groups:
                    if g in chosen or self.share_with(chosen + [g]) < a.min_share:
                        continue
                    qar.set_float(self.members[g], True)
                    m = self.evaluate(("calib",))["calib"]
                    qar.set_float(self.members[g], False)
                    scored.append((-m["pixel"], 1 - m["cosine"], qar.weights(self.members[g]), g))
                n_scored = len(scored)
                if scored:
                    s = min(scored)
                    if -s[0] - cal["pixel"] >= a.min_pixel_gain:
                        pick = s[3]
            if pick is None:
                break
            chosen.append(pick)
            qar.set_float(self.members[pick], True)
            state = self.evaluate()
            share = self.share_with(chosen)
            history.append((pick, state, share))
            report_rows.append([tag, str(step), phase, pick, *fmt_metrics(state["calib"])[:4],
                                *fmt_metrics(state["held-out"]), f"{share:.4f}",
                                f"{time.perf_counter() - started:.1f}"])
            print(" | ".join(report_rows[-1]) + f"   ({n_scored} candidates, {load()})", flush=True)
            if state["calib"]["routing_regret"] <= a.target_regret and state["calib"]["pixel"] >= a.target_pixel:
                break
        for g in chosen:
            qar.set_float(self.members[g], False)
        return {"chosen": chosen, "history": history, "first_step": first_step, "start": start[0],
                "label": f"greedy from {start[0]}"}

    def shipped(self, start: tuple, report_rows: list, tag: str) -> dict:
        """The library's search (``quant.qar.keep_float_search``) as ``quantize`` runs it in an export: on this
        model at max ranges (``start``, the baseline), with its own defaults and the calibration batches. Its choices
        are then replayed one group at a time and evaluated like the benchmark's own steps (calib columns: the
        benchmark's score set, which is not the library's first SEARCH_SAMPLES scenes unless --score-samples says
        so)."""
        self.set_ranges(start[1], start[2])
        result = qar.keep_float_search(self.qmodel, self.model, self.calib, DEFAULT_MAX_ROUTING_REGRET,
                                       log=lambda msg: print(f"[{tag}] {msg}", flush=True))
        qar.set_float([self.modules[n] for n in result["float_layers"]], False)
        state, share = start[3], self.share_with([])
        history = [("(none)", state, share)]
        report_rows.append([tag, "0", "", f"(none; ranges: {start[0]})", *fmt_metrics(state["calib"])[:4],
                            *fmt_metrics(state["held-out"]), f"{share:.4f}", ""])
        print(" | ".join(report_rows[-1]), flush=True)
        floated: list[nn.Module] = []
        for step, group in enumerate(result["float_groups"], 1):
            floated += self.library_groups[group]
            qar.set_float(self.library_groups[group], True)
            state = self.evaluate()
            share = int8_weight_share(self.qmodel)["int8_weight_params"] / self.total_w
            history.append((group, state, share))
            report_rows.append([tag, str(step), "library", group, *fmt_metrics(state["calib"])[:4],
                                *fmt_metrics(state["held-out"]), f"{share:.4f}", ""])
            print(" | ".join(report_rows[-1]), flush=True)
        qar.set_float(floated, False)
        return {"chosen": result["float_groups"], "history": history, "first_step": {}, "start": "shipped",
                "label": "shipped search (quant.qar.keep_float_search)", "search": result}

    # -------------------------------------------------------------- attribution
    def quantize_alone(self) -> tuple[list, list]:
        """Routes on the calibration set with only one group (then only one quantizer of the worst groups, then all
        input or all weight quantizers) INT8 and everything else float. Max ranges."""
        runner, qmodel = self.runner, self.qmodel
        self.set_ranges(self.base_inputs, self.base_weights)
        quantizers = enabled_quantizers(qmodel)
        for _, q in quantizers:
            q.disable()
        fp_base = runner.run(self.refs["calib"].batches, record=True)
        rows = []
        for g in self.movers:
            qar.set_float(self.members[g], False)
            routes = runner.run(self.refs["calib"].batches, start=self.unit[g], base=fp_base)["routes"]
            qar.set_float(self.members[g], True)
            rows.append((g, qar.weights(self.members[g]), self.routes_metrics(routes)))
        rows.sort(key=lambda r: -r[2]["routing_regret"])
        detail = []
        for g, _, _ in rows[:3]:
            for layer in self.groups[g]:
                mod = qmodel.get_submodule(layer)
                for kind in ("input_quantizer", "weight_quantizer"):
                    q = getattr(mod, kind, None)
                    if q is None:
                        continue
                    q.enable()
                    routes = runner.run(self.refs["calib"].batches, start=self.unit[g], base=fp_base)
                    q.disable()
                    amax = q.amax.detach().float()
                    amax_s = f"{float(amax):.3g}" if amax.numel() == 1 else f"per-ch {float(amax.max()):.3g} max"
                    detail.append((f"{layer}.{kind} (amax {amax_s})", "-", self.routes_metrics(routes["routes"])))
        for kind in ("input_quantizer", "weight_quantizer"):
            for n, q in quantizers:
                if n.endswith(kind):
                    q.enable()
            routes = runner.run(self.refs["calib"].batches)["routes"]
            for n, q in quantizers:
                if n.endswith(kind):
                    q.disable()
            detail.append((f"ALL {kind}s only", "-", self.routes_metrics(routes)))
        for _, q in quantizers:
            q.enable()
        return rows, detail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="biformer_seg_demo")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration scenes (default recipe), default 64")
    p.add_argument("--score-samples", type=int, default=64,
                   help="of those, how many the searches score on (multiple of 8, default 64)")
    p.add_argument("--held-out", type=int, default=64, help="held-out scenes (multiple of 8)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--target-regret", type=float, default=DEFAULT_MAX_ROUTING_REGRET)
    p.add_argument("--target-pixel", type=float, default=0.998,
                   help="after the routing phase, keep groups float for calibration pixel agreement up to this")
    p.add_argument("--min-gain", type=float, default=0.0003,   # keep_float_search's own minimum gain
                   help="a routing step must lower calibration regret by at least this (else the phase stalls)")
    p.add_argument("--min-pixel-gain", type=float, default=0.0002)
    p.add_argument("--min-share", type=float, default=qar.MIN_INT8_SHARE)
    p.add_argument("--factors", type=float, nargs="*", default=[0.9, 0.8, 0.7],
                   help="global factors on every input quantizer's max amax (1.0 is the baseline)")
    p.add_argument("--percentiles", type=float, nargs="*", default=[99.999, 99.99, 99.9, 99.5])
    p.add_argument("--slow-hist", action="store_true",
                   help="also ModelOpt's histogram entropy and MSE amax (minutes on 2 CPU cores)")
    p.add_argument("--no-coordinate", action="store_true", help="skip the per-quantizer range sweep")
    p.add_argument("--greedy-from", nargs="+", default=[SHIPPED, "max", "best-global", "best"],
                   help="greedy searches to run: shipped (the library's keep_float_search as exports run it, max "
                        "ranges, its own settings), then the benchmark's own from ranges: max (the product's), "
                        "best-global (lowest calibration "
                        "score of the global range choices), best (the per-quantizer sweep included), or any row "
                        "label of the range table, e.g. 'percentile 99.9'")
    p.add_argument("--granularity", choices=["group", "layer"], default="group",
                   help="keep-float unit of the benchmark's own search: a group (model.spec.quant_group's: stem, "
                        "downN, each block's pos / norm / qkv / attn_out / mlp; the benchmark's own fpn, head) or "
                        "one Conv/Linear")
    p.add_argument("--checkpoint", help="FP32 weights of the model to search instead of the shipped ones (e.g. a "
                                       "routing_margin_sweep point)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(RESULTS / "qar_ptq_search.md"))
    a = p.parse_args(argv)
    for n in (a.score_samples, a.held_out):
        if n % BATCH or n < BATCH:
            p.error(f"sample counts must be multiples of {BATCH}")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    report = Report()
    report.add(f"# PTQ-QAR search: {a.model} @ 128x128\n\nstart {time.strftime('%Y-%m-%d %H:%M:%S')}, {load()} "
               f"(1/5/15 min), {os.cpu_count()} CPUs, torch threads {a.threads}; calibration {a.calib_samples} "
               f"scenes (default recipe), searches scored on {a.score_samples} of them; held-out {a.held_out} scenes "
               f"(seeds {scene_set('held_out', 1)[0]}..), never used for a choice")

    size = (128, 128)
    model = create_model(a.model, checkpoint=a.checkpoint, pretrained=not a.checkpoint).eval()
    calib = calibration_inputs(resolve_recipe(None, a.calib_samples), (BATCH, 3, *size))
    started = time.perf_counter()
    S = Search(a, model, calib, calib[: a.score_samples // BATCH], held_out(a.held_out, size))
    started2 = time.perf_counter()
    baseline = S.evaluate()
    t_eval = time.perf_counter() - started2
    stem_in = S.base_inputs.get("backbone.downsample_layers.0.0.input_quantizer")
    note = ""
    if stem_in is not None:
        from biformer_edge.preprocess import STD
        note = (f" The image quantizer (stem conv input) has amax {float(stem_in):.3f}: INT8 step "
                f"{float(stem_in) / 127:.4f} vs one uint8 pixel level {1 / float(STD.max()):.4f}-"
                f"{1 / float(STD.min()):.4f} in normalised units.")
    report.add(f"Setup (references + quantize) {time.perf_counter() - started:.1f} s, of which quantize() "
               f"{S.t_quant:.1f} s ({S.n_quantizers} quantizers: {S.quantizer_kinds}); one full evaluation of both "
               f"sets {t_eval:.1f} s; "
               f"{load()}.{note}")

    # ------------------------------------------------------------------ 3. range search
    header = ["ranges (input quantizers unless said)", "set", "decisive", "regret", "strict", "pixel", "cosine",
              "score", "s"]
    range_rows, candidates = [], []

    def range_row(label, metrics, secs):
        for s in ("calib", "held-out"):
            range_rows.append([label, s, *fmt_metrics(metrics[s]), f"{metrics[s]['score']:.4f}",
                               f"{secs:.1f}" if s == "calib" else ""])
        print(" | ".join(range_rows[-2]) + "\n" + " | ".join(range_rows[-1]), flush=True)

    t_ranges = time.perf_counter()
    range_row("max (baseline)", baseline, 0.0)
    candidates.append(("max (baseline)", S.base_inputs, S.base_weights, baseline))
    options = {"max": S.base_inputs}
    for f in a.factors:
        started = time.perf_counter()
        ranges = {n: v * f for n, v in S.base_inputs.items()}
        S.set_ranges(ranges, S.base_weights)
        m = S.evaluate()
        range_row(f"max x {f:g}", m, time.perf_counter() - started)
        candidates.append((f"max x {f:g}", ranges, S.base_weights, m))
    methods = [(f"percentile {pc:g}", "percentile", {"percentile": pc}) for pc in a.percentiles]
    if a.slow_hist:
        methods += [("entropy", "entropy", {}), ("histogram mse", "mse", {})]
    started = time.perf_counter()
    hist = histogram_ranges(model, calib, methods) if methods else {}
    t_hist = time.perf_counter() - started - sum(t for _, t in hist.values())
    for label, (ranges, secs) in hist.items():
        started = time.perf_counter()
        S.set_ranges(ranges, S.base_weights)
        m = S.evaluate()
        range_row(label, m, secs + time.perf_counter() - started)
        candidates.append((label, ranges, S.base_weights, m))
        options[label] = ranges
    started = time.perf_counter()
    w_mse = weight_mse_ranges(model, calib)
    S.set_ranges(S.base_inputs, w_mse)
    m = S.evaluate()
    range_row("max; WEIGHTS by algorithm=mse", m, time.perf_counter() - started)
    candidates.append(("max; WEIGHTS by algorithm=mse", S.base_inputs, w_mse, m))
    best_global = min(candidates, key=lambda c: c[3]["calib"]["score"])
    coord_text = ""
    if not a.no_coordinate and len(options) > 1:
        started = time.perf_counter()
        ranges, evals = S.coordinate_ranges(best_global, options)
        S.set_ranges(ranges, best_global[2])
        m = S.evaluate()
        secs = time.perf_counter() - started
        label = f"per-quantizer sweep from {best_global[0]}"
        range_row(label, m, secs)
        candidates.append((label, ranges, best_global[2], m))
        picked = {}
        for name, amax in ranges.items():
            which = next((k for k, o in options.items() if np.array_equal(o[name], amax)), "start")
            picked[which] = picked.get(which, 0) + 1
        coord_text = (f" The per-quantizer sweep ({evals} calibration evaluations, {secs:.0f} s) picks, over "
                      f"{len(ranges)} input quantizers: " + ", ".join(f"{k} {v}" for k, v in picked.items()) + ".")
    S.set_ranges(S.base_inputs, S.base_weights)
    t_ranges = time.perf_counter() - t_ranges
    best = min(candidates, key=lambda c: c[3]["calib"]["score"])
    report.add("## Range search (every quantizer INT8)\n\nscore = regret + (1 - decisive) + (1 - cosine), chosen on "
               f"the calibration set; histogram collection {t_hist:.1f} s (one calibration pass). Best global: "
               f"**{best_global[0]}**; best overall: **{best[0]}**.{coord_text} {t_ranges:.0f} s in all.\n\n"
               + table(header, range_rows))

    # ------------------------------------------------------------------ 4. greedy keep-float
    g_header = ["start", "step", "phase", "kept float", "calib decisive", "calib regret", "calib strict",
                "calib pixel", "held-out decisive", "held-out regret", "held-out strict", "held-out pixel",
                "held-out cosine", "INT8 weight share", "s"]
    g_rows, runs = [], []
    t_greedy = time.perf_counter()
    starts = {"max": candidates[0], "best": best}
    seen = set()
    starts["best-global"] = best_global
    starts.update({c[0]: c for c in candidates})
    for key in a.greedy_from:
        if key not in starts and key != SHIPPED:
            p.error(f"--greedy-from {key!r}: choose from {', '.join([SHIPPED, *starts])}")
        start = candidates[0] if key == SHIPPED else starts[key]
        if (key if key == SHIPPED else start[0]) in seen:
            continue
        seen.add(key if key == SHIPPED else start[0])
        started = time.perf_counter()
        run = S.shipped(start, g_rows, key) if key == SHIPPED else S.greedy(start, g_rows, key)
        run["seconds"] = time.perf_counter() - started
        runs.append(run)
    t_greedy = time.perf_counter() - t_greedy
    S.set_ranges(S.base_inputs, S.base_weights)
    shipped = next((r["search"] for r in runs if "search" in r), None)
    shipped_text = "" if shipped is None else (
        f"Rows \"{SHIPPED}\": the library's keep_float_search as an export runs it (max ranges; regret <= "
        f"{shipped['max_regret']} and decisive >= {qar.MIN_DECISIVE}, at most {qar.MAX_STEPS} steps, INT8 weight "
        f"share >= {qar.MIN_INT8_SHARE}, {qar.TIME_BUDGET_S:.0f} s budget, first {qar.SEARCH_SAMPLES} calibration "
        f"scenes): kept {', '.join(shipped['float_groups']) or 'nothing'} float in {shipped['seconds']} s, its "
        f"calibration regret "
        f"{shipped['calibration_before']['routing_regret']:.4f} -> {shipped['calibration_after']['routing_regret']:.4f}"
        f", decisive {shipped['calibration_after']['routing_decisive']:.4f} (target met: {shipped['met']}); its "
        f"choices replayed step by step for these columns. The other rows: the benchmark's own search. ")
    report.add(f"## Greedy keep-float search\n\n{shipped_text}Routing phase: each step scores every remaining "
               f"group that sits before a router ({len(S.movers)} of {len(S.groups)} groups) by calibration regret "
               f"and keeps the best float (input and weight quantizer disabled), while it lowers regret by >= "
               f"{a.min_gain}; then an output phase while calibration pixel < {a.target_pixel} (every group, full "
               f"forward, by calibration pixel, gain >= {a.min_pixel_gain}). Stops at calib regret <= "
               f"{a.target_regret} and pixel >= {a.target_pixel}, {a.steps} steps, or INT8 weight share < "
               f"{a.min_share}. Seconds: " + ", ".join(f"{r['label']} {r['seconds']:.0f}" for r in runs) + ".\n\n"
               + table(g_header, g_rows))

    # ------------------------------------------------------------------ 5. where flips come from
    runner = S.runner
    block_names = [runner.units[k][0] for k in runner.block_units]
    topk = [runner.units[k][2].topk for k in runner.block_units]
    pb_header = ["state", "set"] + [f"{b} (k={k}) strict / decisive / regret" for b, k in zip(block_names, topk)]
    pb_rows = []
    states = [("baseline (max)", baseline), (f"{best[0]}", best[3])]
    states += [(f"{r['label']}: {', '.join(r['chosen']) or 'none'} float", r["history"][-1][1])
               for r in runs]
    for label, st in states:
        for s in ("calib", "held-out"):
            pb_rows.append([label, s] + [f"{b['routing_strict']:.3f} / {b['routing_decisive']:.3f} / "
                                         f"{b['routing_regret']:.4f}" for b in st[s]["per_block"]])
    pb_rows.append(["decisive share of routes (FP32)", "held-out"]
                   + [f"{b['routing_decisive_share']:.3f}" for b in baseline["held-out"]["per_block"]])
    text = "## Where the flips come from\n\nPer block:\n\n" + table(pb_header, pb_rows)

    def block_cells(m):
        return [f"{b['routing_decisive']:.3f} / {b['routing_regret']:.4f}" for b in m["per_block"]]

    attr_header = ["float / INT8", "weights"] + [f"{b} decisive / regret" for b in block_names] + ["all: regret"]
    first_run = next((r for r in runs if r["first_step"]), None)
    if first_run:
        rows = [[g, str(qar.weights(S.members[g]))] + block_cells(m) + [f"{m['routing_regret']:.4f}"]
                for g, m in sorted(first_run["first_step"].items(), key=lambda kv: kv[1]["routing_regret"])]
        text += (f"\n\nKeep ONE group float, everything else INT8 (greedy step 1 from {first_run['start']}, "
                 f"calibration set; the lower the regret, the more that group's INT8 costs):\n\n"
                 + table(attr_header, rows))
    started = time.perf_counter()
    alone, detail = S.quantize_alone()
    t_attr = time.perf_counter() - started
    rows = [[g, str(w)] + block_cells(m) + [f"{m['routing_regret']:.4f}"] for g, w, m in alone]
    rows += [[g, w] + block_cells(m) + [f"{m['routing_regret']:.4f}"] for g, w, m in detail]
    text += ("\n\nQuantize ONE group alone, everything else float (max ranges, calibration set; the higher the "
             "regret, the more routes that group's INT8 moves); then single quantizers of the three worst groups, and "
             f"input-only / weight-only INT8 everywhere ({t_attr:.0f} s):\n\n" + table(attr_header, rows))
    report.add(text)

    # ------------------------------------------------------------------ summary
    total = time.perf_counter() - t0
    summary = [["baseline (max, all INT8)", *fmt_metrics(baseline["held-out"]), f"{S.share_with([]):.4f}"],
               [f"best ranges by calib score ({best[0]})", *fmt_metrics(best[3]["held-out"]),
                f"{S.share_with([]):.4f}"]]
    for r in runs:
        pick, st, share = r["history"][-1]
        summary.append([f"{r['label']}: {', '.join(r['chosen']) or 'none'} float",
                        *fmt_metrics(st["held-out"]), f"{share:.4f}"])
    report.add("## Summary (held-out; every choice made on the calibration set)\n\n"
               + table(["configuration", "decisive", "regret", "strict", "pixel", "cosine", "INT8 weight share"],
                       summary)
               + f"\n\nGoal: decisive >= {qar.MIN_DECISIVE}, regret <= {DEFAULT_MAX_ROUTING_REGRET}, pixel >= "
               f"0.998 with >= {qar.MIN_INT8_SHARE * 100:.0f} % INT8 weights.\n\n"
               f"Times: range search {t_ranges:.0f} s, greedy {t_greedy:.0f} s, attribution {t_attr:.0f} s, "
               f"total {total:.0f} s; end {load()}")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(report.parts) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
