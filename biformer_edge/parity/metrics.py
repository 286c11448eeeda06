"""Drift metrics of DESIGN.md. Inputs are numpy arrays; labels come from one post-processing for every backend."""
from __future__ import annotations

import numpy as np


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """20 log10(|ref| / |ref - test|); capped at 200 dB for identical outputs so JSON stays finite."""
    noise = np.linalg.norm((ref.astype(np.float64) - test.astype(np.float64)).ravel())
    signal = np.linalg.norm(ref.astype(np.float64).ravel())
    return 200.0 if noise == 0 else float(min(200.0, 20 * np.log10(signal / noise)))


def max_abs(ref: np.ndarray, test: np.ndarray) -> float:
    return float(np.max(np.abs(ref.astype(np.float64) - test.astype(np.float64))))


def to_labels(logits: np.ndarray) -> np.ndarray:
    """(N, K) -> (N,) class ids; (N, K, H, W) -> (N, H, W) label maps. The one post-processing step."""
    return np.argmax(logits, axis=1)


def agreement(ref_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Top-1 agreement (classification) or pixel agreement (segmentation)."""
    return float(np.mean(ref_labels == test_labels))


def miou(ref_labels: np.ndarray, test_labels: np.ndarray, num_classes: int) -> float:
    """mIoU of ``test`` taking ``ref`` as ground truth: total intersection / total union per class over all
    images (not a mean of per-image IoUs), averaged over classes present in either."""
    ref, test = ref_labels.ravel().astype(np.int64), test_labels.ravel().astype(np.int64)
    confusion = np.bincount(ref * num_classes + test, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return float(np.mean(inter[present] / union[present])) if present.any() else 1.0


def routing_agreement(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    """Mean over blocks and query regions of |topk_ref ∩ topk_test| / k (set overlap, order ignored)."""
    if not ref:
        return float("nan")
    if len(ref) != len(test):
        raise ValueError(f"routing outputs differ in count: {len(ref)} vs {len(test)}")
    scores = []
    for r, t in zip(ref, test):
        k = r.shape[-1]
        r2, t2 = r.reshape(-1, k), t.reshape(-1, k)
        overlap = (r2[:, :, None] == t2[:, None, :]).any(-1).sum(-1) / k
        scores.append(overlap)
    return float(np.mean(np.concatenate(scores)))


def flicker_rate(label_maps: np.ndarray) -> float:
    """Fraction of pixels whose label changes between consecutive frames, averaged over the clip. (T, H, W)."""
    if len(label_maps) < 2:
        return 0.0
    return float(np.mean(label_maps[1:] != label_maps[:-1]))


def compare(ref_logits, ref_routing, test_logits, test_routing, task: str, num_classes: int | None = None) -> dict:
    """All metrics of one backend against the reference, as plain floats."""
    out = {"cosine": cosine(ref_logits, test_logits), "sqnr_db": sqnr_db(ref_logits, test_logits),
           "max_abs": max_abs(ref_logits, test_logits)}
    ref_l, test_l = to_labels(ref_logits), to_labels(test_logits)
    if task == "segmentation":
        out["pixel"] = agreement(ref_l, test_l)
        out["miou"] = miou(ref_l, test_l, num_classes or int(ref_logits.shape[1]))
    else:
        out["top1"] = agreement(ref_l, test_l)
    if ref_routing:
        out["routing"] = routing_agreement(ref_routing, test_routing)
    return out


# metric -> True when higher is better; thresholds are minimums for those, maximums otherwise
HIGHER_IS_BETTER = {"cosine": True, "sqnr_db": True, "top1": True, "pixel": True, "miou": True, "routing": True,
                    "max_abs": False, "flicker_delta": False}


def failures(metrics: dict, thresholds: dict) -> list[str]:
    bad = []
    for name, limit in thresholds.items():
        if name not in metrics or metrics[name] != metrics[name]:  # absent or NaN: not applicable
            continue
        ok = metrics[name] >= limit if HIGHER_IS_BETTER.get(name, True) else metrics[name] <= limit
        if not ok:
            op = ">=" if HIGHER_IS_BETTER.get(name, True) else "<="
            bad.append(f"{name} {metrics[name]:.6g} (needs {op} {limit})")
    return bad
