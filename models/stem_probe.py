"""A second opinion on the stem's pooled features, blended with the fusion model's logits.

The stem probe is a small MLP (472 -> hidden -> classes, ReLU) on the frozen stem's
multi-scale pooled features (models/pooled.py), standardised with the fit split's per-feature
mean and scale. The classifier's decision scores become the weighted mean of the two
log-probabilities,

    z = (1 - w) * log_softmax(fusion logits) + w * log_softmax(probe logits),

on which the checkpoint's temperature and conformal threshold are then fitted (a logarithmic
opinion pool; Hinton, "Training products of experts by minimizing contrastive divergence",
2002, for the product form; the weight w is chosen on held-out images by log-loss).

Deviation from the papers, and why: the papers classify with the fusion head alone. On the twin
the fusion layers on the frozen stem, trained on CPU on hundreds of images, read survey tiles of
unseen specimens at 0.92-0.94 top-1, while this probe on the same stem's pooled features, fitted
in seconds on thousands of images, reads them at 0.96; the blend read 0.97-0.98
(benchmarks/results/stem_probe.md). The fusion model's embedding, text match, OOD test and
adjudication are unchanged; only the class scores are pooled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.checkpoint import PROBE_FILE
from models.errors import CheckpointError, ModelInputError
from models.pooled import POOLED_DIM

PROBE_RECORD = "stem_probe.json"   # how it was fitted (workflows/training/fit_probe.py)
HIDDEN = 512
EPOCHS = 30
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
BATCH = 128
BLEND_GRID = tuple(round(w, 1) for w in np.linspace(0.0, 1.0, 11))


class StemProbeError(CheckpointError):
    """A stem probe file that cannot be read or does not fit the checkpoint."""


class StemProbe(nn.Module):
    """Raw pooled stem features (B, 472) -> class logits (B, n_classes)."""

    def __init__(self, n_classes: int, hidden: int = HIDDEN, blend: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(POOLED_DIM))
        self.register_buffer("scale", torch.ones(POOLED_DIM))
        self.net = nn.Sequential(nn.Linear(POOLED_DIM, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_classes))
        self.blend = float(blend)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net((pooled.float() - self.mean) / self.scale)

    def pool_with(self, fusion_logits: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The blended decision scores (see the module docstring), float64."""
        fused = torch.log_softmax(fusion_logits.double(), -1)
        probe = torch.log_softmax(self(pooled).double(), -1)
        return (1.0 - self.blend) * fused + self.blend * probe

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / PROBE_FILE
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={
            "probe": json.dumps({"hidden": self.net[0].out_features, "blend": self.blend})})
        return path

    @classmethod
    def load(cls, folder: str | Path, n_classes: int) -> StemProbe | None:
        """The checkpoint's probe, or None where it has none."""
        path = Path(folder) / PROBE_FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as handle:
                meta = json.loads((handle.metadata() or {})["probe"])
            probe = cls(n_classes, int(meta["hidden"]), float(meta["blend"]))
            probe.load_state_dict(load_file(str(path)))
        except (SafetensorError, KeyError, ValueError, RuntimeError, OSError) as exc:
            raise StemProbeError(f"cannot read {path}: {exc}") from exc
        return probe.eval()


@dataclass(frozen=True)
class ProbeFit:
    """What fitting found: the held-out log-loss of each blend weight, the chosen one, and
    the held-out top-1 of the fusion head, the probe and the blend."""

    log_loss: dict[float, float]
    blend: float
    top1: dict[str, float]


def fit_probe(fit_features: np.ndarray, fit_labels: np.ndarray,
              held_features: np.ndarray, held_labels: np.ndarray,
              held_fusion_logits: np.ndarray, n_classes: int, seed: int = 0
              ) -> tuple[StemProbe, ProbeFit]:
    """Train the probe on the fit split (Adam, fixed epochs), choose the blend weight by the
    blended log-loss on the held-out split."""
    if len(fit_labels) < 2 * n_classes or len(held_labels) < n_classes:
        raise ModelInputError(f"the stem probe needs at least {2 * n_classes} fit and "
                              f"{n_classes} held-out images")
    torch.manual_seed(seed)
    probe = StemProbe(n_classes)
    x = torch.as_tensor(fit_features, dtype=torch.float32)
    probe.mean.copy_(x.mean(0))
    probe.scale.copy_(x.std(0) + 1e-6)
    y = torch.as_tensor(fit_labels, dtype=torch.long)
    optimiser = torch.optim.Adam(probe.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    order = np.random.default_rng(seed)
    probe.train()
    for _ in range(EPOCHS):
        for batch in np.array_split(order.permutation(len(y)), max(1, len(y) // BATCH)):
            optimiser.zero_grad()
            nn.functional.cross_entropy(probe(x[batch]), y[batch]).backward()
            optimiser.step()
    probe.eval()
    held = torch.as_tensor(held_labels, dtype=torch.long)
    fusion = torch.as_tensor(held_fusion_logits, dtype=torch.float64)
    pooled = torch.as_tensor(held_features, dtype=torch.float32)
    losses = {}
    with torch.no_grad():
        for w in BLEND_GRID:
            probe.blend = w
            losses[w] = float(nn.functional.cross_entropy(probe.pool_with(fusion, pooled), held))
        probe.blend = min(losses, key=losses.get)
        top1 = {name: float((scores.argmax(-1) == held).double().mean())
                for name, scores in (("fusion", fusion), ("probe", probe(pooled)),
                                     ("blend", probe.pool_with(fusion, pooled)))}
    return probe, ProbeFit(losses, probe.blend, top1)
