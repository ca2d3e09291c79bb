"""Unified hierarchical multi-head attention (CM-EMRL "Unified Attention Layer",
MultiFusion-LLM eq. 7-13). d = 64, H = 4 heads, d_h = 16.

ConcatKeyAttention is eq. 7-13 for any number of input embeddings x_1..x_n (B, d each): per-input
projections Q_i, K_i, V_i; keys and values concatenated, K = [K_1; ...; K_n]; query = sum of the
query projections of the chosen inputs (eq. 10 sums Q_text + Q_fus); per-head softmax
attention, heads concatenated and projected by W_O.

HierarchicalAttention runs CM-EMRL's two stages:
1. image-text: all image embeddings (h_cls, h_fus) and matched text embeddings (h_text*,
   h_fus^text) -> h_img-text (query: sum of all, as MultiFusion eq. 10);
2. (image-text)-prediction: keys/values [h_img-text; h_ICL], query h_img-text -> h_cross.
Deviation: CM-EMRL writes MultiHead(h_cls, h_text*, h_text*) with a single key; softmax over one
key is identically 1, so the output would ignore the query (the image) entirely. Including the
query's own embedding among keys/values, exactly as MultiFusion eq. 9 does, keeps both.
A stage with a single input is the identity.

Deviation (``residual=True``; FusionConfig.fusion_norm): each stage adds the
mean of its query inputs back to the attention output and layer-normalises the sum, as every
transformer block does. Eq. 7-13 as printed return W_O(attention) alone; trained from scratch
on the twin benchmark, that path shrank the image signal (at initialisation the output is a
random projection of a convex mix of the inputs) and the full model scored below its own
"w/o MHA" ablation (0.26 vs 0.46 top-1 on a 1,500-image run before this change; with it, on the
5000-image benchmark at 40 epochs, 0.761 vs 0.824: benchmarks/results/ablation_twin.md).
``residual=False`` is the printed form (checkpoints written before the switch).
"""

from __future__ import annotations

import torch
from torch import nn


class ConcatKeyAttention(nn.Module):
    """inputs: list of n (B, d) -> (B, d); attention weights kept in `last_weights` (B, H, n)."""

    def __init__(self, n_inputs: int, d: int, heads: int, query_inputs: tuple[int, ...],
                 residual: bool = True) -> None:
        super().__init__()
        self.heads, self.d_h = heads, d // heads
        self.query_inputs = query_inputs
        self.q = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in query_inputs)
        self.k = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n_inputs))
        self.v = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n_inputs))
        self.out = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d) if residual else None
        self.last_weights: torch.Tensor | None = None

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        b = inputs[0].shape[0]
        q = sum(proj(inputs[i]) for proj, i in zip(self.q, self.query_inputs, strict=True))
        q = q.view(b, self.heads, 1, self.d_h)
        k = torch.stack([proj(x) for proj, x in zip(self.k, inputs, strict=True)], dim=1)
        v = torch.stack([proj(x) for proj, x in zip(self.v, inputs, strict=True)], dim=1)
        k = k.view(b, -1, self.heads, self.d_h).transpose(1, 2)  # (B, H, n, d_h)
        v = v.view(b, -1, self.heads, self.d_h).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / self.d_h**0.5, dim=-1)  # (B,H,1,n)
        self.last_weights = weights.squeeze(2).detach()
        attended = self.out((weights @ v).reshape(b, -1))
        if self.norm is None:
            return attended
        skip = torch.stack([inputs[i] for i in self.query_inputs]).mean(dim=0)
        return self.norm(skip + attended)


class HierarchicalAttention(nn.Module):
    """(stage-1 embeddings, h_ICL or None) -> (h_cross, h_img-text)."""

    def __init__(self, n_stage1: int, with_prediction: bool, d: int, heads: int,
                 residual: bool = True) -> None:
        super().__init__()
        self.stage1 = (ConcatKeyAttention(n_stage1, d, heads, tuple(range(n_stage1)), residual)
                       if n_stage1 > 1 else None)
        self.stage2 = (ConcatKeyAttention(2, d, heads, (0,), residual) if with_prediction
                       else None)

    def forward(self, stage1: list[torch.Tensor], h_icl: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h_img_text = self.stage1(stage1) if self.stage1 is not None else stage1[0]
        if self.stage2 is None or h_icl is None:
            return h_img_text, h_img_text
        return self.stage2([h_img_text, h_icl]), h_img_text
