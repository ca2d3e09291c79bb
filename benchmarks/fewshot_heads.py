"""Why the few-shot head stops short of 0.95 on the twin: features, pooling, head, views, OOD rule.

Renders PER_CLASS twin images per class of one specimen (seed 0; support pool from each class's
even-ranked regions, held-out images from its odd-ranked ones, as benchmarks/teach.py does),
the foreign textures (twins/foreign_textures.py, FOREIGN per class) as never-taught material,
and computes the frozen stem's three levels (strides 8/16/32) once per image under 12 views:
the eight dihedral symmetries and the four quadrants enlarged 2x (a zoom-in). Then, for
k = 1, 5, 10 shots and 3 support draws, top-1 on the held-out images for:
- pooling: per-level mean (the product's), GeM (p = 3), max, mean + std with a square root,
  the coarsest level(s) only;
- head: logistic regression (C = 10, the product's; C = 1), class prototypes (cosine);
- support views: 8 dihedral (the product's), 12 (with the zoom-ins); test-time: one view (the
  product's) or the mean logits over the 8 dihedral views;
then top-1 on held-out images whose look (the class's sub-kind) the support shows and those
whose look it does not; and the OOD rules (share of held-out known / never-taught images
flagged) for the nearest-support distance on the standardised features (the product's) and
on the raw L2-normalised features, quantiles 0.9 / 0.95.

    python -m benchmarks.fewshot_heads [--per-class 25] [--foreign 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from benchmarks.teach import foreign_images, region_split, twin_images
from models.preprocess import preprocess_batch
from models.stem import PretrainedStem
from workflows.training.augment import dihedral

SHOTS = (1, 5, 10)
SEEDS = (0, 1, 2)
VARIANTS = {  # name: (pooled features, head, support views, test-time views)
    "mean, logistic C=10, 8 views (product)": ("mean", "log10", 8, 1),
    "mean, logistic C=10, 8 views, 8-view test": ("mean", "log10", 8, 8),
    "mean, logistic C=10, 12 views (zoom-ins)": ("mean", "log10", 12, 1),
    "mean, logistic C=1": ("mean", "log1", 8, 1),
    "mean, prototypes (cosine)": ("mean", "proto", 8, 1),
    "GeM p=3": ("gem", "log10", 8, 1),
    "max": ("max", "log10", 8, 1),
    "sqrt(mean + std)": ("sqrt_meanstd", "log10", 8, 1),
    "mean, stride-32 level only": ("mean32", "log10", 8, 1),
    "mean, stride-16 + 32 levels": ("mean16_32", "log10", 8, 1),
}


def views(x: torch.Tensor) -> list[torch.Tensor]:
    half = x.shape[-1] // 2
    zooms = [F.interpolate(x[..., a:a + half, b:b + half], size=x.shape[-1], mode="bilinear",
                           align_corners=False) for a in (0, half) for b in (0, half)]
    return [dihedral(x, k) for k in range(8)] + zooms


def stem_pools(stem: PretrainedStem, images: np.ndarray) -> dict[str, np.ndarray]:
    """{pooling: (N, 12 views, d)} for every pooling the variants use."""
    out: dict[str, list[np.ndarray]] = {}
    x = preprocess_batch(images, channels=1, size=224)
    with torch.no_grad():
        for view in views(x):
            levels = [lv.float() for lv in stem(view)]
            mean = [lv.mean((2, 3)) for lv in levels]
            pools = {"mean": torch.cat(mean, 1),
                     "gem": torch.cat([lv.clamp_min(1e-6).pow(3).mean((2, 3)).pow(1 / 3)
                                       for lv in levels], 1),
                     "max": torch.cat([lv.amax((2, 3)) for lv in levels], 1),
                     "sqrt_meanstd": torch.cat(mean + [lv.std((2, 3)) for lv in levels], 1
                                               ).clamp_min(0).sqrt(),
                     "mean32": mean[2], "mean16_32": torch.cat(mean[1:], 1)}
            for name, value in pools.items():
                out.setdefault(name, []).append(value.numpy().astype(np.float64))
    return {name: np.stack(v, 1) for name, v in out.items()}


def features(stem: PretrainedStem, images: np.ndarray) -> dict[str, np.ndarray]:
    parts = [stem_pools(stem, images[i:i + 16]) for i in range(0, len(images), 16)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def standardiser(support: np.ndarray):
    flat = support.reshape(-1, support.shape[-1])
    mean, scale = flat.mean(0), flat.std(0)
    scale[scale < 1e-8] = 1.0
    return lambda z: unit((z - mean) / scale)


def unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def scorer(head: str, s: np.ndarray, y: np.ndarray):
    if head == "proto":
        protos = unit(np.stack([s[y == c].reshape(-1, s.shape[-1]).mean(0)
                                for c in range(y.max() + 1)]))
        return lambda q: q @ protos.T
    fit = LogisticRegression(C=10.0 if head == "log10" else 1.0, max_iter=3000).fit(
        s.reshape(-1, s.shape[-1]), np.repeat(y, s.shape[1]))
    return fit.decision_function


def draw(pool: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(pool[y[pool] == c])[:k] for c in range(y.max() + 1)])


def nearest(support: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-image-out distances of the support (first view to all others' views) and
    the queries' distances to the nearest support view (unit vectors, squared)."""
    points = support.reshape(-1, support.shape[-1])
    owner = np.repeat(np.arange(len(support)), support.shape[1])
    loo = np.maximum(2 - 2 * support[:, 0] @ points.T, 0)
    loo[owner[None] == np.arange(len(support))[:, None]] = np.inf
    return loo.min(1), np.maximum(2 - 2 * queries @ points.T, 0).min(1)


def twin_split(per_class: int) -> tuple[np.ndarray, ...]:
    """(images, class indices, looks, support pool indices, held-out indices) of PER_CLASS
    twin images per class of one specimen, split by region (benchmarks/teach.region_split)."""
    images, labels, regions, looks = twin_images(per_class)
    names = sorted(set(labels))
    in_pool = region_split(labels, regions)
    return (images, np.array([names.index(lab) for lab in labels]), np.array(looks),
            np.where(in_pool)[0], np.where(~in_pool)[0])


def ood_shares(support: np.ndarray, known: np.ndarray, never: np.ndarray,
               quantile: float = 0.9) -> tuple[float, float]:
    """Shares of known / never-taught queries flagged by the product's rule: nearest support
    view in the support's standardisation, beyond `quantile` of its leave-one-image-out
    distances."""
    norm = standardiser(support)
    loo, near_known = nearest(norm(support), norm(known))
    _, near_never = nearest(norm(support), norm(never))
    t = np.quantile(loo, quantile)
    return float((near_known > t).mean()), float((near_never > t).mean())


def benchmark_start(description: str, *flags: tuple[str, int]
                    ) -> tuple[argparse.Namespace, float, tuple[np.ndarray, ...], PretrainedStem]:
    """What the few-shot benchmarks start with: `--per-class` and `--foreign` (and `flags`,
    (name, default) integer options) parsed, one torch thread, the start time, the twin split
    (`twin_split`) and the pretrained stem."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    for name, default in (("--per-class", 25), ("--foreign", 10), *flags):
        parser.add_argument(name, type=int, default=default)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    return args, started, twin_split(args.per_class), PretrainedStem().eval()


def main() -> None:
    args, started, (images, y, looks, pool, test), stem = benchmark_start(__doc__)
    feats = features(stem, images)
    foreign = features(stem, foreign_images(args.foreign, 0)[0])["mean"][:, 0]
    print(f"{len(images)} twin images ({len(pool)} support pool, {len(test)} held out), "
          f"{len(foreign)} foreign; features in {time.perf_counter() - started:.0f} s")
    print("| variant | " + " | ".join(f"k={k}" for k in SHOTS) + " |")
    print("|---|" + "---|" * len(SHOTS))
    for name, (pooling, head, n_views, tta) in VARIANTS.items():
        cells = []
        for k in SHOTS:
            accs = []
            for seed in SEEDS:
                chosen = draw(pool, y, k, seed)
                norm = standardiser(feats[pooling][chosen][:, :n_views])
                score = scorer(head, norm(feats[pooling][chosen][:, :n_views]), y[chosen])
                q = norm(feats[pooling][test])
                logits = np.mean([score(q[:, v]) for v in range(tta)], 0)
                accs.append((logits.argmax(1) == y[test]).mean())
            cells.append(f"{np.mean(accs):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    looks_arr = looks
    print("\n| k | top-1 look seen | top-1 look unseen | unseen share | "
          "OOD std q0.9 known/never | std q0.95 | raw q0.9 | raw q0.95 |")
    print("|---|---|---|---|---|---|---|---|")
    for k in SHOTS:
        rows = []
        for seed in SEEDS:
            chosen = draw(pool, y, k, seed)
            support = feats["mean"][chosen][:, :8]
            norm = standardiser(support)
            right = scorer("log10", norm(support), y[chosen])(
                norm(feats["mean"][test][:, 0])).argmax(1) == y[test]
            seen = np.isin(looks_arr[test], looks_arr[chosen])
            row = [right[seen].mean() if seen.any() else np.nan,
                   right[~seen].mean() if (~seen).any() else np.nan, (~seen).mean()]
            for space in (norm, unit):
                loo, known = nearest(space(support), space(feats["mean"][test][:, 0]))
                _, never = nearest(space(support), space(foreign))
                for quantile in (0.9, 0.95):
                    t = np.quantile(loo, quantile)
                    row += [(known > t).mean(), (never > t).mean()]
            rows.append(row)
        m = np.nanmean(np.array(rows, dtype=float), 0)
        ood = " | ".join(f"{m[i]:.2f} / {m[i + 1]:.2f}" for i in range(3, 11, 2))
        print(f"| {k} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.2f} | {ood} |")


if __name__ == "__main__":
    main()
