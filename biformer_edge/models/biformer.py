"""BiFormer-T/S/B (Zhu et al., CVPR 2023), the released legacy architecture, with export-clean BRA.

Module and parameter names are the official ones, so ``biformer_{tiny,small,base}_best.pth`` load strictly.
Shapes: the network is NCHW between blocks and NHWC inside a block, as upstream.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .bra import AttentionLePE, BiLevelRoutingAttention
from .registry import register_model

MIN_INPUT_SIZE = 32  # four stride-2 stages need at least a 2x2 map at stage 4 to be meaningful

_STAGE = re.compile(r"(?:backbone\.)?stages\.(\d+)\.(\d+)\.(\w+)")
_DOWN = re.compile(r"(?:backbone\.)?downsample_layers\.(\d+)\.")


def quant_group(name: str) -> tuple[str, int] | None:
    """The group QAR's keep-float search treats a module of a BiFormer (or its segmentor's backbone) as one unit, and
    the backbone stage it feeds: ``stem`` (stage 0), ``downN`` (stage N), or one part of a block ``sN.M.pos`` /
    ``.norm`` / ``.qkv`` / ``.attn_out`` / ``.mlp`` (stage N); None for what follows every stage (neck, head)."""
    m = _DOWN.match(name)
    if m:
        stage = int(m.group(1))
        return ("stem" if stage == 0 else f"down{stage}"), stage
    m = _STAGE.match(name)
    if not m:
        return None
    stage, block, part = int(m.group(1)), f"s{m.group(1)}.{m.group(2)}", m.group(3)
    if part == "pos_embed":
        return f"{block}.pos", stage
    if part.startswith("norm"):
        return f"{block}.norm", stage
    if part == "mlp":
        return f"{block}.mlp", stage
    return (f"{block}.qkv" if ".attn.qkv" in name else f"{block}.attn_out"), stage


CLASSIFIER = dict(task="classification", classifier="head", min_input_size=MIN_INPUT_SIZE, quant_group=quant_group)


@dataclass(frozen=True)
class BiFormerConfig:
    depth: tuple[int, ...] = (2, 2, 8, 2)
    embed_dim: tuple[int, ...] = (64, 128, 256, 512)
    head_dim: int = 32
    n_win: int = 7
    topks: tuple[int, ...] = (1, 4, 16, -2)   # -2: global AttentionLePE (stage 4 of every released model)
    mlp_ratio: int = 3
    side_dwconv: int = 5
    before_attn_dwconv: int = 3
    in_chans: int = 3
    num_classes: int = 1000
    drop_path_rate: float = 0.0  # training only; stochastic depth is an identity at inference
    extra: dict = field(default_factory=dict)

    def with_overrides(self, **overrides) -> "BiFormerConfig":
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return replace(self, **tuples)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """pos-embed dwconv -> NHWC -> x + attn(norm1(x)) -> x + mlp(norm2(x)) -> NCHW."""

    def __init__(self, dim: int, num_heads: int, n_win: int, topk: int, mlp_ratio: int, side_dwconv: int,
                 before_attn_dwconv: int, drop_path: float = 0.0):
        super().__init__()
        # Official: padding is hard-coded to 1 whatever the kernel size.
        self.pos_embed = nn.Conv2d(dim, dim, before_attn_dwconv, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(dim, num_heads=num_heads, n_win=n_win, qk_dim=dim, topk=topk,
                                                side_dwconv=side_dwconv)
        elif topk == -2:
            self.attn = AttentionLePE(dim, side_dwconv=side_dwconv)
        else:
            raise ValueError(f"topk {topk} is an ablation of the paper that biformer-edge does not build")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Identity(), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


def check_input(x: torch.Tensor, in_chans: int) -> None:
    """Reject bad inputs with a message a user can act on, before torch fails deep inside a layer."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a 4-D image batch (N, {in_chans}, H, W), got {shape}")
    if int(x.shape[1]) != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {int(x.shape[1])} (input shape {tuple(x.shape)})")
    H, W = int(x.shape[2]), int(x.shape[3])
    if H < MIN_INPUT_SIZE or W < MIN_INPUT_SIZE:
        raise ValueError(f"input {H}x{W} is below the minimum {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")


class BiFormerBackbone(nn.Module):
    """Stem + 3 overlapping downsamples + 4 stages; ``forward`` returns the 4 stage maps (NCHW)."""

    def __init__(self, cfg: BiFormerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        stem = nn.Sequential(
            nn.Conv2d(cfg.in_chans, d[0] // 2, 3, stride=2, padding=1), nn.BatchNorm2d(d[0] // 2), nn.GELU(),
            nn.Conv2d(d[0] // 2, d[0], 3, stride=2, padding=1), nn.BatchNorm2d(d[0]))
        self.downsample_layers = nn.ModuleList([stem] + [
            nn.Sequential(nn.Conv2d(d[i], d[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(d[i + 1]))
            for i in range(3)])
        n_blocks = sum(cfg.depth)
        rates = [cfg.drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.stages = nn.ModuleList()
        start = 0
        for i in range(4):
            self.stages.append(nn.Sequential(*[
                Block(d[i], num_heads=d[i] // cfg.head_dim, n_win=cfg.n_win, topk=cfg.topks[i],
                      mlp_ratio=cfg.mlp_ratio, side_dwconv=cfg.side_dwconv,
                      before_attn_dwconv=cfg.before_attn_dwconv, drop_path=rates[start + j])
                for j in range(cfg.depth[i])]))
            start += cfg.depth[i]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.cfg.in_chans)
        features = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            features.append(x)
        return features


class BiFormer(BiFormerBackbone):
    """Image classifier: backbone -> BatchNorm2d -> global mean -> Linear. Output (N, num_classes) logits."""

    task = "classification"

    def __init__(self, cfg: BiFormerConfig):
        super().__init__(cfg)
        self.norm = nn.BatchNorm2d(cfg.embed_dim[-1])
        self.head = nn.Linear(cfg.embed_dim[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x)[-1])
        return self.head(x.flatten(2).mean(-1))


TINY = BiFormerConfig()
SMALL = BiFormerConfig(depth=(4, 4, 18, 4))
BASE = BiFormerConfig(depth=(4, 4, 18, 4), embed_dim=(96, 192, 384, 768))

# Published parameter counts (README of rayleizhu/BiFormer), checked by the tests.
PUBLISHED_PARAMS_M = {"biformer_tiny": 13.1, "biformer_small": 25.5, "biformer_base": 56.8}


@register_model("biformer_tiny", input_size=(224, 224), **CLASSIFIER)
def biformer_tiny(**overrides) -> BiFormer:
    return BiFormer(TINY.with_overrides(**overrides))


@register_model("biformer_small", input_size=(224, 224), **CLASSIFIER)
def biformer_small(**overrides) -> BiFormer:
    return BiFormer(SMALL.with_overrides(**overrides))


@register_model("biformer_base", input_size=(224, 224), **CLASSIFIER)
def biformer_base(**overrides) -> BiFormer:
    return BiFormer(BASE.with_overrides(**overrides))
