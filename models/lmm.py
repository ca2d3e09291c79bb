"""LMM prediction embedding (CM-EMRL "Few-Shot LMM Prompting").

The adjudicating LMM's answer is a one-hot vector over the c classes, linearly encoded into
h_ICL in R^d. Most frames are never adjudicated; for them (index -1) a learned "no answer"
embedding stands in (our addition: the paper prompts the LMM only for ambiguous images and does
not say what the others receive).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PredictionEmbedding(nn.Module):
    """lmm_index (B,) long, -1 = no answer -> h_ICL (B, d)."""

    def __init__(self, n_classes: int, d: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.project = nn.Linear(n_classes, d, bias=False)
        self.no_answer = nn.Parameter(torch.randn(d) * 0.02)

    def forward(self, lmm_index: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(lmm_index.clamp(min=0), self.n_classes).to(self.no_answer.dtype)
        answered = self.project(one_hot)
        return torch.where((lmm_index >= 0).unsqueeze(-1), answered,
                           self.no_answer.expand_as(answered))
