"""Out-of-distribution score on the fused embedding: Mahalanobis distance to the class means.

A frame unlike every training class (a real AFM scan, a blank or saturated frame, pure noise)
still gets a softmax over the known classes, often a confident one. Following Lee et al. (2018,
"A simple unified framework for detecting out-of-distribution samples"), the score of an
embedding e is min_c (e - mu_c)^T S^-1 (e - mu_c), with class means mu_c and one shared
covariance S (Ledoit-Wolf shrinkage, so a 256-dim embedding is estimated stably from a few
hundred images) fitted on the training split's LMM-free fused embeddings (`Classifier.embed`).
The threshold is a quantile (default 0.99) of the scores of the validation split, images the
fit never saw: about 1 % of in-distribution frames are flagged. Both live in the checkpoint
(`ood.safetensors` + the threshold in config.json).

The few-shot head (workflows/training/fewshot.py) has too few images per class for a
covariance: its score (`NearestSupportOOD`, method "nearest_support") is the squared Euclidean
distance of the unit-norm embedding to the nearest support image, its threshold a quantile of
the support set's own leave-one-image-out distances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from models.errors import ModelInputError

METHOD = "mahalanobis"
DEFAULT_QUANTILE = 0.99


@dataclass
class MahalanobisOOD:
    """Class means (C, e), shared precision (e, e) and the score threshold."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float = DEFAULT_QUANTILE

    @classmethod
    def fit(cls, train_embeddings: np.ndarray, train_labels: np.ndarray, n_classes: int,
            val_embeddings: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> MahalanobisOOD:
        """Means and covariance from the training split, threshold from held-out images."""
        x = np.asarray(train_embeddings, dtype=np.float64)
        y = np.asarray(train_labels, dtype=np.int64)
        present = np.unique(y)
        if len(present) != n_classes:
            raise ModelInputError(f"the OOD fit needs training images of all {n_classes} "
                                  f"classes; got {len(present)}")
        if len(val_embeddings) < 2:
            raise ModelInputError("the OOD threshold needs at least 2 held-out images")
        means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
        centred = x - means[y]
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        model = cls(means, precision, 0.0, quantile)
        model.threshold = float(np.quantile(model.score(val_embeddings), quantile))
        return model

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) squared Mahalanobis distance to the nearest class mean."""
        e = np.asarray(embeddings, dtype=np.float64)
        diff = e[:, None, :] - self.means[None]  # (N, C, e)
        return np.einsum("nce,ef,ncf->nc", diff, self.precision, diff).min(axis=1)

    def record(self, score: float) -> dict:
        """What a Prediction carries: score, threshold, verdict, method."""
        return {"score": float(score), "threshold": self.threshold,
                "unknown": bool(score > self.threshold), "method": METHOD}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"means": torch.from_numpy(self.means.copy()),
                "precision": torch.from_numpy(self.precision.copy())}

    def meta(self) -> dict:
        return {"method": METHOD, "threshold": self.threshold, "quantile": self.quantile}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict) -> MahalanobisOOD:
        return cls(tensors["means"].numpy().astype(np.float64),
                   tensors["precision"].numpy().astype(np.float64),
                   float(meta["threshold"]), float(meta.get("quantile", DEFAULT_QUANTILE)))


NEAREST = "nearest_support"


@dataclass
class NearestSupportOOD:
    """Support embeddings (n, e) and the threshold on the distance to the nearest one."""

    points: np.ndarray
    threshold: float
    quantile: float

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) squared Euclidean distance to the nearest support embedding."""
        e = np.asarray(embeddings, dtype=np.float64)
        d2 = ((e * e).sum(1)[:, None] - 2.0 * e @ self.points.T
              + (self.points * self.points).sum(1)[None, :])
        return np.maximum(d2, 0.0).min(axis=1)

    def record(self, score: float) -> dict:
        return {"score": float(score), "threshold": self.threshold,
                "unknown": bool(score > self.threshold), "method": NEAREST}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"points": torch.from_numpy(self.points.copy())}

    def meta(self) -> dict:
        return {"method": NEAREST, "threshold": self.threshold, "quantile": self.quantile}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict) -> NearestSupportOOD:
        return cls(tensors["points"].numpy().astype(np.float64), float(meta["threshold"]),
                   float(meta["quantile"]))


OOD_METHODS = {METHOD: MahalanobisOOD, NEAREST: NearestSupportOOD}
OODScore = MahalanobisOOD | NearestSupportOOD
