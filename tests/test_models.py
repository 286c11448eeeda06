"""Models: the export-clean BRA equals the official formulation; published sizes; strict checkpoints; bad input."""
import copy

import pytest
import torch

import biformer_edge as be
from biformer_edge.models.biformer import PUBLISHED_PARAMS_M
from biformer_edge.models.bra import BiLevelRoutingAttention, RegionRouter
from tests.official_bra import use_official_bra


@pytest.mark.parametrize("H,W,n_win,topk,dim,heads,batch", [
    (56, 56, 7, 1, 64, 2, 1),     # BiFormer-T stage 1 at 224
    (28, 28, 7, 4, 128, 4, 2),    # stage 2, batch 2 (flat index offsets per image)
    (14, 14, 7, 16, 256, 8, 1),   # stage 3
    (32, 32, 8, 16, 64, 2, 1),    # segmentation geometry
    (30, 45, 8, 4, 64, 2, 2),     # not divisible: auto-pad path
    (9, 20, 4, 3, 32, 1, 1),      # odd sizes, small grid
])
def test_bra_equals_official_formulation(H, W, n_win, topk, dim, heads, batch):
    torch.manual_seed(0)
    ours = BiLevelRoutingAttention(dim, heads, n_win, topk=topk).eval()
    with torch.no_grad():  # non-zero biases so padded tokens matter as in the official auto-pad
        for p in ours.parameters():
            p.normal_(0, 0.2)
    official = use_official_bra(copy.deepcopy(ours))
    x = torch.randn(batch, H, W, dim)
    ours.record_routing = official.record_routing = True
    with torch.no_grad():
        a, b = ours(x), official(x)
    assert a.shape == (batch, H, W, dim)
    assert (a - b).abs().max().item() <= 1e-5
    assert torch.equal(ours.last_routing, official.last_routing)


def test_whole_model_equals_official_formulation():
    model = be.create_model("biformer_seg_demo", pretrained=False)
    official = use_official_bra(copy.deepcopy(model))
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        assert (model(x) - official(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts_match_published(name):
    with torch.device("meta"):
        model = be.models.get_spec(name).factory()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(params, 1) == PUBLISHED_PARAMS_M[name]


def test_official_quirks():
    m = be.create_model("biformer_tiny", pretrained=False)
    bra = m.stages[0][0].attn
    assert bra.scale == pytest.approx(64 ** -0.5)            # full qk dim, not head dim 32
    assert [b.attn.topk for b in (m.stages[0][0], m.stages[1][0], m.stages[2][0])] == [1, 4, 16]
    last = m.stages[3][0].attn
    assert type(last).__name__ == "AttentionLePE" and last.num_heads == 8 and last.qkv.bias is None
    assert last.lepe.kernel_size == (5, 5)
    assert isinstance(m.norm, torch.nn.BatchNorm2d)
    assert m.stages[0][0].mlp[0].out_features == 3 * 64
    assert m.downsample_layers[0][0].stride == (2, 2) and m.downsample_layers[0][0].kernel_size == (3, 3)


def official_key_sample():
    """Key names of the released biformer_tiny_best.pth (reference/biformer.md §7.3)."""
    return ["downsample_layers.0.0.weight", "downsample_layers.0.1.running_var", "downsample_layers.0.4.weight",
            "downsample_layers.3.1.num_batches_tracked", "stages.0.0.pos_embed.weight", "stages.0.0.norm1.weight",
            "stages.0.0.attn.qkv.qkv.weight", "stages.0.0.attn.wo.bias", "stages.0.0.attn.lepe.weight",
            "stages.2.7.mlp.0.weight", "stages.2.7.mlp.3.bias", "stages.3.1.attn.qkv.weight",
            "stages.3.1.attn.proj.weight", "stages.3.1.attn.lepe.bias", "norm.running_mean", "head.weight"]


def test_official_key_names():
    keys = set(be.create_model("biformer_tiny", pretrained=False).state_dict())
    assert set(official_key_sample()) <= keys
    assert "stages.3.1.attn.qkv.bias" not in keys


# Keys of the official legacy BRA module (rayleizhu/BiFormer ops/bra_legacy.py): QKVLinear, wo, lepe; the official
# TopkRouting (identity embedding, no parameters) and KVGather contribute none.
OFFICIAL_BRA_KEYS = {"qkv.qkv.weight", "qkv.qkv.bias", "wo.weight", "wo.bias", "lepe.weight", "lepe.bias"}


def test_region_router_has_no_parameters_or_buffers():
    router = RegionRouter(topk=4, scale=0.125)
    assert list(router.parameters()) == [] and list(router.buffers()) == [] and router.state_dict() == {}
    bra = BiLevelRoutingAttention(64, 2, 7, topk=4)
    assert isinstance(bra.router, RegionRouter)
    assert list(bra.router.parameters()) == [] and bra.router.state_dict() == {}


def test_router_adds_no_state_dict_keys():
    """attn.router is a named submodule (so exporters scope its ops) but checkpoints keep the official key set."""
    bra = BiLevelRoutingAttention(64, 2, 7, topk=4)
    assert set(bra.state_dict()) == OFFICIAL_BRA_KEYS
    model = be.create_model("biformer_tiny", pretrained=False)
    keys = set(model.state_dict())
    assert not any("router" in k for k in keys)
    assert set(official_key_sample()) <= keys
    blocks = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert len(blocks) == 2 + 2 + 8
    prefixes = {name for name, m in model.named_modules() if isinstance(m, BiLevelRoutingAttention)}
    for prefix in prefixes:
        assert {k[len(prefix) + 1:] for k in keys if k.startswith(prefix + ".")} == OFFICIAL_BRA_KEYS, prefix
    for block in blocks:   # removing the routers removes no key
        del block.router
    assert set(model.state_dict()) == keys


def test_sfpn_key_names_follow_mmseg():
    keys = set(be.create_model("biformer_small_sfpn", pretrained=False).state_dict())
    for k in ["backbone.extra_norms.3.weight", "backbone.stages.2.17.attn.qkv.qkv.weight",
              "neck.lateral_convs.0.conv.weight", "neck.fpn_convs.3.conv.bias",
              "decode_head.scale_heads.0.0.conv.weight", "decode_head.scale_heads.3.4.bn.running_var",
              "decode_head.conv_seg.weight"]:
        assert k in keys, k
    assert not any(k.startswith(("head.", "norm.")) for k in keys)


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "module_prefix"])
def test_checkpoint_containers_load_strictly(tmp_path, wrap):
    src = be.create_model("biformer_seg_demo", pretrained=False)
    state = src.state_dict()
    obj = {"bare": state, "model": {"model": state, "epoch": 3}, "state_dict": {"state_dict": state},
           "module_prefix": {"model": {f"module.{k}": v for k, v in state.items()}}}[wrap]
    torch.save(obj, tmp_path / "ckpt.pth")
    dst = be.create_model("biformer_seg_demo", checkpoint=tmp_path / "ckpt.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst(x))


def test_checkpoint_of_other_size_is_rejected_with_key_names(tmp_path):
    torch.save({"model": be.create_model("biformer_tiny", pretrained=False).state_dict()}, tmp_path / "t.pth")
    with pytest.raises(be.UserError, match=r"does not match biformer_small: \d+ missing keys \(stages\.0\.2"):
        be.create_model("biformer_small", checkpoint=tmp_path / "t.pth")


def test_checkpoint_of_other_task_is_rejected(tmp_path):
    torch.save({"model": be.create_model("biformer_tiny", pretrained=False).state_dict()}, tmp_path / "t.pth")
    with pytest.raises(be.UserError, match="classification checkpoint"):
        be.create_model("biformer_tiny_sfpn", checkpoint=tmp_path / "t.pth")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint(tmp_path, content):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(be.UserError, match="not a readable PyTorch file"):
        be.create_model("biformer_tiny", checkpoint=tmp_path / "bad.pth")


def test_missing_checkpoint_and_unknown_model(tmp_path):
    with pytest.raises(be.UserError, match="does not exist"):
        be.create_model("biformer_tiny", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(be.UserError, match="did you mean 'biformer_tiny'"):
        be.create_model("biformer_tiyn")


@pytest.mark.parametrize("shape,match", [
    ((1, 1, 224, 224), "expected 3 input channels, got 1"),
    ((3, 224, 224), "expected a 4-D image batch"),
    ((1, 3, 16, 224), "below the minimum"),
])
def test_bad_input_is_named(shape, match):
    model = be.create_model("biformer_seg_demo", pretrained=False)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


@pytest.mark.parametrize("size", [(224, 224), (200, 312), (33, 47)])
def test_segmentation_any_size(size):
    model = be.create_model("biformer_seg_demo", pretrained=False)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 6, -(-size[0] // 4), -(-size[1] // 4))
