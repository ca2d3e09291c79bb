"""What the classifier returns for one frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Prediction:
    """Calibrated class probabilities and what is derived from them.

    `conformal_set`: class names in the split-conformal prediction set (coverage 1 - alpha).
    `embedding`: the fused representation used to pick similar demonstrations.
    `ood`: the out-of-distribution verdict (models/ood.py) — {"score", "threshold", "unknown",
    "method"} — or None for a checkpoint without an OOD fit.
    `views`: how many dihedral views of the frame were averaged (test-time augmentation,
    `Classifier.classify(views=...)`); `frames`: how many frames of the same field were
    averaged (a rescanned frame and the attempts before it, `Classifier.pooled`);
    `as_taken`: with more than one view or frame, the label of this frame as taken alone.
    """

    class_names: list[str]
    probabilities: np.ndarray
    conformal_set: list[str]
    embedding: np.ndarray
    lmm_label: str | None = None
    extra: dict = field(default_factory=dict)
    ood: dict | None = None
    views: int = 1
    frames: int = 1
    as_taken: str | None = None

    @property
    def label(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    @property
    def entropy(self) -> float:
        p = np.clip(self.probabilities.astype(np.float64), 1e-12, 1.0)
        return float(-(p * np.log(p)).sum())

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]

    def as_record(self, k: int = 3) -> dict:
        """JSON-serialisable summary for the session file."""
        return {
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": dict(
                zip(self.class_names, map(float, self.probabilities), strict=True)),
            "top_k": self.top_k(k),
            "conformal_set": list(self.conformal_set),
            "entropy": self.entropy,
            "lmm_label": self.lmm_label,
            "ood": None if self.ood is None else dict(self.ood),
            "views": self.views,
            "frames": self.frames,
            "as_taken": self.as_taken,
        }
