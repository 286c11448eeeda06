"""Make biformer_seg_demo, the default model: train it on the synthetic scenes; fine-tune its routing margin.

    python -m biformer_edge.train_demo                      # --stage base: the shipped weights' recipe
    python -m biformer_edge.train_demo --steps 200 --out /tmp/quick.pt                      # a quick run
    python -m biformer_edge.train_demo --stage margin --init base.pt --routing-margin 1 --margin 0.1 --out m.pt
    python -m biformer_edge.train_demo --stage all          # base, then the margin fine-tune

Stages (``STAGES``; CPU, resumable, a progress bar, held-out mIoU and per-class IoU at the end of each):

- ``base``: 4000 steps of 8 scenes at 128x128 from scratch (48 min on 2 cores), written to RUN_DIR/base.pt;
- ``margin``: 1000 steps from the base weights at a tenth of the learning rate on fresh scenes, with the routing
  margin term (models/routing_margin.py), meant to make near-tie routes decisive so that they survive INT8. The best
  point of benchmarks/routing_margin_sweep.py so far; not the shipped model, because its INT8 figures did not meet
  the targets when measured again (docs/default_model.md "How it is made").

The last stage run writes the FP16 weights (default: the package's biformer_edge/weights/biformer_seg_demo.pt for
--stage base, RUN_DIR/margin.pt for --stage margin) and, next to them, a JSON with the held-out mIoU, per-class IoU and
the recipe (every stage's settings, and the sha256 of the weights each started from). --steps, --lr, --seed,
--routing-margin, --margin and --init change one stage's setting, so --stage all refuses them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .console import OneLineParser
from .data.dataset import SyntheticScenes
from .data.seeds import SCENE_SETS
from .data.synthetic import CLASSES
from .errors import UserError
from .metrics import to_labels
from .models import create_model
from .models.registry import WEIGHTS_DIR
from .models.routing_margin import DEFAULT_MARGIN, RoutingMargin


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


@torch.no_grad()
def evaluate(model, n: int, size: int, batch: int = 16) -> dict:
    """mIoU against ground truth on ``n`` held-out scenes: total intersection / total union per class."""
    model.eval()
    k = len(CLASSES)
    confusion = np.zeros((k, k), dtype=np.int64)
    data = SyntheticScenes(n, size=(size, size), seed=SCENE_SETS["demo_val"].base)
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    for x, y in loader:
        logits = F.interpolate(model(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
        pred = to_labels(logits.numpy()).ravel()
        confusion += np.bincount(y.numpy().ravel() * k + pred, minlength=k * k).reshape(k, k)
    iou = per_class_iou(confusion)
    return {"miou": float(np.nanmean(iou)), "per_class_iou": {c: round(float(v), 4) for c, v in zip(CLASSES, iou)},
            "pixel_accuracy": float(np.diag(confusion).sum() / confusion.sum()), "val_scenes": n, "size": size}


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


# The default model's recipe. The margin stage's weight and margin: the best point of benchmarks/routing_margin_sweep.py
# so far (its table: docs/default_model.md "Choosing the margin").
STAGES = {
    "base": {"steps": 4000, "lr": 2e-3, "seed": SCENE_SETS["demo_train"].base, "routing_margin": 0.0,
             "margin": DEFAULT_MARGIN},
    "margin": {"steps": 1000, "lr": 2e-4, "seed": SCENE_SETS["demo_margin"].base, "routing_margin": 0.3,
               "margin": DEFAULT_MARGIN},
}
STAGE_OPTIONS = ("steps", "lr", "seed", "routing_margin", "margin", "init")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m biformer_edge.train_demo", description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=(*STAGES, "all"), default="base",
                   help="base (default: the shipped weights' recipe), margin, or all: base, then margin")
    p.add_argument("--steps", type=int, help="steps of the stage (base 4000, margin 1000)")
    p.add_argument("--lr", type=float, help="peak learning rate (base 2e-3, margin 2e-4)")
    p.add_argument("--seed", type=int, help="base seed of the stage's training scenes")
    p.add_argument("--routing-margin", type=float, metavar="W",
                   help="weight of the routing margin term (models/routing_margin.py; 0: off; "
                        f"base {STAGES['base']['routing_margin']:g}, margin {STAGES['margin']['routing_margin']:g})")
    p.add_argument("--margin", type=float,
                   help=f"the relative k-th/(k+1)-th gap it asks for, in (0, 1) (default {DEFAULT_MARGIN})")
    p.add_argument("--init", help="weights the stage starts from (base: random init; margin: RUN_DIR/base.pt)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--val-scenes", type=int, default=200)
    p.add_argument("--run-dir", default="runs/train_demo", help="resumable checkpoints (one folder per stage) and "
                                                                "base.pt live here")
    p.add_argument("--out", help="weights to write (default: --stage base: the package's shipped weights; margin: "
                                 "RUN_DIR/margin.pt; all: RUN_DIR/base.pt, then RUN_DIR/margin.pt)")
    return p


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage_settings(a: argparse.Namespace, stage: str) -> dict:
    settings = dict(STAGES[stage], batch=a.batch, size=a.size)
    for name in STAGE_OPTIONS:
        if getattr(a, name) is not None:
            settings[name] = getattr(a, name)
    return settings


def check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Every refusal before anything is written (the run directory) or trained."""
    given = [f"--{n.replace('_', '-')}" for n in STAGE_OPTIONS if getattr(a, n) is not None]
    if a.stage == "all" and given:
        p.error(f"{' '.join(given)} change(s) one stage: use --stage base or --stage margin, not --stage all")
    if a.routing_margin is not None and not (math.isfinite(a.routing_margin) and a.routing_margin >= 0):
        p.error(f"--routing-margin must be a number >= 0 (0: off), not {a.routing_margin}")
    if a.margin is not None and not (math.isfinite(a.margin) and 0 < a.margin < 1):
        p.error(f"--margin must be in (0, 1) (a share of each query's affinity spread), not {a.margin}")
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps must be >= 1, not {a.steps}")
    if a.lr is not None and not (math.isfinite(a.lr) and a.lr > 0):
        p.error(f"--lr must be a number > 0, not {a.lr}")
    if a.init is not None and not Path(a.init).is_file():
        p.error(f"--init {a.init} is not a file: pass the weights the stage starts from")


def train_stage(stage: str, settings: dict, init: Path | None, out: Path, run_dir: Path, a) -> dict:
    """One stage, resumable from RUN_DIR/STAGE/last.pt (refused if that run had other settings); writes ``out``
    (FP16) and ``out``.json: the held-out report and the recipe so far."""
    from tqdm import tqdm

    torch.manual_seed(0)
    model = create_model("biformer_seg_demo", checkpoint=str(init) if init else None, pretrained=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.05)
    recipe_step = {"stage": stage, **settings, "init_sha256": sha256(init) if init else None}
    state_dir = run_dir / stage
    state_dir.mkdir(parents=True, exist_ok=True)
    last = state_dir / "last.pt"
    step = 0
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state.get("recipe") != json.dumps(recipe_step, sort_keys=True):
            raise UserError(f"{last} is a run with other settings or starting weights: pass another --run-dir, "
                            f"or remove {state_dir} to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        print(f"resuming {stage} from {last} at step {step}")
    steps, batch = settings["steps"], settings["batch"]
    # Each step draws fresh scenes (seeded by step), so resuming continues the same data stream.
    data = SyntheticScenes(steps * batch, size=(settings["size"],) * 2, seed=settings["seed"])
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(step * batch, steps * batch)),
                                         batch_size=batch, num_workers=1, persistent_workers=False)
    started = time.time()
    bar = tqdm(loader, total=steps - step, initial=0, desc=f"train {stage}", unit="step")
    for x, y in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, settings["lr"], warmup=100)
        with RoutingMargin(model, settings["margin"]) as routing:
            logits = F.interpolate(model(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y)
            if settings["routing_margin"]:
                loss = loss + settings["routing_margin"] * routing.loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if step % 100 == 0 or step == steps:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "recipe": json.dumps(recipe_step, sort_keys=True)}, last)
    bar.close()
    result = evaluate(model, a.val_scenes, settings["size"])
    earlier = []
    if init is not None and init.with_suffix(".json").is_file():
        earlier = json.loads(init.with_suffix(".json").read_text()).get("recipe", [])
    result.update(steps=step, batch=batch, train_minutes=round((time.time() - started) / 60, 1),
                  recipe=[*earlier, recipe_step])
    print(json.dumps(result, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    # staged, then renamed: an interrupted write never leaves half a weights file where the package loads it
    staged = out.with_name(f".{out.name}.partial")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, staged)
    staged.replace(out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json')}")
    return result


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    check(p, a)
    if a.threads:
        torch.set_num_threads(a.threads)
    run_dir = Path(a.run_dir)
    shipped = WEIGHTS_DIR / "biformer_seg_demo.pt"
    base_out = run_dir / "base.pt"
    try:
        if a.stage in ("all", "base"):
            out = base_out if a.stage == "all" else Path(a.out) if a.out else shipped
            train_stage("base", stage_settings(a, "base"), Path(a.init) if a.init else None, out, run_dir, a)
        if a.stage in ("all", "margin"):
            init = Path(a.init) if a.init else base_out
            if not init.is_file():
                raise UserError(f"the margin stage starts from the base weights, and {init} does not exist: run "
                                f"--stage base first, or pass --init")
            out = Path(a.out) if a.out and a.stage == "margin" else run_dir / "margin.pt"
            train_stage("margin", stage_settings(a, "margin"), init, out, run_dir, a)
    except UserError as e:
        p.error(str(e))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
