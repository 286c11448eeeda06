"""Unit tests of the drift metrics (biformer_edge.metrics) on hand-made arrays."""
import numpy as np
import pytest

from biformer_edge import metrics
from biformer_edge.errors import UserError


def test_cosine_sqnr_max_abs():
    a = np.array([1.0, 2.0, 3.0], np.float32)
    assert metrics.cosine(a, a) == pytest.approx(1.0) and metrics.sqnr_db(a, a) == 200.0
    assert metrics.cosine(a, -a) == pytest.approx(-1.0)
    assert metrics.sqnr_db(a, a * 1.1) == pytest.approx(20.0, abs=1e-4)   # noise is 10 % of the signal
    assert metrics.max_abs(a, a + [0, 0.5, 0]) == pytest.approx(0.5)
    assert metrics.cosine(np.zeros(3), np.zeros(3)) == 1.0 and metrics.cosine(np.zeros(3), a) == 0.0


def test_labels_agreement_and_miou():
    ref = np.array([[0, 0], [1, 2]])
    test = np.array([[0, 1], [1, 2]])
    assert metrics.agreement(ref, test) == 0.75
    # class 0: 1/2, class 1: 1/2, class 2: 1/1
    assert metrics.miou(ref, test, 3) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    logits = np.zeros((1, 3, 2, 2))
    logits[0, 2] = 1
    assert (metrics.to_labels(logits) == 2).all()


def test_flicker_rate():
    maps = np.array([[[0, 0]], [[0, 1]], [[0, 1]]])
    assert metrics.flicker_rate(maps) == pytest.approx(0.25) and metrics.flicker_rate(maps[:1]) == 0.0


def test_routing_strict_overlap_ignores_order():
    ref = [np.array([[[0, 1], [2, 3]]])]           # (N=1, R=2, k=2)
    test = [np.array([[[1, 0], [2, 0]]])]
    out = metrics.routing_agreement(ref, test)
    assert out == {"routing": 0.75, "routing_strict": 0.75, "routing_ties": 0.0, "routing_per_block": [0.75]}


def test_a_choice_among_exactly_tied_regions_is_agreement_and_reported():
    affinity = np.array([[[5.0, 3.0, 3.0, 1.0]]], np.float32)   # regions 1 and 2 exactly tied at the k-th place
    ref = [np.array([[[0, 1]]])]
    tie_break = [np.array([[[0, 2]]])]
    out = metrics.routing_agreement(ref, tie_break, [affinity])
    assert {k: out[k] for k in ("routing", "routing_strict", "routing_ties", "routing_per_block")} == {
        "routing": 1.0, "routing_strict": 0.5, "routing_ties": 1.0, "routing_per_block": [1.0]}
    assert out["routing_regret"] == 0.0   # a tie costs no affinity


def test_a_real_flip_stays_a_flip_even_with_affinities():
    affinity = np.array([[[5.0, 3.0, 2.9, 1.0]]], np.float32)   # 3.0 vs 2.9: a real (small) margin
    out = metrics.routing_agreement([np.array([[[0, 1]]])], [np.array([[[0, 2]]])], [affinity])
    assert out["routing"] == 0.5 and out["routing_ties"] == 0.0
    # a tied region may not stand in for a *different*, untied reference choice
    affinity = np.array([[[5.0, 3.0, 1.0, 1.0]]], np.float32)
    out = metrics.routing_agreement([np.array([[[0, 1]]])], [np.array([[[2, 3]]])], [affinity])
    assert out["routing"] == 0.0


def test_ties_are_judged_at_float32_resolution():
    kth = np.float32(3.0)
    near = np.nextafter(kth, np.float32(0))                     # one ulp below: tied
    far = np.float32(3.0) - np.float32(1e-4)                   # a measurable margin: not tied
    for other, tied in ((near, True), (far, False)):
        affinity = np.array([[[5.0, kth, other]]], np.float32)
        out = metrics.routing_agreement([np.array([[[0, 1]]])], [np.array([[[0, 2]]])], [affinity])
        assert (out["routing"] == 1.0) is tied


def test_failures_and_threshold_names():
    m = {"cosine": 0.99, "max_abs": 0.2, "pixel": 0.95}
    assert metrics.failures(m, {"cosine": 0.999, "max_abs": 0.1, "pixel": 0.9, "top1": 1.0}) == [
        "cosine 0.99 (needs >= 0.999)", "max_abs 0.2 (needs <= 0.1)"]   # top1: not produced, not applicable
    assert metrics.failures(m, {"cosine": 0.9}) == []
    with pytest.raises(UserError, match="unknown parity threshold 'pixle'.*pixel"):
        metrics.failures(m, {"pixle": 0.999})
    with pytest.raises(UserError, match="pixel='high' is not a number"):
        metrics.failures(m, {"pixel": "high"})


def test_nan_outputs_never_pass():
    nan = np.full(4, np.nan, np.float32)
    ref = np.ones(4, np.float32)
    m = {"cosine": metrics.cosine(ref, nan), "sqnr_db": metrics.sqnr_db(ref, nan), "max_abs": metrics.max_abs(ref, nan)}
    assert all(v != v for v in m.values())   # NaN in, NaN out: no metric pretends to be perfect
    assert len(metrics.failures(m, {"cosine": 0.99, "sqnr_db": 30, "max_abs": 1.0})) == 3


def test_compare_segmentation_and_classification():
    rng = np.random.default_rng(0)
    seg = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    out = metrics.compare(seg, [], seg, [], "segmentation", 3)
    assert out["pixel"] == 1.0 and out["miou"] == 1.0 and "routing" not in out
    cls = rng.standard_normal((4, 10)).astype(np.float32)
    out = metrics.compare(cls, [], cls * -1, [], "classification")
    assert out["cosine"] == pytest.approx(-1.0) and out["top1"] < 1.0


def test_decisive_agreement_and_regret():
    # query 0: a decisive route (5 vs 1 at the k/k+1 boundary); query 1: a near-tie (3.00 vs 2.99)
    affinity = np.array([[[9.0, 5.0, 1.0, 0.0], [9.0, 3.0, 2.99, 0.0]]], np.float32)
    ref = [np.array([[[0, 1], [0, 1]]])]
    near_tie_swap = [np.array([[[0, 1], [0, 2]]])]
    out = metrics.routing_agreement(ref, near_tie_swap, [affinity])
    assert out["routing_decisive"] == 1.0 and out["routing_decisive_share"] == 0.5
    assert out["routing_regret"] == pytest.approx((3.0 - 2.99) / (2 * 9.0) / 2, rel=1e-4)
    decisive_flip = [np.array([[[0, 2], [0, 1]]])]
    out = metrics.routing_agreement(ref, decisive_flip, [affinity])
    assert out["routing_decisive"] == 0.5 and out["routing_regret"] == pytest.approx((5 - 1) / 18 / 2, rel=1e-6)
    assert metrics.failures(out, {"routing_regret": 0.01}) == [f"routing_regret {out['routing_regret']:.6g} "
                                                                "(needs <= 0.01)"]
