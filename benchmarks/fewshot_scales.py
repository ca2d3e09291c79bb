"""Multi-scale input for the few-shot head (issue 23): the frame at several sizes, measured.

Each twin class spans zooms 0.5-4 and survey fields (twins/dataset.py), so a held-out image
often shows its texture at another scale than every support image. Here the stem sees each
image resized to SIZES px (224 is the product's input; the stem is fully convolutional, the
level means pool whatever grid it gives), its multi-scale mean-pooled features (the product's
472) at each size, and the few-shot head (standardised, L2-normalised, logistic regression
C = 10, benchmarks/fewshot_heads.py) is fitted and tested with:
- one size for support and test;
- the three sizes 112/224/448 concatenated; the features averaged over all sizes;
- every size as an extra support view (scale augmentation), the test image at 224, or the
  test's logits averaged over every size (SIZES passes per classified frame, ~7x the stem
  time of one 224 px pass).
Same images and split as benchmarks/fewshot_heads.py (twin, one specimen, support pool from
each class's even-ranked regions, held out from its other regions), one view (no dihedral
symmetries, to isolate scale), 3 support draws per k; the product's 8-dihedral-view head on
these images is the first row of benchmarks/fewshot_pooling.py. Also the 5-shot OOD flags
(the product's rule) on held-out known / never-taught (foreign texture) images.

    python -m benchmarks.fewshot_scales [--per-class 25] [--foreign 10]
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.fewshot_heads import (
    benchmark_start,
    draw,
    ood_shares,
    scorer,
    standardiser,
)
from benchmarks.teach import foreign_images
from models.pooled import PooledStemEncoder
from models.preprocess import preprocess_batch
from models.stem import PretrainedStem

SIZES = (112, 160, 224, 316, 448)
SHOTS = (1, 5, 10)
SEEDS = (0, 1, 2)


def sized(stem: PretrainedStem, images: np.ndarray) -> np.ndarray:
    """(N, len(SIZES), 472) mean-pooled stem features of every image at every size."""
    x = preprocess_batch(images, channels=1, size=224)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 4):
            out.append(torch.stack([PooledStemEncoder.pool(stem(
                F.interpolate(x[i:i + 4], size=s, mode="bilinear", align_corners=False,
                              antialias=True) if s != 224 else x[i:i + 4]))
                for s in SIZES], 1).numpy())
    return np.concatenate(out).astype(np.float64)


def variants(f: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (support views (N, V, d), test views (N, W, d))}; test logits average over W."""
    at = {s: f[:, i:i + 1] for i, s in enumerate(SIZES)}
    concat = np.concatenate([at[112], at[224], at[448]], -1)
    average = f.mean(1, keepdims=True)
    out = {f"{s} px (product: 224)": (at[s], at[s]) for s in SIZES}
    out |= {"112/224/448 concatenated": (concat, concat),
            "averaged over the sizes": (average, average),
            "every size as support view, test at 224": (f, at[224]),
            "every size as support view, test logits averaged": (f, f)}
    return out


def top1(support: np.ndarray, tests: np.ndarray, y: np.ndarray, pool: np.ndarray,
         test: np.ndarray, k: int) -> float:
    accs = []
    for seed in SEEDS:
        chosen = draw(pool, y, k, seed)
        norm = standardiser(support[chosen])
        score = scorer("log10", norm(support[chosen]), y[chosen])
        logits = np.mean([score(norm(tests[test][:, v])) for v in range(tests.shape[1])], 0)
        accs.append((logits.argmax(1) == y[test]).mean())
    return float(np.mean(accs))


def flags(support: np.ndarray, tests: np.ndarray, never: np.ndarray, y: np.ndarray,
          pool: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """5-shot shares of held-out known / never-taught images flagged (first test view)."""
    return tuple(np.mean([ood_shares(support[chosen], tests[test][:, 0], never[:, 0])
                          for chosen in (draw(pool, y, 5, seed) for seed in SEEDS)], 0))


def main() -> None:
    args, started, (images, y, _, pool, test), stem = benchmark_start(__doc__)
    twin = variants(sized(stem, images))
    foreign = variants(sized(stem, foreign_images(args.foreign, 1)[0]))
    print(f"{len(images)} twin images ({len(pool)} support pool, {len(test)} held out); "
          f"features in {time.perf_counter() - started:.0f} s\n")
    print("| input sizes | " + " | ".join(f"k={k}" for k in SHOTS)
          + " | k=5 OOD flagged known / never-taught |")
    print("|---|" + "---|" * len(SHOTS) + "---|")
    for name, (support, tests) in twin.items():
        cells = [top1(support, tests, y, pool, test, k) for k in SHOTS]
        known, never = flags(support, tests, foreign[name][1], y, pool, test)
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells)
              + f" | {known:.2f} / {never:.2f} |", flush=True)


if __name__ == "__main__":
    main()
