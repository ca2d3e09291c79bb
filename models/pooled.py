"""The few-shot image embedding: the frozen stem's feature maps, pooled and normalised.

Each of the stem's three levels (strides 8/16/32, 40/112/320 channels) is averaged over its
grid and the 472 means concatenated (multi-scale pooling); they are standardised with the
support set's per-feature mean and scale (buffers fitted by the few-shot workflow and stored in
the checkpoint) and L2-normalised. A linear head on this embedding is a logistic regression on
the pooled features (`baseline = "fewshot"` in models/config.py). Measured on the twin's ten
classes (benchmarks/results/fewshot.md), adding per-channel standard deviations or a square
root did not raise held-out top-1.
"""

from __future__ import annotations

import torch
from torch import nn

from models.stem import STEM_CHANNELS

POOLED_DIM = sum(STEM_CHANNELS)


class PooledStemEncoder(nn.Module):
    """[stride-8, stride-16, stride-32 maps] -> (B, 472) unit-norm embedding."""

    out_dim = POOLED_DIM

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(POOLED_DIM))
        self.register_buffer("scale", torch.ones(POOLED_DIM))

    @staticmethod
    def pool(levels: list[torch.Tensor]) -> torch.Tensor:
        """Raw multi-scale pooled features (B, 472): each level's mean over its grid."""
        return torch.cat([level.float().mean(dim=(2, 3)) for level in levels], dim=1)

    def set_standardisation(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Per-feature mean and scale (scale > 0) that `normalise` removes."""
        if mean.shape != (POOLED_DIM,) or scale.shape != (POOLED_DIM,) or (scale <= 0).any():
            raise ValueError(f"need mean and positive scale of shape ({POOLED_DIM},)")
        self.mean.copy_(mean)
        self.scale.copy_(scale)

    def normalise(self, pooled: torch.Tensor) -> torch.Tensor:
        """Standardised, then L2-normalised pooled features."""
        z = (pooled - self.mean) / self.scale
        return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.normalise(self.pool(levels))
