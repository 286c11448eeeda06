"""BiFormer + Semantic FPN (Kirillov et al. 2019), with mmseg 0.30 key names.

``backbone.*`` is the official ``BiFormer_mm`` (per-stage LayerNorm2d ``extra_norms``, no head), ``neck.*`` mmseg's
``FPN`` and ``decode_head.*`` mmseg's ``FPNHead``, so an mmseg S-FPN checkpoint loads strictly. Output: class
logits at 1/4 of the input resolution, (N, num_classes, ceil(H/4), ceil(W/4)); post-processing (argmax) is the
same code for every backend (``biformer_edge.parity``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic import CLASSES
from .biformer import BASE, MIN_INPUT_SIZE, SMALL, TINY, BiFormerBackbone, BiFormerConfig, quant_group
from .registry import register_model


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's LayerNorm2d, eps 1e-6 as BiFormer_mm)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BiFormerMM(BiFormerBackbone):
    """Backbone that returns the four stage maps, each normalised (official ``BiFormer_mm``)."""

    def __init__(self, cfg: BiFormerConfig):
        super().__init__(cfg)
        self.extra_norms = nn.ModuleList(LayerNorm2d(d) for d in cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [norm(f) for norm, f in zip(self.extra_norms, super().forward(x))]


class ConvModule(nn.Module):
    """mmcv ConvModule subset: conv (bias only without norm) [-> BN ``bn`` -> ReLU]."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(cout) if norm else None
        self.act = nn.ReLU(inplace=True) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(self.bn(x)) if self.bn is not None else x


class FPN(nn.Module):
    """mmseg FPN (num_outs = number of inputs): 1x1 laterals, nearest top-down sum, 3x3 output convs."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, norm=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, norm=False) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            size = tuple(int(s) for s in laterals[i - 1].shape[2:])
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=size, mode="nearest")
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]


class FPNHead(nn.Module):
    """mmseg FPNHead: per-level conv(+2x bilinear upsample) towers to stride 4, summed, then 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, strides=(4, 8, 16, 32)):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            layers: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - math.log2(strides[0])))):
                layers.append(ConvModule(in_channels if k == 0 else channels, channels, 3, norm=True))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        size = tuple(int(s) for s in out.shape[2:])
        for head, f in zip(self.scale_heads[1:], features[1:]):
            # Odd input sizes make an upsampled tower 1 px off; mmseg resizes to the stride-4 map the same way.
            out = out + F.interpolate(head(f), size=size, mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(out))


class BiFormerSegmentor(nn.Module):
    task = "segmentation"

    def __init__(self, cfg: BiFormerConfig, neck_channels: int = 256, head_channels: int = 128):
        super().__init__()
        self.backbone = BiFormerMM(cfg)
        self.neck = FPN(cfg.embed_dim, neck_channels)
        self.decode_head = FPNHead(neck_channels, head_channels, cfg.num_classes)

    @property
    def num_classes(self) -> int:
        return self.decode_head.conv_seg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.neck(self.backbone(x)))


SEGMENTOR = dict(task="segmentation", classifier="decode_head.conv_seg", min_input_size=MIN_INPUT_SIZE,
                 quant_group=quant_group)


def _sfpn(base: BiFormerConfig, neck_channels=256, head_channels=128, **overrides) -> BiFormerSegmentor:
    # mmseg ADE20K configs: n_win 8 at 512x512 crops (regions 16/8/4 px per stage), 150 classes.
    cfg = base.with_overrides(**{"n_win": 8, "num_classes": 150, **overrides})
    return BiFormerSegmentor(cfg, neck_channels, head_channels)


@register_model("biformer_tiny_sfpn", input_size=(512, 512), **SEGMENTOR)
def biformer_tiny_sfpn(**overrides) -> BiFormerSegmentor:
    return _sfpn(TINY, **overrides)


@register_model("biformer_small_sfpn", input_size=(512, 512), **SEGMENTOR)
def biformer_small_sfpn(**overrides) -> BiFormerSegmentor:
    return _sfpn(SMALL, **overrides)


@register_model("biformer_base_sfpn", input_size=(512, 512), **SEGMENTOR)
def biformer_base_sfpn(**overrides) -> BiFormerSegmentor:
    return _sfpn(BASE, **overrides)


DEMO = BiFormerConfig(depth=(1, 1, 2, 1), embed_dim=(32, 64, 128, 256), n_win=8, num_classes=6)


@register_model("biformer_seg_demo", input_size=(128, 128), **SEGMENTOR,
                shipped_weights="biformer_seg_demo.pt", shipped_qat="biformer_seg_demo_qat.pt", class_names=CLASSES)
def biformer_seg_demo(**overrides) -> BiFormerSegmentor:
    """Small BiFormer-SFPN trained on biformer_edge.data's synthetic scenes (``python -m biformer_edge.train_demo``)."""
    return BiFormerSegmentor(DEMO.with_overrides(**overrides), neck_channels=64, head_channels=64)
