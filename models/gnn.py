"""ChebConv GNN baseline ("gnn_only"): single-scale vision graph, no sequence branch.

CM-EMRL appendix, baselines: vision graphs by Top-K nearest-neighbour search over patches with a
32-pixel patch size and K = 5. Node features are linear patch embeddings plus position embeddings
(with the stem: its features pooled over each patch, as in models/hnf.py); `gnn_layers` ChebConv
layers with ReLU; graph embedding = mean over nodes (the paper's GNN baselines do not fix the
readout; mean pooling is the usual choice).
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import FusionConfig
from models.graph import ChebGraphEncoder, build_vision_graphs
from models.hnf import patch_embedding


class ChebGNNEncoder(nn.Module):
    """images (B, C, 224, 224) or stem feature maps -> graph embedding (B, d)."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.k = config.gnn_knn
        self.embed = patch_embedding(config, config.gnn_patch)
        self.graph = ChebGraphEncoder(config.d, config.cheb_order, config.gnn_layers)

    def forward(self, inputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool  # where used: see models/graph.py

        similarity, patches = self.embed(inputs)
        graphs = build_vision_graphs(similarity, patches, self.k)
        return global_mean_pool(self.graph(graphs), graphs.batch, size=patches.shape[0])
