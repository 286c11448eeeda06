"""Train biformer_seg_demo on the synthetic scenes (CPU, resumable).

    python -m biformer_edge.train_demo                 # default recipe, resumes runs/train_demo/last.pt if present
    python -m biformer_edge.train_demo --steps 200     # a quick run
    python -m biformer_edge.train_demo --init biformer_edge/weights/biformer_seg_demo.pt --steps 300 --lr 2e-4 \
        --routing-margin 0.1 --run-dir runs/margin --out margin.pt   # fine-tune with the routing margin term

Writes the FP16 weights that ship with the package (biformer_edge/weights/biformer_seg_demo.pt) and a JSON with the
held-out mIoU and per-class IoU next to them.
"""
from __future__ import annotations

import argparse
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


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m biformer_edge.train_demo", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--val-scenes", type=int, default=200)
    p.add_argument("--run-dir", default="runs/train_demo", help="resumable checkpoint lives here")
    p.add_argument("--out", default=str(WEIGHTS_DIR / "biformer_seg_demo.pt"))
    p.add_argument("--init", help="start from these weights (a fine-tune) instead of random init")
    p.add_argument("--routing-margin", type=float, default=0.0, metavar="W",
                   help="weight of the routing margin term (models/routing_margin.py; 0: off)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help=f"the relative k-th/(k+1)-th gap it asks for, in (0, 1) (default {DEFAULT_MARGIN})")
    p.add_argument("--seed", type=int, default=SCENE_SETS["demo_train"].base, help="base seed of the training scenes")
    return p


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    # before anything is written (the run directory) or trained
    if not (math.isfinite(a.routing_margin) and a.routing_margin >= 0):
        p.error(f"--routing-margin must be a number >= 0 (0: off), not {a.routing_margin}")
    if not (math.isfinite(a.margin) and 0 < a.margin < 1):
        p.error(f"--margin must be in (0, 1) (a share of each query's affinity spread), not {a.margin}")
    from tqdm import tqdm

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model("biformer_seg_demo", checkpoint=a.init, pretrained=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    step = 0
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        print(f"resuming from {last} at step {step}")
    # Each step draws fresh scenes (seeded by step), so resuming continues the same data stream.
    data = SyntheticScenes(a.steps * a.batch, size=(a.size, a.size), seed=a.seed)
    sampler = range(step * a.batch, a.steps * a.batch)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, sampler), batch_size=a.batch, num_workers=1,
                                         persistent_workers=False)
    started = time.time()
    bar = tqdm(loader, total=a.steps - step, initial=0, desc="train", unit="step")
    model.train()
    for x, y in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, a.steps, a.lr, warmup=100)
        with RoutingMargin(model, a.margin) as routing:
            logits = F.interpolate(model(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y)
            if a.routing_margin:
                loss = loss + a.routing_margin * routing.loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if step % 100 == 0 or step == a.steps:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, last)
    bar.close()
    result = evaluate(model, a.val_scenes, a.size)
    result.update(steps=step, batch=a.batch, train_minutes=round((time.time() - started) / 60, 1))
    print(json.dumps(result, indent=2))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
