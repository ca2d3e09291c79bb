"""Confounding (ambiguous) micrographs and their few-shot adjudicator labels (CM-EMRL,
"Few-Shot LMM Prompting").

Selection as the paper: images at 224x224, z-score normalised, flattened, reduced by PCA,
clustered by K-Means with K = number of classes; an image is ambiguous when it lies far from
its centroid relative to that cluster's spread, nearly as close to a second centroid, and has a
low silhouette score. The most ambiguous `fraction` of the dataset is selected.

Those images get labels from a few-shot adjudicator (by default the agent's offline
nearest-demonstration stand-in; similarity-driven or random demonstrations, K configurable,
drawn only from the pool the caller allows, never the query itself). The labels train the LMM
prediction embedding; every other image carries "no answer" (-1). Before a classifier exists,
the PCA features serve as the embedding that picks demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_samples

from agent.adjudication.base import Adjudicator
from agent.adjudication.demonstrations import DemonstrationBank
from agent.adjudication.offline import OfflineKnnAdjudicator
from workflows.training.data import resize

NO_ANSWER = -1


@dataclass
class ConfoundingSelection:
    """Per-image cluster statistics and the selected (most ambiguous) indices, best first."""

    selected: np.ndarray
    ambiguity: np.ndarray
    cluster: np.ndarray
    silhouette: np.ndarray
    centroid_distance: np.ndarray
    margin: np.ndarray
    n_components: int

    def records(self, sources: list[str], labels: list[str]) -> list[dict]:
        """JSON rows for the selected images."""
        return [{"index": int(i), "source": sources[i], "label": labels[i],
                 "ambiguity": float(self.ambiguity[i]), "cluster": int(self.cluster[i]),
                 "silhouette": float(self.silhouette[i]),
                 "centroid_distance": float(self.centroid_distance[i]),
                 "margin": float(self.margin[i])} for i in self.selected]


def pca_features(images: np.ndarray, size: int = 224, n_components: int = 50,
                 seed: int = 0) -> np.ndarray:
    """Per-image z-scored, flattened size x size images reduced by PCA to (N, n_components)."""
    n = len(images)
    flat = np.empty((n, size * size), dtype=np.float32)
    for i, img in enumerate(images):
        x = resize(np.asarray(img, dtype=np.float32), size).ravel()
        flat[i] = (x - x.mean()) / (x.std() + 1e-6)
    k = max(1, min(n_components, n - 1, flat.shape[1]))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed)
    return pca.fit_transform(flat).astype(np.float32)


def select_confounding(images: np.ndarray, n_clusters: int, fraction: float = 0.1,
                       seed: int = 0, n_components: int = 50,
                       features: np.ndarray | None = None) -> ConfoundingSelection:
    """The most ambiguous `fraction` of `images` (at least one); `features`: their
    pca_features when already computed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(images)
    if n <= n_clusters:
        raise ValueError(f"{n} images are too few for K-Means with K = {n_clusters}")
    feats = (pca_features(images, n_components=n_components, seed=seed) if features is None
             else features)
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(feats)
    dist = km.transform(feats)  # (N, K) distances to every centroid
    own = dist[np.arange(n), km.labels_]
    second = np.partition(dist, 1, axis=1)[:, 1]
    spread = np.array([np.sqrt(np.mean(own[km.labels_ == c] ** 2)) + 1e-12
                       for c in range(n_clusters)])
    relative = own / spread[km.labels_]  # distance to centroid relative to cluster variance
    margin = own / (second + 1e-12)  # -> 1 when an image sits between two clusters
    sil = silhouette_samples(feats, km.labels_)
    ambiguity = (rankdata(relative) + rankdata(margin) + rankdata(-sil)) / (3 * n)
    count = max(1, int(round(fraction * n)))
    selected = np.argsort(-ambiguity, kind="stable")[:count]
    return ConfoundingSelection(selected, ambiguity, km.labels_.astype(np.int64), sil,
                                own, margin, feats.shape[1])


def few_shot_labels(features: np.ndarray, labels: np.ndarray, class_names: list[str],
                    queries: np.ndarray, pool: np.ndarray, k: int = 5,
                    strategy: str = "similar", seed: int = 0,
                    adjudicator: Adjudicator | None = None,
                    images: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """Adjudicator label index for each query (NO_ANSWER elsewhere, or where it failed).

    `features`: (N, d) embeddings choosing demonstrations; `pool`: indices whose ground-truth
    labels may be shown as demonstrations (the training split). Returns the (N,) label array and
    one verdict record per query.
    """
    adjudicator = adjudicator or OfflineKnnAdjudicator()
    pool = np.asarray(pool, dtype=np.int64)
    thumbs = (np.zeros((len(pool), 1, 1), np.float32) if images is None
              else np.asarray(images)[pool])
    bank = DemonstrationBank(thumbs, [class_names[i] for i in labels[pool]], features[pool],
                             ids=[str(i) for i in pool])
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), NO_ANSWER, dtype=np.int64)
    verdicts = []
    for q in np.asarray(queries, dtype=np.int64):
        demos = [d for d in bank.select(features[q], k + 1, strategy, rng) if d.id != str(q)][:k]
        image = np.zeros((1, 1), np.float32) if images is None else images[q]
        verdict = adjudicator.adjudicate(image, demos, class_names, embedding=features[q])
        if verdict.answer is not None and verdict.answer.label in class_names:
            out[q] = class_names.index(verdict.answer.label)
        verdicts.append({"index": int(q), **verdict.as_record()})
    return out, verdicts
