"""What a training step feeds the model: images, or cached frozen-stem features.

`ImageInputs`: preprocessed images; the model runs its stem (fine-tuned or absent) each step,
and augmentation draws one of the eight dihedral symmetries per image and step.
`CachedFeatureInputs`: the frozen stem's features of V cached views
(workflows/training/feature_cache.py);
augmentation draws one cached view per image and step, evaluation uses view 0 (the identity).
Both give logits (grad-enabled, the model in its current mode) and LMM-free embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from models.fusion import FusionClassifier
from workflows.training.augment import random_dihedral


class ImageInputs:
    """Images (N, C, S, S) through the whole model."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def logits(self, model: FusionClassifier, idx: np.ndarray, lmm: torch.Tensor,
               augment: torch.Generator | None = None) -> torch.Tensor:
        batch = self.images[idx]
        if augment is not None:
            batch = random_dihedral(batch, augment)
        return model(batch, lmm)

    def embed(self, model: FusionClassifier, idx: np.ndarray) -> torch.Tensor:
        return model.embed(self.images[idx])


class CachedFeatureInputs:
    """Per stem level a (V, N, C, h, w) tensor of cached features."""

    def __init__(self, levels: list[torch.Tensor]) -> None:
        self.levels = levels

    def __len__(self) -> int:
        return self.levels[0].shape[1]

    def _features(self, idx: np.ndarray, augment: torch.Generator | None) -> list[torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        n_views = self.levels[0].shape[0]
        if augment is None or n_views == 1:
            view = torch.zeros(len(index), dtype=torch.long)
        else:
            view = torch.randint(0, n_views, (len(index),), generator=augment)
        return [level[view, index] for level in self.levels]

    def logits(self, model: FusionClassifier, idx: np.ndarray, lmm: torch.Tensor,
               augment: torch.Generator | None = None) -> torch.Tensor:
        return model.forward_features(self._features(idx, augment), lmm)

    def embed(self, model: FusionClassifier, idx: np.ndarray) -> torch.Tensor:
        return model.encode_features(self._features(idx, None))[1]


TrainingInputs = ImageInputs | CachedFeatureInputs


def batched(fn, idx: np.ndarray, batch_size: int = 48) -> np.ndarray:
    """fn(chunk of idx) -> tensor, over idx in chunks, without gradients, as float64 numpy."""
    with torch.no_grad():
        return np.concatenate([fn(idx[i:i + batch_size]).double().numpy()
                               for i in range(0, len(idx), batch_size)])
