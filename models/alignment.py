"""Matching an image embedding to the best class text embedding.

CM-EMRL "Cross-Modal Alignment": multi-head attention with the image embedding h_cls as query
and all class text embeddings as keys/values gives O_text; its cosine similarity with each class
text embedding gives Sim in R^c; h_text* = h_text^(argmax Sim). (The printed formula compares
O_text with h_cls, which yields one number, not c; comparing O_text with every class embedding
is the reading that yields the stated Sim in R^c.)

MultiFusion-LLM eq. 5-6 "relevance scoring": scores = softmax over classes of the bilinear form
h_c^text . (V h_fus) with trainable V (the printed v^T [h_1 || ... || h_c] h_fus needs a matrix
to map d to c scores); h_fus^text = h^text_(argmax).

Deviation: argmax passes no gradient, so the attention/V weights could never learn. The
selection is a straight-through estimator: the forward value is exactly the argmax embedding;
gradients flow as through softmax(scores / align_temperature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def straight_through_select(scores: torch.Tensor, table: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """scores (B, C), table (C, d) -> table[argmax] (B, d) with softmax gradients."""
    soft = torch.softmax(scores / temperature, dim=-1)
    hard = F.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(soft.dtype)
    return (hard + soft - soft.detach()) @ table


class CrossModalAlignment(nn.Module):
    """CM-EMRL: (h_cls (B, d), H_text (C, d)) -> (h_text* (B, d), Sim (B, C))."""

    def __init__(self, d: int, heads: int, temperature: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.temperature = temperature

    def forward(self, h_cls: torch.Tensor, h_text: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        texts = h_text.unsqueeze(0).expand(h_cls.shape[0], -1, -1)
        o_text, _ = self.attention(h_cls.unsqueeze(1), texts, texts, need_weights=False)
        sim = F.cosine_similarity(o_text, texts, dim=-1)  # (B, C)
        return straight_through_select(sim, h_text, self.temperature), sim


class RelevanceScoring(nn.Module):
    """MultiFusion-LLM eq. 5-6: (h_fus (B, d), H_text (C, d)) -> (h_fus^text, scores (B, C))."""

    def __init__(self, d: int, temperature: float) -> None:
        super().__init__()
        self.v = nn.Linear(d, d, bias=False)
        self.temperature = temperature

    def forward(self, h_fus: torch.Tensor, h_text: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.v(h_fus) @ h_text.T
        return straight_through_select(scores, h_text, self.temperature), scores
