"""Drift metrics: cosine, SQNR, max abs error, label agreement, mIoU, routing agreement (tie-aware), flicker.

Inputs are numpy arrays; labels come from one post-processing for every backend (argmax over classes). Parity reports
them for artifacts; QAR's keep-float search and QAT score routing with the same functions."""
from __future__ import annotations

import numpy as np

from .errors import UserError


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """20 log10(|ref| / |ref - test|); capped at 200 dB for identical outputs so JSON stays finite."""
    noise = np.linalg.norm((ref.astype(np.float64) - test.astype(np.float64)).ravel())
    signal = np.linalg.norm(ref.astype(np.float64).ravel())
    if not (np.isfinite(noise) and np.isfinite(signal)):
        return float("nan")
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


TIE_ULPS = 4  # affinities within this many float32 ulps of the row's magnitude count as exactly tied


def routing_overlap(ref: np.ndarray, test: np.ndarray, affinity: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Per query region of one block: the number of test choices that agree with the reference, and how many of
    those agree only as a tie (choices among regions whose reference affinities are exactly tied).

    ``ref``/``test``: (..., k) region indices; ``affinity``: the reference's (..., R) affinities. A test choice outside
    the reference top-k counts as agreement when its reference affinity equals the k-th reference affinity to float
    resolution and a reference choice of that same tied value is missing from the test set (the runtime broke the
    tie the other way); any other difference is a flip.
    """
    k = ref.shape[-1]
    r2, t2 = ref.reshape(-1, k), test.reshape(-1, k)
    in_ref = (t2[:, :, None] == r2[:, None, :]).any(-1)           # (Q, k) test choice also chosen by ref
    strict = in_ref.sum(-1)
    if affinity is None:
        return strict, 0
    a = affinity.reshape(r2.shape[0], -1).astype(np.float32)
    kth = np.take_along_axis(a, r2, -1).min(-1, keepdims=True)     # (Q, 1) the k-th reference affinity
    tol = TIE_ULPS * np.spacing(np.abs(a).max(-1, keepdims=True))  # float32 resolution at the row's scale
    tied = np.abs(a - kth) <= tol                                  # (Q, R) regions tied with the k-th choice
    extra_tied = (~in_ref & np.take_along_axis(tied, t2, -1)).sum(-1)
    in_test = (r2[:, :, None] == t2[:, None, :]).any(-1)
    missing_tied = (~in_test & np.take_along_axis(tied, r2, -1)).sum(-1)
    ties = np.minimum(extra_tied, missing_tied)
    return strict + ties, int(ties.sum())


DECISIVE_MARGIN = 0.05  # a route is decisive when its FP32 margin is >= 5 % of the query's affinity spread


def route_margins(ref: np.ndarray, affinity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query region of one block, from the FP32 affinities: the relative margin (k-th minus (k+1)-th affinity
    over the query's spread max - min), the spread, and the affinity mass of the FP32 top-k. (Q,) arrays."""
    k = ref.shape[-1]
    r2 = ref.reshape(-1, k)
    a = affinity.reshape(r2.shape[0], -1).astype(np.float64)
    ordered = -np.sort(-a, axis=-1)
    spread = ordered[:, 0] - ordered[:, -1]
    nxt = ordered[:, k] if a.shape[1] > k else ordered[:, k - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        margin = np.where(spread > 0, (ordered[:, k - 1] - nxt) / spread, 0.0)
    return margin, spread, np.take_along_axis(a, r2, -1).sum(-1)


def routing_agreement(ref: list[np.ndarray], test: list[np.ndarray],
                      affinity: list[np.ndarray] | None = None) -> dict[str, float]:
    """Over blocks and query regions: ``routing`` = mean |topk_ref ∩ topk_test| / k counting choices among exactly
    tied reference affinities as agreement (strict when no affinities are given), ``routing_strict`` = the same
    without that allowance, ``routing_ties`` = how many choices agreed only as a tie (reported, never hidden),
    ``routing_per_block`` = the tie-aware agreement of each BRA block (a list, in block order).

    With the FP32 affinities also: ``routing_decisive`` = agreement on decisive routes (FP32 margin >= 5 % of the
    query's affinity spread: the flips that change what a query attends to), ``routing_decisive_share`` = the share
    of routes that are decisive, and ``routing_regret`` = mean over query regions of (FP32 affinity mass of the FP32
    top-k minus that of the deployed top-k) / (k x spread): 0 when only near-ties swap, large when a strong region
    is lost."""
    if not ref:
        return {}
    if len(ref) != len(test):
        raise ValueError(f"routing outputs differ in count: {len(ref)} vs {len(test)}")
    affinity = affinity or [None] * len(ref)
    agree, strict, ties, total, per_block = 0, 0, 0, 0, []
    decisive_agree, decisive_total, regret, queries = 0, 0, 0.0, 0
    for r, t, a in zip(ref, test, affinity):
        k = r.shape[-1]
        tie_aware, n_ties = routing_overlap(r, t, a)
        agree += int(tie_aware.sum())
        strict += int(tie_aware.sum()) - n_ties
        ties += n_ties
        total += tie_aware.size * k
        per_block.append(float(tie_aware.sum()) / (tie_aware.size * k))
        if a is not None:
            margin, spread, mass = route_margins(r, a)
            decisive = margin >= DECISIVE_MARGIN
            decisive_agree += int(tie_aware[decisive].sum())
            decisive_total += int(decisive.sum()) * k
            a2 = a.reshape(margin.shape[0], -1).astype(np.float64)
            deployed = np.take_along_axis(a2, t.reshape(-1, k), -1).sum(-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                regret += float(np.where(spread > 0, np.maximum(mass - deployed, 0) / (k * spread), 0.0).sum())
            queries += margin.shape[0]
    out = {"routing": agree / total, "routing_strict": strict / total, "routing_ties": float(ties),
           "routing_per_block": per_block}
    if queries:
        out["routing_decisive"] = decisive_agree / decisive_total if decisive_total else 1.0
        out["routing_decisive_share"] = decisive_total / total
        out["routing_regret"] = regret / queries
    return out


def runs_agreement(refs: list, outs: list) -> dict[str, float]:
    """:func:`routing_agreement` over several runs at once (reference runs with ``affinity``, deployed runs; each
    with one array per block), concatenated along the batch."""
    blocks = range(len(refs[0].routing))
    return routing_agreement([np.concatenate([r.routing[b] for r in refs]) for b in blocks],
                             [np.concatenate([o.routing[b] for o in outs]) for b in blocks],
                             [np.concatenate([r.affinity[b] for r in refs]) for b in blocks])


def flicker_rate(label_maps: np.ndarray) -> float:
    """Fraction of pixels whose label changes between consecutive frames, averaged over the clip. (T, H, W)."""
    if len(label_maps) < 2:
        return 0.0
    return float(np.mean(label_maps[1:] != label_maps[:-1]))


def compare(ref_logits, ref_routing, test_logits, test_routing, task: str, num_classes: int | None = None,
            ref_affinity: list[np.ndarray] | None = None) -> dict:
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
        out.update(routing_agreement(ref_routing, test_routing, ref_affinity))
    return out


# metric -> True when higher is better; thresholds are minimums for those, maximums otherwise
HIGHER_IS_BETTER = {"cosine": True, "sqnr_db": True, "top1": True, "pixel": True, "miou": True, "routing": True,
                    "routing_strict": True, "routing_decisive": True, "routing_regret": False, "max_abs": False,
                    "flicker_delta": False}


def check_thresholds(thresholds: dict) -> None:
    """A misspelt threshold (``pixle=0.999``) would silently check nothing, and a non-number cannot be compared:
    refuse both, naming what is valid."""
    unknown = sorted(set(thresholds) - set(HIGHER_IS_BETTER))
    if unknown:
        raise UserError(f"unknown parity threshold '{unknown[0]}': choose from {', '.join(sorted(HIGHER_IS_BETTER))}")
    for name, limit in thresholds.items():
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit != limit:
            raise UserError(f"parity threshold {name}={limit!r} is not a number: pass e.g. {name}=0.99")


def failures(metrics: dict, thresholds: dict) -> list[str]:
    """The thresholds ``metrics`` misses, as readable lines. A metric the backend does not produce (top-1 of a
    segmentation model) is not applicable; a NaN is a failure (NaN outputs must never pass)."""
    check_thresholds(thresholds)
    bad = []
    for name, limit in thresholds.items():
        if name not in metrics:
            continue
        value = metrics[name]
        op = ">=" if HIGHER_IS_BETTER.get(name, True) else "<="
        ok = value == value and (value >= limit if HIGHER_IS_BETTER.get(name, True) else value <= limit)
        if not ok:
            bad.append(f"{name} {value:.6g} (needs {op} {limit})")
    return bad
