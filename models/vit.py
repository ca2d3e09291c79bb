"""Electron-micrograph encoder of CM-EMRL: a timm Vision Transformer, CLS embedding out.

Paper setup: 224x224 input, non-overlapping 32-pixel patches, patch and position embedding
dimension d = 64. The paper does not give depth or heads; we use `vit_depth` blocks with 4
heads (d_h = 16, as in its attention layer). The transformer's weights start random.

Deviation (stem on, the default): the ViT paper's hybrid form. Tokens come from the pretrained
stem's stride-16 feature map through timm's `HybridEmbed`, with patches of `vit_patch / 16`
feature cells, so each token still covers the paper's 32 x 32 pixels (49 tokens at 224 px);
CLS token and position embeddings as before. With `stem = "none"` the tokens are linear
embeddings of raw pixel patches, as printed.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import HybridEmbed
from timm.models.vision_transformer import PatchEmbed, VisionTransformer
from torch import nn

from models.config import FusionConfig
from models.stem import STEM_CHANNELS, STEM_REDUCTIONS

HYBRID_LEVEL = 1  # the stride-16 map of the stem's three levels


class FeatureLevel(nn.Module):
    """Picks one level of the stem's feature list (the backbone HybridEmbed calls)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.num_features = STEM_CHANNELS[level]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return features[self.level]


class ViTEncoder(nn.Module):
    """images (B, C, 224, 224), or the stem's feature maps -> h_cls (B, d)."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        patch, embed_layer = config.vit_patch, PatchEmbed
        if config.stem != "none":
            stride = STEM_REDUCTIONS[HYBRID_LEVEL]
            patch //= stride
            embed_layer = partial(HybridEmbed, backbone=FeatureLevel(HYBRID_LEVEL),
                                  feature_size=config.img_size // stride, feature_ratio=stride)
        self.vit = VisionTransformer(
            img_size=config.img_size,
            patch_size=patch,
            in_chans=config.in_chans,
            num_classes=0,
            global_pool="token",
            embed_dim=config.d,
            depth=config.vit_depth,
            num_heads=config.heads,
            mlp_ratio=config.vit_mlp_ratio,
            drop_rate=config.dropout,
            embed_layer=embed_layer,
        )

    def forward(self, inputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return self.vit(inputs)
