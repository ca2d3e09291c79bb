"""Electron-micrograph encoder of CM-EMRL: a timm Vision Transformer, CLS embedding out.

Paper setup: 224x224 input, non-overlapping 32-pixel patches, patch and position embedding
dimension d = 64. The paper does not give depth or heads; we use `vit_depth` blocks with 4
heads (d_h = 16, as in its attention layer). Weights start random (no download).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from models.config import FusionConfig


class ViTEncoder(nn.Module):
    """images (B, C, 224, 224) -> h_cls (B, d)."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.vit = VisionTransformer(
            img_size=config.img_size,
            patch_size=config.vit_patch,
            in_chans=config.in_chans,
            num_classes=0,
            global_pool="token",
            embed_dim=config.d,
            depth=config.vit_depth,
            num_heads=config.heads,
            mlp_ratio=config.vit_mlp_ratio,
            drop_rate=config.dropout,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(images)
