"""Hierarchical Network Fusion (MultiFusion-LLM 3.2, Figure 3).

Layer l tokenises the image with patch size p_l (16, 28, 32 -> 196, 64, 49 patches at 224x224),
embeds the patches linearly to d with learnable position embeddings, and computes two views:
- patch sequence + <cls> token, refined by the bidirectional neural ODE (models/ode.py);
- kNN vision graph (K_l = 10, 6, 4) over the patch embeddings + a virtual node connected both
  ways to all nodes, encoded by ChebConv (models/graph.py).
A mixture-of-experts gate (softmax over the two experts, computed from both) mixes the <cls>
embedding and the virtual-node embedding into the layer's fused embedding. The fused embedding
is added to the initial <cls> token and virtual node of the next layer ("the fused information
is combined with the individual modalities at higher patch resolutions"); the last layer's
fused embedding is h_fus.

Deviation (stem on, the default): patch nodes are not linear embeddings of raw pixels but the
pretrained stem's features pooled over each patch's window: its stride-8/16/32 maps (40 + 112 +
320 channels) are average-pooled adaptively to the layer's patch grid (14/8/7 at 224 px),
concatenated and projected linearly to d. The kNN search compares these pooled pretrained
features (the visual similarity the paper asks for, now measured by ImageNet features);
graphs, virtual node, ChebConv, neural ODEs and gates are unchanged. `stem = "none"` keeps
the printed raw-pixel patch embedding.

Deviation (``fusion_norm``, default on): each layer's fused embedding is layer-normalised.
As printed, the <cls> expert leaves the ODE through the outer sigmoid of eq. 21 (values in
(0, 1)) and the graph expert through a ReLU, so h_fus is non-negative with a scale that drifts
as the gate moves, and it is added unnormalised into the next layer's tokens. Measured on the
1,500-image twin benchmark (12 epochs, seed 0): full model 0.344 top-1 without, 0.363 with it
(within the noise of 215 test images; the ViT alone scores 0.42 there, so the HNF branch is
still the slow learner).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import FusionConfig
from models.graph import ChebGraphEncoder, build_vision_graphs
from models.ode import BidirectionalNeuralODE
from models.stem import STEM_CHANNELS


class PatchEmbedding(nn.Module):
    """images (B, C, H, W) -> patch embeddings without / with position (B, n, d) each."""

    def __init__(self, in_chans: int, img_size: int, patch: int, d: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, d, kernel_size=patch, stride=patch)
        n = (img_size // patch) ** 2
        self.position = nn.Parameter(torch.randn(1, n, d) * 0.02)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.proj(images).flatten(2).transpose(1, 2)
        return raw, raw + self.position


class PooledStemEmbedding(nn.Module):
    """stem feature maps -> pooled patch features / patch embeddings with position (B, n, .)."""

    def __init__(self, img_size: int, patch: int, d: int) -> None:
        super().__init__()
        self.grid = img_size // patch
        self.proj = nn.Linear(sum(STEM_CHANNELS), d)
        self.position = nn.Parameter(torch.randn(1, self.grid ** 2, d) * 0.02)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.cat([F.adaptive_avg_pool2d(f, self.grid) for f in features], 1)
        pooled = pooled.flatten(2).transpose(1, 2)
        return pooled, self.proj(pooled) + self.position


def patch_embedding(config: FusionConfig, patch: int) -> nn.Module:
    """The patch embedding of one scale: pooled stem features, or raw pixels without a stem."""
    if config.stem == "none":
        return PatchEmbedding(config.in_chans, config.img_size, patch, config.d)
    return PooledStemEmbedding(config.img_size, patch, config.d)


class MixtureOfExpertsGate(nn.Module):
    """Gated mixture of the <cls> (sequence expert) and virtual-node (graph expert) embeddings."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * d, 2)

    def forward(self, cls: torch.Tensor, virtual: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.gate(torch.cat([cls, virtual], dim=-1)), dim=-1)
        return weights[:, :1] * cls + weights[:, 1:] * virtual


class HNFLayer(nn.Module):
    """One scale of HNF: (images, fused info from the previous layer) -> fused (B, d)."""

    def __init__(self, config: FusionConfig, patch: int, k: int) -> None:
        super().__init__()
        d = config.d
        self.k = k
        self.embed = patch_embedding(config, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.virtual = nn.Parameter(torch.randn(1, d) * 0.02)
        self.sequence = BidirectionalNeuralODE(d, config.heads, config.ode_ff, config.ode_layers,
                                               config.ode_steps, config.ode_adjoint,
                                               config.dropout)
        self.graph = ChebGraphEncoder(d, config.cheb_order)
        self.moe = MixtureOfExpertsGate(d)
        self.norm = nn.LayerNorm(d) if config.fusion_norm else nn.Identity()

    def forward(self, inputs: torch.Tensor | list[torch.Tensor], previous: torch.Tensor | None
                ) -> torch.Tensor:
        similarity, patches = self.embed(inputs)
        b, n, d = patches.shape
        cls = self.cls.expand(b, 1, d)
        virtual = self.virtual.expand(b, d)
        if previous is not None:
            cls = cls + previous[:, None]
            virtual = virtual + previous
        refined = self.sequence(torch.cat([patches, cls], dim=1))
        h_cls = refined[:, -1]
        graphs = build_vision_graphs(similarity, patches, self.k, virtual)
        nodes = self.graph(graphs).view(b, n + 1, d)
        return self.norm(self.moe(h_cls, nodes[:, -1]))


class HierarchicalNetworkFusion(nn.Module):
    """images (B, C, 224, 224) or stem feature maps -> h_fus (B, d) through the cascade."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        scales = zip(config.hnf_patch_sizes, config.hnf_knn, strict=True)
        self.layers = nn.ModuleList(HNFLayer(config, p, k) for p, k in scales)

    def forward(self, inputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        fused = None
        for layer in self.layers:
            fused = layer(inputs, fused)
        return fused
