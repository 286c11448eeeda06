"""Export-clean Bi-Level Routing Attention (BRA) and BiFormer's stage-4 global attention.

Same function and parameter names as the official legacy BRA (rayleizhu/BiFormer ``ops/bra_legacy.py``), so the
released checkpoints load unchanged, but written for exporters:

* every shape is a Python int, so traced graphs hold constants, not Shape/Gather/Div chains;
* no tensor has rank > 5 (Core ML's limit): region partition goes through a rank-5 permute, never rank 6;
* no einsum, no einops;
* TopK with a constant k (sorted, as TensorRT requires);
* the key/value gathers are flat-index ``index_select``s of (region, head) rows (ONNX ``Gather`` on axis 0), instead
  of the official expand + ``torch.gather`` which ONNX materialises as a k-fold ``Expand`` + ``GatherElements``.

The layout is lean: heads are laid out (region, head, token, channel) once, on the projection's output, *before* the
key/value gather, and the gather selects (region, head) rows with an index ordered (N, R, m, k), so the k-fold larger
gathered keys/values are never permuted or sliced: they reshape straight into the attention matmuls' (N*R, m, k*T, c)
operands. The stage-4 attention splits q, k, v on the head axis instead of a rank-5 permute. (The formulation before
it, which gathered whole regions of kv and then sliced and permuted the gathered keys and values per head, is kept
in tests/legacy_bra.py for the tests and benchmarks/layout_lean.py, which measures one against the other.)

Shapes in comments: N batch, S regions per side (``n_win``), R = S*S regions, h x w tokens per region
(T = h*w), k = topk, C = dim, Cq = qk_dim, Ckv = Cq + C, m heads, c a head's channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QKVLinear(nn.Module):
    """Holds the one Linear producing q | k | v, only to keep the official key ``attn.qkv.qkv.*``; BRA calls
    ``.qkv`` directly so that the projection output is partitioned into regions once."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True):
        super().__init__()
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=bias)


def partition_regions(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """(N, S*h, S*w, C) -> (N*R, h*w, C), regions in row-major order (j, i) as the official rearrange."""
    N, H, W, C = (int(s) for s in x.shape)
    h, w = H // n_win, W // n_win
    x = x.reshape(N * n_win, h, n_win, w * C)          # rows split into (S, h); cols kept flat
    x = x.permute(0, 2, 1, 3)                          # (N*S, S, h, w*C)
    return x.reshape(N * n_win * n_win, h * w, C)


def merge_regions(x: torch.Tensor, batch: int, n_win: int, h: int, w: int) -> torch.Tensor:
    """(N*R, h*w, C) -> (N, S*h, S*w, C): inverse of :func:`partition_regions`."""
    C = int(x.shape[-1])
    x = x.reshape(batch * n_win, n_win, h, w * C)
    x = x.permute(0, 2, 1, 3)                          # (N*S, h, S, w*C)
    return x.reshape(batch, n_win * h, n_win * w, C)


class RegionRouter(nn.Module):
    """The router of BRA, parameter-free and named (``attn.router``) so that every exporter names its ops
    ``.../router/...``: region pooling of q and k, the region affinity, and TopK. This is the router precision island
    of quantization-aware routing (QAR): it runs in FP32 in every export (FP16 ones too) and INT8 exports put no
    Q/DQ on any path into it; tools exclude it by that name (ModelOpt, NNCF, onnxruntime's quantizer).

    ``last_affinity`` keeps the (N, R, R) region affinities of the latest forward when ``record`` is set: the FP32
    reference stores them so parity can tell a real routing flip from a choice among exactly tied regions.
    """

    def __init__(self, topk: int, scale: float, fp32: bool = True):
        super().__init__()
        self.topk, self.scale = topk, scale
        # False only to measure what the FP32 island buys (a flipped top-k choice is a discrete error).
        self.fp32 = fp32
        # Where the affinity's inputs would be quantized. Identity (no state, no checkpoint keys) in every export;
        # INT8 with --routing naive puts quantizers here, so the cost of quantizing the router is measured.
        self.q_region_quantizer: nn.Module = nn.Identity()
        self.k_region_quantizer: nn.Module = nn.Identity()
        self.record = False
        self.last_affinity: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, batch: int, regions: int) -> torch.Tensor:
        """q, k (N*R, T, Cq) -> top-k region indices (N, R, k)."""
        if self.fp32:
            q, k = q.float(), k.float()
        Cq = int(q.shape[-1])
        q_region = self.q_region_quantizer(q.mean(1).reshape(batch, regions, Cq))   # (N, R, Cq)
        k_region = self.k_region_quantizer(k.mean(1).reshape(batch, regions, Cq))
        affinity = (q_region * self.scale) @ k_region.transpose(-2, -1)             # (N, R, R)
        if self.record:
            self.last_affinity = affinity
        return torch.topk(affinity, k=self.topk, dim=-1, sorted=True).indices


class BiLevelRoutingAttention(nn.Module):
    """BRA on NHWC maps. Pads bottom/right to multiples of ``n_win`` before the projection, as the official auto-pad.

    ``last_routing`` keeps the top-k region indices (N, R, k) of the latest forward when ``record_routing`` is set
    (and ``router.last_affinity`` the affinities); the parity tools read them to measure routing agreement.
    """

    def __init__(self, dim: int, num_heads: int = 8, n_win: int = 7, qk_dim: int | None = None,
                 qk_scale: float | None = None, topk: int = 4, side_dwconv: int = 5, auto_pad: bool = True):
        super().__init__()
        qk_dim = qk_dim or dim
        if dim % num_heads or qk_dim % num_heads:
            raise ValueError(f"dim {dim} and qk_dim {qk_dim} must be divisible by num_heads {num_heads}")
        if not 0 < topk <= n_win * n_win:
            raise ValueError(f"topk must be in 1..{n_win * n_win} for n_win={n_win}, got {topk}")
        self.dim, self.qk_dim, self.num_heads, self.n_win, self.topk = dim, qk_dim, num_heads, n_win, topk
        self.auto_pad = auto_pad
        # Official quirk: the scale uses the full qk_dim, not the head dim.
        self.scale = qk_scale or qk_dim ** -0.5
        self.qkv = QKVLinear(dim, qk_dim)
        self.wo = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.router = RegionRouter(topk, self.scale)
        # True only in QAT (biformer_edge.quant.qat): its routing loss on the affinities must reach q and k
        self.routing_gradients = False
        self.record_routing = False
        self.last_routing: torch.Tensor | None = None

    @property
    def router_fp32(self) -> bool:
        return self.router.fp32

    @router_fp32.setter
    def router_fp32(self, value: bool) -> None:
        self.router.fp32 = bool(value)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        N, H, W, C = (int(s) for s in x.shape)
        pad_b, pad_r = (-H) % self.n_win, (-W) % self.n_win
        if pad_b or pad_r:
            if not self.auto_pad:
                raise ValueError(f"feature map {H}x{W} is not divisible by n_win={self.n_win}")
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # zeros, before the projection (official legacy order)
        return x

    def gather_head_rows(self, rows: torch.Tensor, index: torch.Tensor, stride: int, offset: int) -> torch.Tensor:
        """rows (N*R*stride, T, c): the per-head rows of every region, region-major, head ``j`` of region ``r`` at
        ``r*stride + offset + j``; index (N, R, k) -> (N*R, m, k*T, c), the k selected regions' rows of each head
        in the order (region, head, selected region): the attention operand without a permute. Integer arithmetic on
        the (N, R, k) index only (exact)."""
        N, R, k = (int(s) for s in index.shape)
        m, T, c = self.num_heads, int(rows.shape[1]), int(rows.shape[2])
        if N > 1:
            index = index + (torch.arange(N, device=index.device) * R).view(N, 1, 1)
        heads = torch.arange(offset, offset + m, device=index.device).view(1, m, 1)
        flat = index.reshape(N * R, 1, k) * stride + heads                   # (N*R, m, k)
        return rows.index_select(0, flat.reshape(N * R * m * k)).reshape(N * R, m, k * T, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H, W, C = (int(s) for s in x.shape)
        x = self.pad_input(x)
        Hp, Wp = int(x.shape[1]), int(x.shape[2])
        S, m, Cq = self.n_win, self.num_heads, self.qk_dim
        h, w = Hp // S, Wp // S
        T, R = h * w, S * S
        cq, cv = Cq // m, C // m

        qkv = self.qkv.qkv(x)                                                 # (N, Hp, Wp, 2Cq + C)
        lepe = self.lepe(qkv[..., 2 * Cq:].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (N, Hp, Wp, C)
        qkv = partition_regions(qkv, S)                                       # (N*R, T, 2Cq + C)
        # The router pools q and k over each region's tokens from this token-major layout (contiguous channel
        # slices, reduced over one axis: cheaper in the runtimes than over the per-head layout, and the same sums).
        q_route, k_route = qkv[..., :Cq], qkv[..., Cq:2 * Cq]                  # (N*R, T, Cq)
        if cq == cv:   # every released model: one permute lays out q, k and v per head
            heads = qkv.reshape(N * R, T, 3 * m, cq).permute(0, 2, 1, 3)    # (N*R, 3m, T, c)
            q = heads[:, :m]                                                  # (N*R, m, T, c)
            k_rows = v_rows = heads.reshape(N * R * 3 * m, T, cq)
            stride, k_offset, v_offset = 3 * m, m, 2 * m
        else:
            q = qkv[..., :Cq].reshape(N * R, T, m, cq).permute(0, 2, 1, 3)
            k = qkv[..., Cq:2 * Cq].reshape(N * R, T, m, cq).permute(0, 2, 1, 3)
            v = qkv[..., 2 * Cq:].reshape(N * R, T, m, cv).permute(0, 2, 1, 3)
            k_rows, v_rows = k.reshape(N * R * m, T, cq), v.reshape(N * R * m, T, cv)
            stride, k_offset, v_offset = m, 0, 0

        # Routing is gradient-free in every released config (official detach()); QAT's routing term needs gradients.
        if not self.routing_gradients:
            q_route, k_route = q_route.detach(), k_route.detach()
        index = self.router(q_route, k_route, N, R)                            # (N, R, k)
        if self.record_routing:
            self.last_routing = index
        k_sel = self.gather_head_rows(k_rows, index, stride, k_offset)        # (N*R, m, kT, c)
        v_sel = self.gather_head_rows(v_rows, index, stride, v_offset)        # (N*R, m, kT, c)
        # k transposed inside the matmul: runtimes fuse it (onnxruntime FusedMatMul transB) instead of copying k
        attn = torch.softmax((q * self.scale) @ k_sel.transpose(-2, -1), dim=-1)          # (N*R, m, T, kT)
        out = (attn @ v_sel).permute(0, 2, 1, 3).reshape(N * R, T, C)                     # (N*R, T, C)
        out = merge_regions(out, N, S, h, w) + lepe                                       # (N, Hp, Wp, C)
        out = self.wo(out)
        if Hp != H or Wp != W:
            out = out[:, :H, :W, :]
        return out


class AttentionLePE(nn.Module):
    """Stage-4 global attention of the released models: 8 heads whatever the width, no qkv bias, head-dim scale,
    LePE (depthwise 5x5) on the attention *input* x (official ``_common.AttentionLePE``). NHWC in/out."""

    def __init__(self, dim: int, num_heads: int = 8, side_dwconv: int = 5):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H, W, C = (int(s) for s in x.shape)
        L, m = H * W, self.num_heads
        lepe = self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(N, L, C)
        # heads of q, k and v side by side: one rank-4 permute, then a Split on the head axis
        qkv = self.qkv(x.reshape(N, L, C)).reshape(N, L, 3 * m, C // m).permute(0, 2, 1, 3)   # (N, 3m, L, c)
        q, k, v = qkv.split(m, dim=1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)                 # (N, m, L, L)
        out = (attn @ v).transpose(1, 2).reshape(N, L, C) + lepe
        return self.proj(out).reshape(N, H, W, C)
