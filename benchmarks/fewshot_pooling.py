"""Texture (second-order) pooling of the frozen stem for the few-shot head (issue 23): measured.

The twin's classes are textures, and the few-shot head pools the stem's three feature maps
(strides 8/16/32) by their means. Texture recognition pools second-order statistics instead:
bilinear / covariance pooling (Lin, RoyChowdhury and Maji, "Bilinear CNN models for
fine-grained visual recognition", ICCV 2015: the Gram matrix of the local features,
signed square root, L2 normalisation) and its compact form (Gao, Beijbom, Zhang and Darrell,
"Compact bilinear pooling", CVPR 2016: Tensor Sketch). Measured here per pooling, on the same
images and split as benchmarks/fewshot_heads.py (twin, one specimen, support pool from each
class's even-ranked regions, held out from its other regions; 8 dihedral support views, one
test view; 3 support draws per k):
- mean (the product's), mean + std;
- covariance per level: centred Gram matrix of the level's channels (the 112- and 320-channel
  levels first projected on RANK fixed random orthonormal directions, data-independent as the
  few-shot support is too small to fit a projection on), upper triangle, signed square root,
  L2-normalised per level; alone, with the means, or one level only;
- Tensor Sketch compact bilinear pooling (SKETCH dimensions per level);
- heads on each: logistic regression C = 10 (the product's), class prototypes (cosine),
  nearest support view (kNN);
then per pooling the 5-shot OOD flags (nearest support view, quantile 0.9 of the support's
leave-one-image-out distances: the product's rule) on held-out known and never-taught (foreign
texture) images, and the scripted operator's session (benchmarks/teach_operator_sweep.py's
loop at alpha 0.05) on the session's 300 survey frames with each pooling as the frame feature.

    python -m benchmarks.fewshot_pooling [--per-class 25] [--foreign 10] [--frames 300]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from benchmarks import fewshot_heads
from benchmarks.fewshot_heads import benchmark_start, draw, ood_shares, standardiser
from benchmarks.teach import foreign_images
from benchmarks.teach_operator_sweep import session, survey_images
from models.fewshot_head import SupportSet
from models.preprocess import preprocess_batch
from models.stem import PretrainedStem
from workflows.training.augment import dihedral
from workflows.training.fewshot import SYMMETRIES

SHOTS = (1, 5, 10)
SEEDS = (0, 1, 2)
RANK = 48
SKETCH = 1024
HEADS = {"logistic C=10": "log10", "prototypes": "proto", "nearest view": "knn"}
Levels = list[torch.Tensor]


def signed_sqrt_l2(x: torch.Tensor) -> torch.Tensor:
    x = x.sign() * x.abs().sqrt()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def projection(channels: int, rank: int) -> torch.Tensor:
    """(channels, rank) fixed random orthonormal columns (seeded by the shape)."""
    g = torch.Generator().manual_seed(1000 * channels + rank)
    return torch.linalg.qr(torch.randn(channels, rank, generator=g))[0]


def covariance(level: torch.Tensor, rank: int) -> torch.Tensor:
    """Upper triangle of the centred Gram matrix of a level's (projected) channels."""
    n, c, h, w = level.shape
    x = level.reshape(n, c, h * w)
    if rank < c:
        x = torch.einsum("ncp,cr->nrp", x, projection(c, rank))
    x = x - x.mean(2, keepdim=True)
    gram = x @ x.transpose(1, 2) / (h * w)
    upper = torch.triu_indices(gram.shape[1], gram.shape[1])
    return gram[:, upper[0], upper[1]]


def tensor_sketch(level: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Compact bilinear pooling (Tensor Sketch) of one level, averaged over positions."""
    n, c, h, w = level.shape
    x = level.reshape(n, c, h * w).transpose(1, 2)
    g = torch.Generator().manual_seed(seed)
    spectra = []
    for _ in range(2):
        sketch = torch.zeros(c, dim)
        sketch[torch.arange(c), torch.randint(0, dim, (c,), generator=g)] = (
            torch.randint(0, 2, (c,), generator=g).float() * 2 - 1)
        spectra.append(torch.fft.rfft(x @ sketch, dim=-1))
    return torch.fft.irfft(spectra[0] * spectra[1], n=dim, dim=-1).mean(1)


def means(levels: Levels) -> torch.Tensor:
    return torch.cat([lv.mean((2, 3)) for lv in levels], 1)


def covariances(levels: Levels, ranks=(40, RANK, RANK)) -> torch.Tensor:
    return torch.cat([signed_sqrt_l2(covariance(lv, r)) for lv, r in zip(levels, ranks,
                                                                          strict=True) if r], 1)


POOLINGS: dict[str, Callable[[Levels], torch.Tensor]] = {
    "mean (product)": means,
    "mean + std": lambda lv: torch.cat([means(lv)] + [x.std((2, 3)) for x in lv], 1),
    f"covariance (40/{RANK}/{RANK})": covariances,
    "covariance + mean": lambda lv: torch.cat([covariances(lv),
                                               signed_sqrt_l2(means(lv))], 1),
    "covariance, stride-8 level only": lambda lv: covariances(lv, (40, 0, 0)),
    "covariance, stride-16 level only": lambda lv: covariances(lv, (0, 64, 0)),
    "covariance, stride-32 level only": lambda lv: covariances(lv, (0, 0, 64)),
    f"Tensor Sketch ({SKETCH}/level)": lambda lv: torch.cat(
        [signed_sqrt_l2(tensor_sketch(x, SKETCH, i)) for i, x in enumerate(lv)], 1),
}
OPERATOR = ("mean (product)", f"covariance (40/{RANK}/{RANK})", "covariance + mean")


@dataclass(frozen=True)
class AnySupport(SupportSet):
    """The session's support set for features of any width."""

    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def add(self, feature: np.ndarray, label: str) -> AnySupport:
        row = np.asarray(feature, dtype=np.float32).reshape(1, -1)
        rows = self.features if len(self) else np.zeros((0, row.shape[1]), np.float32)
        return AnySupport(np.concatenate([rows, row]), (*self.labels, label))


def pooled(stem: PretrainedStem, images: np.ndarray, views: int) -> dict[str, np.ndarray]:
    """{pooling: (N, views, d)} of the stem's levels under the first `views` symmetries."""
    x = preprocess_batch(images, channels=1, size=224)
    out: dict[str, list] = {name: [] for name in POOLINGS}
    with torch.no_grad():
        for i in range(0, len(x), 8):
            per_view = [[lv.float() for lv in stem(dihedral(x[i:i + 8], k))]
                        for k in SYMMETRIES[:views]]
            for name, pool in POOLINGS.items():
                out[name].append(np.stack([pool(lv).numpy() for lv in per_view], 1))
    return {name: np.concatenate(v).astype(np.float64) for name, v in out.items()}


def scorer(head: str, support: np.ndarray, y: np.ndarray):
    """Class scores of queries: the nearest support view of each class (kNN), or
    benchmarks/fewshot_heads.py's logistic regression / prototypes."""
    if head != "knn":
        return fewshot_heads.scorer(head, support, y)
    points, owner = support.reshape(-1, support.shape[-1]), np.repeat(y, support.shape[1])
    return lambda q: np.stack([(q @ points[owner == c].T).max(1) for c in range(y.max() + 1)],
                              1)


def evaluate(feats: np.ndarray, y: np.ndarray, looks: np.ndarray, pool: np.ndarray,
             test: np.ndarray, head: str, k: int) -> tuple[float, float, float]:
    """Mean over the draws of top-1, top-1 on looks the support shows / does not show."""
    rows = []
    for seed in SEEDS:
        chosen = draw(pool, y, k, seed)
        norm = standardiser(feats[chosen])
        right = scorer(head, norm(feats[chosen]), y[chosen])(
            norm(feats[test][:, 0])).argmax(1) == y[test]
        seen = np.isin(looks[test], looks[chosen])
        rows.append([right.mean(), right[seen].mean() if seen.any() else np.nan,
                     right[~seen].mean() if (~seen).any() else np.nan])
    return tuple(np.nanmean(np.array(rows), 0))


def ood_flags(feats: np.ndarray, never: np.ndarray, y: np.ndarray, pool: np.ndarray,
              test: np.ndarray, k: int) -> tuple[float, float]:
    """Shares of held-out known / never-taught images flagged at k shots (product's rule)."""
    return tuple(np.mean([ood_shares(feats[chosen], feats[test][:, 0], never)
                          for chosen in (draw(pool, y, k, seed) for seed in SEEDS)], 0))


def main() -> None:
    args, started, (images, y, looks, pool, test), stem = benchmark_start(
        __doc__, ("--frames", 300))
    feats = pooled(stem, images, 8)
    never = pooled(stem, foreign_images(args.foreign, 1)[0], 1)
    images, truths, _ = survey_images(args.frames)
    frames = np.stack(images)
    survey = pooled(stem, frames, 1)
    print(f"{len(images)} twin images ({len(pool)} support pool, {len(test)} held out), "
          f"{len(never['mean (product)'])} never-taught, {len(frames)} "
          f"survey frames; features in {time.perf_counter() - started:.0f} s\n")
    print("| pooling | dim | head | " + " | ".join(f"k={k}" for k in SHOTS)
          + " | k=5 look seen / unseen | k=5 OOD flagged known / never-taught |")
    print("|---|---|---|" + "---|" * len(SHOTS) + "---|---|")
    for name, f in feats.items():
        known, foreign = ood_flags(f, never[name][:, 0], y, pool, test, 5)
        for head_name, head in HEADS.items():
            cells = [evaluate(f, y, looks, pool, test, head, k) for k in SHOTS]
            k5 = cells[SHOTS.index(5)]
            print(f"| {name} | {f.shape[-1]} | {head_name} | "
                  + " | ".join(f"{c[0]:.3f}" for c in cells)
                  + f" | {k5[1]:.2f} / {k5[2]:.2f} | {known:.2f} / {foreign:.2f} |", flush=True)
    print("\n| pooling (operator session, alpha 0.05) | answers | 0.95 reached | best 50-frame "
          "window | decided alone: accuracy (frames) | per 50 frames: asked / unattended / "
          "top-1 |")
    print("|---|---|---|---|---|---|")
    for name in OPERATOR:
        r = session(survey[name][:, 0], truths, 0.05, support=AnySupport())
        blocks = "; ".join(f"{a:.2f} / {u:.2f} / {t:.2f}" for a, u, t in r["blocks"])
        print(f"| {name} | {r['answers']} | {r['reached'] or 'never'} | {r['best']:.2f} "
              f"| {r['alone']:.3f} ({r['alone_n']}) | {blocks} |", flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
