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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
AGREED = "mahalanobis+stem_knn"


@dataclass
class StemKnnOOD:
    """Deep nearest neighbours (Sun et al. 2022, "Out-of-distribution detection with deep
    nearest neighbors") on the pretrained stem's multi-scale pooled features
    (models/pooled.py). Each feature is standardised by the training images' mean and scale,
    the vector L2-normalised; the score is 1 - cosine similarity to the k-th nearest of the
    training images' vectors (`points`); the threshold a quantile of held-out scores."""

    points: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    k: int
    threshold: float

    @classmethod
    def fit(cls, train_pooled: np.ndarray, k: int = 1) -> StemKnnOOD:
        x = np.asarray(train_pooled, dtype=np.float64)
        if len(x) <= k:
            raise ModelInputError("the stem kNN fit needs more than k training images")
        model = cls(np.zeros((0, x.shape[1])), x.mean(axis=0), x.std(axis=0) + 1e-6, k, 0.0)
        model.points = model._unit(x)
        return model

    def _unit(self, pooled: np.ndarray) -> np.ndarray:
        z = (np.asarray(pooled, dtype=np.float64) - self.mean) / self.scale
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """(N,) 1 - cosine similarity to the k-th nearest training vector."""
        sims = self._unit(pooled) @ self.points.T
        return 1.0 - np.sort(sims, axis=1)[:, -self.k]


@dataclass
class AgreedOOD:
    """Unknown where two views agree the frame is foreign, or where its scale was never
    taught.

    Measured on the bundled model (benchmarks/refusal.py), each score alone flags in-
    distribution survey tiles the other finds ordinary: the fused-embedding Mahalanobis score
    a fine-pitch Patterned_surface tile (the default run's false unknown), the stem kNN score
    whole unfamiliar regions of other specimens. Requiring both (the score is the lesser of
    the two scores, each divided by its threshold; flagged above 1) keeps the survey tiles
    and still flags most foreign images, e.g. real AFM scans.

    Neither score separates an atomic-resolution STEM lattice from a Patterned_surface, nor
    Nion's simulated specimens from SEM textures, by pixels alone. What does is how the frame
    was taken, where the training data records it:
    - `fov_range` (m), the fields of view of the training images. A frame whose field of view
      lies outside it by more than `fov_margin` (a factor) shows a scale the model was never
      taught (a 3 nm lattice for a model of 1-100 um SEM fields): method "field_of_view",
      score = decades outside, threshold 0.
    - `detectors`, the detectors of the training images. A frame from another detector (a
      STEM HAADF image for a model of SE/BSE images) shows a contrast it was never taught:
      method "detector", score 1, threshold 0. A model of the twin is refused on a real
      SEM whose detectors have other names too: fine-tune it there first (README).
    Such a frame is flagged whatever its pixels; a frame without the value is judged on its
    pixels alone. This goes beyond the papers, whose model sees pixels only.
    """

    fused: MahalanobisOOD
    stem: StemKnnOOD
    quantile: float
    fov_range: tuple[float, float] | None = None
    detectors: tuple[str, ...] | None = None
    fov_margin: float = 2.0
    threshold: float = 1.0
    space = "both"                    # `score` reads the fused embedding and stem features

    def score(self, embeddings: np.ndarray, pooled: np.ndarray) -> np.ndarray:
        return np.minimum(self.fused.score(embeddings) / self.fused.threshold,
                          self.stem.score(pooled) / self.stem.threshold)

    def outside_scale(self, fov: float | None) -> float:
        """Decades by which a field of view lies outside the taught range (0: inside or
        unknown)."""
        if self.fov_range is None or fov is None or not fov > 0:
            return 0.0
        lo, hi = self.fov_range[0] / self.fov_margin, self.fov_range[1] * self.fov_margin
        return float(max(np.log10(lo / fov), np.log10(fov / hi), 0.0))

    def record(self, score: float, imaging: Mapping[str, Any] | None = None) -> dict:
        """The verdict on a frame of this score taken with `imaging` ("fov" in m,
        "detector"; None or absent: unknown)."""
        imaging = imaging or {}
        outside = self.outside_scale(imaging.get("fov"))
        if outside > 0:
            return {"score": outside, "threshold": 0.0, "unknown": True,
                    "method": "field_of_view"}
        detector = imaging.get("detector")
        if self.detectors is not None and detector and detector not in self.detectors:
            return {"score": 1.0, "threshold": 0.0, "unknown": True, "method": "detector"}
        return {"score": float(score), "threshold": self.threshold,
                "unknown": bool(score > self.threshold), "method": AGREED}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"fused.{k}": v for k, v in self.fused.tensors().items()},
                "stem.points": torch.from_numpy(self.stem.points.astype(np.float16)),
                "stem.mean": torch.from_numpy(self.stem.mean.copy()),
                "stem.scale": torch.from_numpy(self.stem.scale.copy())}

    def meta(self) -> dict:
        return {"method": AGREED, "threshold": self.threshold, "quantile": self.quantile,
                "fused_threshold": self.fused.threshold, "stem_threshold": self.stem.threshold,
                "k": self.stem.k, "fov_margin": self.fov_margin,
                "fov_range": None if self.fov_range is None else list(self.fov_range),
                "detectors": None if self.detectors is None else list(self.detectors)}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict) -> AgreedOOD:
        fused = MahalanobisOOD.from_parts(
            {k.removeprefix("fused."): v for k, v in tensors.items() if k.startswith("fused.")},
            {"threshold": meta["fused_threshold"], "quantile": meta["quantile"]})
        stem = StemKnnOOD(*(tensors[f"stem.{k}"].numpy().astype(np.float64)
                            for k in ("points", "mean", "scale")),
                          int(meta["k"]), float(meta["stem_threshold"]))
        fov, detectors = meta.get("fov_range"), meta.get("detectors")
        return cls(fused, stem, float(meta["quantile"]),
                   None if fov is None else (float(fov[0]), float(fov[1])),
                   None if detectors is None else tuple(str(d) for d in detectors),
                   float(meta.get("fov_margin", 2.0)))


OOD_METHODS = {METHOD: MahalanobisOOD, NEAREST: NearestSupportOOD, AGREED: AgreedOOD}
OODScore = MahalanobisOOD | NearestSupportOOD | AgreedOOD
