"""Vision graphs over patch embeddings and their Chebyshev graph convolution encoder.

A vision graph (MultiFusion-LLM 3.1/3.2) has one node per patch; patch i is joined to its K
nearest neighbours by visual similarity (cosine similarity of patch embeddings without position
embedding, not grid position), made undirected. Optionally a virtual node is added with edges
both ways to every patch node. kNN is computed in torch (cdist/topk; PyG's knn_graph needs
pyg-lib). Graphs of a batch are merged with torch_geometric's Batch. Node features are encoded
by ChebConv layers with ReLU (eq. 15-16).

torch_geometric is imported where it is used, not with this module: its import loads
torch._dynamo and PyG's dataset and LLM modules (about 5 s of every `micagent` start on the
2-core machine), which a model without a graph branch (vit_only, fewshot) never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch_geometric.data import Batch


def knn_edges(features: torch.Tensor, k: int) -> torch.Tensor:
    """features (n, d) -> undirected edge_index (2, E) joining each node to its k most similar."""
    from torch_geometric.utils import to_undirected

    n = features.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.empty(2, 0, dtype=torch.long, device=features.device)
    unit = F.normalize(features.detach(), dim=-1)
    distance = torch.cdist(unit, unit)
    distance.fill_diagonal_(float("inf"))
    neighbours = distance.topk(k, dim=-1, largest=False).indices  # (n, k)
    source = torch.arange(n, device=features.device).repeat_interleave(k)
    edge_index = torch.stack([source, neighbours.reshape(-1)])
    return to_undirected(edge_index, num_nodes=n)


def build_vision_graphs(similarity: torch.Tensor, nodes: torch.Tensor, k: int,
                        virtual: torch.Tensor | None = None) -> Batch:
    """Batch of kNN vision graphs.

    similarity (B, n, d): features the kNN search compares; nodes (B, n, d): node features;
    virtual (B, d) or None: features of a virtual node appended as node n of every graph.
    """
    from torch_geometric.data import Batch, Data

    graphs = []
    for b in range(nodes.shape[0]):
        edge_index = knn_edges(similarity[b], k)
        x = nodes[b]
        if virtual is not None:
            n = x.shape[0]
            real = torch.arange(n, device=x.device)
            hub = torch.full((n,), n, dtype=torch.long, device=x.device)
            edge_index = torch.cat(
                [edge_index, torch.stack([real, hub]), torch.stack([hub, real])], dim=1)
            x = torch.cat([x, virtual[b:b + 1]], dim=0)
        graphs.append(Data(x=x, edge_index=edge_index))
    return Batch.from_data_list(graphs)


class ChebGraphEncoder(nn.Module):
    """Stack of ChebConv + ReLU layers over a Batch of graphs -> node embeddings (N, d)."""

    def __init__(self, d: int, order: int, layers: int = 1) -> None:
        from torch_geometric.nn import ChebConv

        super().__init__()
        self.convs = nn.ModuleList(ChebConv(d, d, K=order) for _ in range(layers))

    def forward(self, batch: Batch) -> torch.Tensor:
        x = batch.x
        for conv in self.convs:
            x = F.relu(conv(x, batch.edge_index, batch=batch.batch))
        return x
