"""The smallest model the classifier accepts, for tests about control flow, not accuracy: the
ViT-only ablation on raw pixels (no pretrained stem), 64 px input, one transformer block, seeded
random weights. One classification costs about 5 ms here against 70 ms for the 224 px ViT-only
model on the pretrained stem, which matters where a test runs whole sessions many times (a
kill campaign classifies each frame up to nine times: the unsure frame's eight views)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.classifier import Classifier
from models.config import FusionConfig
from twins.classes import SEM_CLASSES

PLUMBING_CONFIG = FusionConfig.ablation(
    "vit_only", stem="none", img_size=64, vit_depth=1,
    hnf_patch_sizes=(16, 32), hnf_knn=(4, 4))   # unused by vit_only, but must tile 64 px


def untrained(classes: Sequence[str] = SEM_CLASSES, seed: int = 0) -> Classifier:
    """A plumbing model over `classes` with weights drawn from `seed`."""
    torch.manual_seed(seed)
    return Classifier.create(PLUMBING_CONFIG, list(classes))
