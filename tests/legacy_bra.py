"""biformer-edge's own previous BRA and stage-4 attention formulation (before the layout-lean one of
``biformer_edge.models.bra``; not the official ``bra_legacy`` of tests/official_bra.py): same function and
parameters, but it gathers whole regions of the (N*R, T, Cq + C) keys/values and then slices and permutes the k-fold
larger gathered tensor per head, and the stage-4 attention goes through a rank-5 (3, N, m, L, c) permute.

Kept as the baseline the lean formulation is tested and measured against (tests/test_lean_formulation.py,
benchmarks/layout_lean.py).
"""
from __future__ import annotations

import torch

from biformer_edge.models.bra import AttentionLePE, BiLevelRoutingAttention, merge_regions, partition_regions


class LegacyBRA(BiLevelRoutingAttention):
    def gather_regions(self, kv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """kv (N*R, T, Ckv), index (N, R, k) -> (N*R, k*T, Ckv) by one flat-index gather of whole regions."""
        N, R, k = (int(s) for s in index.shape)
        T, Ckv = int(kv.shape[1]), int(kv.shape[2])
        if N > 1:
            index = index + (torch.arange(N, device=index.device) * R).view(N, 1, 1)
        rows = kv.index_select(0, index.reshape(N * R * k))                  # (N*R*k, T, Ckv)
        return rows.reshape(N * R, k * T, Ckv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H, W, C = (int(s) for s in x.shape)
        x = self.pad_input(x)
        Hp, Wp = int(x.shape[1]), int(x.shape[2])
        S, m, Cq = self.n_win, self.num_heads, self.qk_dim
        h, w = Hp // S, Wp // S
        T, R = h * w, S * S

        qkv = self.qkv.qkv(x)                                                 # (N, Hp, Wp, 2Cq + C)
        lepe = self.lepe(qkv[..., 2 * Cq:].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (N, Hp, Wp, C)
        qkv = partition_regions(qkv, S)                    # one partition for q, k and v: (N*R, T, 2Cq + C)
        q, kv = qkv[..., :Cq], qkv[..., Cq:]                                  # (N*R, T, Cq), (N*R, T, Ckv)

        q_route, k_route = (q, kv[..., :Cq]) if self.routing_gradients else (q.detach(), kv[..., :Cq].detach())
        index = self.router(q_route, k_route, N, R)                            # (N, R, k)
        if self.record_routing:
            self.last_routing = index
        kv_sel = self.gather_regions(kv, index)                               # (N*R, k*T, Ckv)

        kT = self.topk * T
        k_sel = kv_sel[..., :Cq].reshape(N * R, kT, m, Cq // m).permute(0, 2, 1, 3)       # (N*R, m, kT, c)
        v_sel = kv_sel[..., Cq:].reshape(N * R, kT, m, C // m).permute(0, 2, 1, 3)        # (N*R, m, kT, c)
        q = q.reshape(N * R, T, m, Cq // m).permute(0, 2, 1, 3)                           # (N*R, m, T, c)
        attn = torch.softmax((q * self.scale) @ k_sel.transpose(-2, -1), dim=-1)          # (N*R, m, T, kT)
        out = (attn @ v_sel).permute(0, 2, 1, 3).reshape(N * R, T, C)                     # (N*R, T, C)
        out = merge_regions(out, N, S, h, w) + lepe                                       # (N, Hp, Wp, C)
        out = self.wo(out)
        if Hp != H or Wp != W:
            out = out[:, :H, :W, :]
        return out


class LegacyAttentionLePE(AttentionLePE):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H, W, C = (int(s) for s in x.shape)
        L, m = H * W, self.num_heads
        lepe = self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(N, L, C)
        qkv = self.qkv(x.reshape(N, L, C)).reshape(N, L, 3, m, C // m).permute(2, 0, 3, 1, 4)  # (3, N, m, L, c)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)                 # (N, m, L, L)
        out = (attn @ v).transpose(1, 2).reshape(N, L, C) + lepe
        return self.proj(out).reshape(N, H, W, C)


def use_legacy_formulation(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every BRA and stage-4 attention in ``model`` to the previous formulation, in place (same parameters)."""
    for module in model.modules():
        if type(module) is BiLevelRoutingAttention:
            module.__class__ = LegacyBRA
        elif type(module) is AttentionLePE:
            module.__class__ = LegacyAttentionLePE
    return model
