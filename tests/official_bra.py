"""The official legacy BRA formulation (rayleizhu/BiFormer ``ops/bra_legacy.py``), rewritten with plain torch
permutes instead of einops, kept here as the reference our export-clean BRA must equal.

It gathers key/value regions the official way: KV viewed as (n, 1, R, T, Ckv), expanded to (n, R, R, T, Ckv) and
``torch.gather``-ed with an index expanded to (n, R, k, T, Ckv) -- which ONNX turns into Expand + GatherElements.
Only tests and the benchmark (benchmarks/bench_bra_export.py) use it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from biformer_edge.models.bra import BiLevelRoutingAttention


def _to_regions(x, S):  # 'n (j h) (i w) c -> n (j i) h w c'
    n, H, W, c = x.shape
    return x.view(n, S, H // S, S, W // S, c).permute(0, 1, 3, 2, 4, 5).reshape(n, S * S, H // S, W // S, c)


def _from_regions(x, S):  # 'n (j i) h w c -> n (j h) (i w) c'
    n, _, h, w, c = x.shape
    return x.view(n, S, S, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, S * h, S * w, c)


class OfficialBRA(BiLevelRoutingAttention):
    def forward(self, x):
        S, m, Cq, C = self.n_win, self.num_heads, self.qk_dim, self.dim
        N, H_in, W_in, _ = x.size()
        pad_r, pad_b = (S - W_in % S) % S, (S - H_in % S) % S
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, H, W, _ = x.size()
        h, w = H // S, W // S

        x = _to_regions(x, S)                                              # (n, p2, h, w, c)
        q, kv = self.qkv.qkv(x).split([Cq, Cq + C], dim=-1)  # official QKVLinear.forward
        q_pix = q.reshape(N, S * S, h * w, Cq)
        kv_pix = kv.reshape(N, S * S, h * w, Cq + C)
        q_win, k_win = q.mean([2, 3]), kv[..., 0:Cq].mean([2, 3])
        lepe = self.lepe(_from_regions(kv[..., Cq:], S).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

        # TopkRouting (detach, identity emb, scale on the query)
        logit = (q_win.detach() * self.scale) @ k_win.detach().transpose(-2, -1)
        topk_logit, r_idx = torch.topk(logit, k=self.topk, dim=-1)
        _r_weight = torch.softmax(topk_logit, dim=-1)  # unused: mul_weight='none' in every released config
        if self.record_routing:
            self.last_routing = r_idx

        # KVGather: expand + gather
        n, p2, w2, c_kv = kv_pix.size()
        topk = r_idx.size(-1)
        kv_sel = torch.gather(kv_pix.view(n, 1, p2, w2, c_kv).expand(-1, p2, -1, -1, -1), dim=2,
                              index=r_idx.view(n, p2, topk, 1, 1).expand(-1, -1, -1, w2, c_kv))

        k_sel, v_sel = kv_sel.split([Cq, C], dim=-1)
        k_sel = k_sel.reshape(n, p2, topk, w2, m, Cq // m).permute(0, 1, 4, 5, 2, 3)
        k_sel = k_sel.reshape(n * p2, m, Cq // m, topk * w2)
        v_sel = v_sel.reshape(n, p2, topk, w2, m, C // m).permute(0, 1, 4, 2, 3, 5)
        v_sel = v_sel.reshape(n * p2, m, topk * w2, C // m)
        q_pix = q_pix.reshape(n, p2, w2, m, Cq // m).permute(0, 1, 3, 2, 4).reshape(n * p2, m, w2, Cq // m)

        attn = torch.softmax((q_pix * self.scale) @ k_sel, dim=-1)
        out = attn @ v_sel                                                 # (n p2, m, w2, c)
        out = out.reshape(n, p2, m, h, w, C // m).permute(0, 1, 3, 4, 2, 5).reshape(n, p2, h, w, C)
        out = _from_regions(out, S) + lepe
        out = self.wo(out)
        return out[:, :H_in, :W_in, :].contiguous()


def use_official_bra(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every BRA in ``model`` to the official formulation, in place (same parameters)."""
    for module in model.modules():
        if type(module) is BiLevelRoutingAttention:
            module.__class__ = OfficialBRA
    return model
