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


STEM_KNN = "stem_knn"


@dataclass
class StemKnnOOD:
    """Deep nearest neighbours (Sun et al. 2022, "Out-of-distribution detection with deep
    nearest neighbors") on the pretrained stem's multi-scale pooled features
    (models/pooled.py), not on the fused embedding: the fused embedding is trained to separate
    the known classes and maps foreign images (STEM lattices, Nion's simulator) close to
    them, where the ImageNet stem still tells them apart (measured in
    benchmarks/refusal.py). Each feature is standardised by the training images' mean and
    scale, the vector L2-normalised; the score is 1 - cosine similarity to the k-th nearest of
    the training images' vectors (`points`).

    `fov_range` (m): the fields of view of the training images, where known. A frame whose
    field of view lies outside it by more than `fov_margin` (a factor) shows a scale the
    model was never taught (a 3 nm STEM lattice for a model of 1-100 um SEM fields): it is
    flagged whatever its pixels look like (method "field_of_view", score = decades outside,
    threshold 0). A frame without a known field of view is judged on its pixels alone.
    """

    points: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    k: int
    threshold: float
    quantile: float
    fov_range: tuple[float, float] | None = None
    fov_margin: float = 2.0
    space = "stem"                     # what `score` reads: pooled stem features

    @classmethod
    def fit(cls, train_pooled: np.ndarray, calibration_pooled: np.ndarray, k: int = 1,
            quantile: float = 0.995, fov_range: tuple[float, float] | None = None
            ) -> StemKnnOOD:
        """Reference vectors from the training images, threshold from other in-distribution
        images (the `quantile` of their scores)."""
        x = np.asarray(train_pooled, dtype=np.float64)
        if len(x) <= k or len(calibration_pooled) < 2:
            raise ModelInputError("the stem kNN fit needs more than k training images and at "
                                  "least 2 calibration images")
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        model = cls(np.zeros((0, x.shape[1])), mean, scale, k, 0.0, quantile, fov_range)
        model.points = model._unit(x)
        model.threshold = float(np.quantile(model.score(calibration_pooled), quantile))
        return model

    def _unit(self, pooled: np.ndarray) -> np.ndarray:
        z = (np.asarray(pooled, dtype=np.float64) - self.mean) / self.scale
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """(N,) 1 - cosine similarity to the k-th nearest training vector."""
        sims = self._unit(pooled) @ self.points.T
        return 1.0 - np.sort(sims, axis=1)[:, -self.k]

    def outside_scale(self, fov: float | None) -> float:
        """Decades by which a field of view lies outside the taught range (0: inside or
        unknown)."""
        if self.fov_range is None or fov is None or not fov > 0:
            return 0.0
        lo, hi = self.fov_range[0] / self.fov_margin, self.fov_range[1] * self.fov_margin
        return float(max(np.log10(lo / fov), np.log10(fov / hi), 0.0))

    def record(self, score: float, fov: float | None = None) -> dict:
        outside = self.outside_scale(fov)
        if outside > 0:
            return {"score": outside, "threshold": 0.0, "unknown": True,
                    "method": "field_of_view"}
        return {"score": float(score), "threshold": self.threshold,
                "unknown": bool(score > self.threshold), "method": STEM_KNN}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"points": torch.from_numpy(self.points.astype(np.float16)),
                "mean": torch.from_numpy(self.mean.copy()),
                "scale": torch.from_numpy(self.scale.copy())}

    def meta(self) -> dict:
        return {"method": STEM_KNN, "threshold": self.threshold, "quantile": self.quantile,
                "k": self.k, "fov_range": None if self.fov_range is None
                else list(self.fov_range), "fov_margin": self.fov_margin}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict) -> StemKnnOOD:
        fov = meta.get("fov_range")
        return cls(tensors["points"].numpy().astype(np.float64),
                   tensors["mean"].numpy().astype(np.float64),
                   tensors["scale"].numpy().astype(np.float64), int(meta["k"]),
                   float(meta["threshold"]), float(meta["quantile"]),
                   None if fov is None else (float(fov[0]), float(fov[1])),
                   float(meta.get("fov_margin", 2.0)))


OOD_METHODS = {METHOD: MahalanobisOOD, NEAREST: NearestSupportOOD, STEM_KNN: StemKnnOOD}
OODScore = MahalanobisOOD | NearestSupportOOD | StemKnnOOD
