"""The routing margin term (routing-robust training): a hinge on each query's k-th vs (k+1)-th region gap."""
from __future__ import annotations

import pytest
import torch

from biformer_edge.models import create_model
from biformer_edge.models.bra import BiLevelRoutingAttention
from biformer_edge.models.routing_margin import RoutingMargin, margin_hinge


def relative_gap(model, x) -> float:
    with RoutingMargin(model) as routing, torch.no_grad():
        model(x)
        gaps = []
        for b in routing.blocks:
            top = b.router.last_affinity.topk(b.topk + 1, -1).values
            spread = top[..., 0] - b.router.last_affinity.amin(-1)
            gaps.append(((top[..., b.topk - 1] - top[..., b.topk]) / spread).mean())
    return float(torch.stack(gaps).mean())


def test_hinge_is_zero_for_decisive_rows_and_positive_for_ties():
    decisive = torch.tensor([[[10.0, 9.0, 1.0, 0.0]]])        # k=2: gap 8 of spread 10
    tied = torch.tensor([[[10.0, 5.0, 5.0, 0.0]]])
    assert margin_hinge(decisive, 2, 0.05) == 0
    assert torch.isclose(margin_hinge(tied, 2, 0.05), torch.tensor(0.05))
    assert torch.isclose(margin_hinge(3 * tied, 2, 0.05), margin_hinge(tied, 2, 0.05))   # scale-free


def test_term_reaches_the_projections_and_leaves_the_model_as_it_was():
    model = create_model("biformer_seg_demo").train()
    x = torch.randn(2, 3, 64, 64)
    with RoutingMargin(model, 0.05) as routing:
        model(x)
        routing.loss().backward()
    qkv = [m.qkv.qkv.weight.grad for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert all(g is not None and g.abs().sum() > 0 for g in qkv)
    assert all(not b.routing_gradients and not b.router.record and b.router.last_affinity is None
               for b in routing.blocks)


def test_a_few_steps_make_routing_more_decisive():
    torch.manual_seed(0)
    model = create_model("biformer_seg_demo").train()
    x = torch.randn(4, 3, 64, 64)
    before = relative_gap(model, x)
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if "attn.qkv" in n], lr=0.5)
    for _ in range(10):
        with RoutingMargin(model, 0.05) as routing:
            model(x)
            loss = routing.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert relative_gap(model, x) > before


def test_train_demo_refuses_a_bad_margin_in_one_line_before_writing(tmp_path, capsys):
    from biformer_edge.train_demo import main
    for args in (["--margin", "0"], ["--margin", "1"], ["--margin", "nan"], ["--routing-margin", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main([*args, "--stage", "base", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "w.pt"),
                  "--steps", "1"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and f"{args[0]} must be" in err, err
    assert not list(tmp_path.iterdir())
