"""Teaching the user's own classes: few-shot learning curves (issue 23, point 6).

For k = 1, 3, 5, 10, 20 support images per class and 3 seeds (which images are drawn), the
few-shot head of `micagent train --profile fewshot` (workflows/training/fewshot.py: stem
features of the eight dihedral views of every support image, standardised, logistic
regression, calibration and OOD threshold from the support set alone) is fitted in-process on
features computed once, and scored on held-out images; images of material it was never taught
are scored by its OOD test. Three datasets:

- twin: the twin's ten SEM classes, images of one specimen (`micagent twin dataset`, seed 0,
  224 px). Support and held-out images come from different regions of the same specimen: per
  class the regions are ranked and the even ranks give the support pool, the odd ranks the
  held-out images (issue 23's target: "held-out images from other regions of the same
  specimens"). Never taught: the foreign textures.
- foreign: the ten procedural texture families of twins/foreign_textures.py (the foreign
  folder dataset), support pool from seed 0, held-out images from seed 1. Never taught: the
  twin's held-out images.
- nion: Nion's simulator through the bridge (.venv-nion, started as benchmarks/nion_overhead.py
  starts it; without it the benchmark stops and says so), its samples
  flake, amorphous and combined as classes; HAADF frames (128 px, FOV log-uniform in
  50-200 nm, dwell 1 us) at random stage positions, the support pool from the left half of
  the stage (x < 0), the held-out frames from the right half; the flake sample's frames
  within its flake field (FLAKE_FIELD: beyond it the sample is vacuum; `--nion-anywhere`
  draws them over the whole stage, as before). Never taught: the foreign textures.

Printed: per dataset and k, top-1 (mean and standard deviation over the seeds), the share of
held-out known images flagged unknown, the share of never-taught images flagged unknown, the
head's fit seconds (stem features excluded: they are computed once per image); for the twin
also top-1 on the held-out images whose look (the class's sub-kind a region is drawn with,
e.g. Patterned_surface: copolymer, grating, holes or pillars) some support image shows, and on
those whose look no support image shows; then the seconds per stem pass and the load average.

    python -m benchmarks.teach [--per-class 24] [--held-out 10] [--datasets twin,foreign,nion]
                              [--nion-anywhere]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from models.classifier import Classifier
from models.config import FusionConfig
from models.fewshot_head import fit_head
from models.pooled import POOLED_DIM
from models.preprocess import preprocess_batch
from twins.foreign_textures import CLASSES as FOREIGN
from twins.foreign_textures import render
from workflows.training import fewshot

SHOTS = (1, 3, 5, 10, 20)
SEEDS = (0, 1, 2)
NION_SAMPLES = ("flake", "amorphous", "combined")
# nionswift-usim's flake sample (SampleSimulator.RectangleFlakeSample) places its flakes within
# 20 % of its 1000 nm stage of the centre (flakes up to 60 nm wide); beyond is vacuum, frames of
# shot noise alone. Its frames are drawn inside this field unless asked otherwise.
FLAKE_FIELD = 200e-9


@dataclass
class Data:
    """Raw pooled features: support pool (n, 8, d) and held-out (m, d), labels as indices."""

    names: list[str]
    pool: np.ndarray
    pool_y: np.ndarray
    test: np.ndarray
    test_y: np.ndarray
    pool_look: np.ndarray | None = None    # twin: each image's look (a class's sub-kind)
    test_look: np.ndarray | None = None


class Features:
    """Raw pooled stem features of images (every view, or the image as it is)."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.clf = Classifier.create(FusionConfig(baseline="fewshot"), ["a", "b"])
        self.images = 0
        self.seconds = 0.0

    def __call__(self, images: np.ndarray, views: int) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, views, POOLED_DIM) if views > 1 else (0, POOLED_DIM))
        started = time.perf_counter()
        x = preprocess_batch(images, channels=self.clf.config.in_chans,
                             size=self.clf.config.img_size)
        out = np.concatenate([fewshot.pooled_views(self.clf, x[i:i + 16], views)
                              for i in range(0, len(x), 16)])
        self.images += len(x) * views
        self.seconds += time.perf_counter() - started
        return out if views > 1 else out[:, 0]


def fit(pool: np.ndarray, y: np.ndarray, names: list[str], seed: int):
    """The few-shot head as `train_fewshot` fits it (models/fewshot_head.fit_head), on
    precomputed views: (logits of raw features, unknown flags of raw features)."""
    head = fit_head(pool, [names[i] for i in y], names, seed)
    return head.logits, lambda raw: head.ood.score(head.normalise(raw)) > head.ood.threshold


def twin_images(per_class: int) -> tuple[np.ndarray, list[str], list[int], list[str]]:
    from twins.dataset import iter_labelled
    items = list(iter_labelled(per_class, 224, seed=0))
    return (np.stack([it.image for it in items]).astype(np.float32) / 255.0,
            [it.label for it in items], [it.record["region"] for it in items],
            [it.record["look"] for it in items])


def foreign_images(per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    images = [render(kind, 224, np.random.default_rng([seed, c, i]))
              for c, kind in enumerate(FOREIGN) for i in range(per_class)]
    return np.stack(images).astype(np.float32) / 255.0, [k for k in FOREIGN
                                                         for _ in range(per_class)]


def region_split(labels: list[str], regions: list[int]) -> np.ndarray:
    """True for the support pool: the images of each class's even-ranked regions."""
    out = np.zeros(len(labels), dtype=bool)
    for label in set(labels):
        mine = sorted({r for lab, r in zip(labels, regions, strict=True) if lab == label})
        even = set(mine[0::2])
        out |= np.array([lab == label and r in even
                         for lab, r in zip(labels, regions, strict=True)])
    return out


def nion_frames(per_class: int, held_out: int, anywhere: bool = False
                ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(frames, sample names, in support pool) from the bridge, one bridge per sample; the
    flake sample's frames inside its FLAKE_FIELD (`anywhere`: over the whole stage, as before
    2026-12-07, when most of them showed vacuum)."""
    from benchmarks.nion_overhead import start_bridge
    from instruments.devices.frame import ImagingSettings, StagePosition
    from instruments.devices.tem_client import TemClient
    frames, labels, left = [], [], []
    for index, sample in enumerate(NION_SAMPLES):
        rng = np.random.default_rng([7, index])
        process, uri = start_bridge(index)
        host, port = uri.split("://")[1].rsplit(":", 1)
        client = TemClient(host, int(port))
        try:
            limit = client.capabilities().stage_range[0][1]
            if sample == "flake" and not anywhere:
                limit = min(limit, FLAKE_FIELD)
            for j in range(per_class + held_out):
                fov = float(np.exp(rng.uniform(np.log(50e-9), np.log(200e-9))))
                side = -1.0 if j < per_class else 1.0
                half = max(limit - fov / 2, fov / 2)
                x = side * rng.uniform(fov / 2, half)
                y = rng.uniform(-half, half)
                client.move_stage(StagePosition(x=x, y=y))
                client.set_imaging(ImagingSettings(fov=fov, pixels=128, dwell=1e-6,
                                                   detector="HAADF"))
                image = client.acquire().image.astype(np.float32)
                lo, hi = np.percentile(image, (0.5, 99.5))
                frames.append(np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1))
                labels.append(sample)
                left.append(side < 0)
        finally:
            client.close()
            process.kill()
            process.wait(timeout=10)
    return np.stack(frames), labels, np.array(left)


def dataset(names: list[str], labels: list[str], in_pool: np.ndarray, images: np.ndarray,
            features: Features, per_class: int, held_out: int,
            looks: list[str] | None = None) -> Data:
    """Features of at most `per_class` pool and `held_out` held-out images per class."""
    y = np.array([names.index(lab) for lab in labels])
    pool = np.concatenate([np.where(in_pool & (y == c))[0][:per_class]
                           for c in range(len(names))])
    test = np.concatenate([np.where(~in_pool & (y == c))[0][:held_out]
                           for c in range(len(names))])
    look = None if looks is None else np.array(looks)
    return Data(names, features(images[pool], 8), y[pool], features(images[test], 1), y[test],
                None if look is None else look[pool], None if look is None else look[test])


def curve(data: Data, foreign: np.ndarray, shots: tuple[int, ...]) -> list[dict]:
    rows = []
    for k in shots:
        runs = []
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            chosen = np.concatenate([rng.permutation(np.where(data.pool_y == c)[0])[:k]
                                     for c in range(len(data.names))])
            started = time.perf_counter()
            logits, unknown = fit(data.pool[chosen], data.pool_y[chosen], data.names, seed)
            seconds = time.perf_counter() - started
            right = logits(data.test).argmax(1) == data.test_y
            seen = (np.isin(data.test_look, data.pool_look[chosen])
                    if data.test_look is not None else np.ones(len(right), dtype=bool))
            runs.append((float(right.mean()), float(unknown(data.test).mean()),
                         float(unknown(foreign).mean()), seconds,
                         int(np.bincount(data.pool_y[chosen]).min()),
                         float(right[seen].mean()) if seen.any() else np.nan,
                         float(right[~seen].mean()) if (~seen).any() else np.nan,
                         float((~seen).mean())))
        top1, known, never, seconds, least, on_seen, on_unseen, unseen = np.array(runs).T
        rows.append({"k": k, "top1": top1.mean(), "top1_sd": top1.std(), "known": known.mean(),
                     "never": never.mean(), "fit_s": seconds.mean(), "least": int(least.min()),
                     "seen": mean_of(on_seen), "unseen": mean_of(on_unseen),
                     "unseen_share": unseen.mean(),
                     "confused": confused(data, logits(data.test).argmax(1))})
    return rows


def mean_of(values: np.ndarray) -> float:
    """The mean of the values that are not NaN (NaN when none is)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


def confused(data: Data, predicted: np.ndarray) -> str:
    """The held-out images taken for another class (last seed): 'truth -> predicted: n'."""
    pairs = {}
    for truth, guess in zip(data.test_y, predicted, strict=True):
        if truth != guess:
            key = f"{data.names[truth]} -> {data.names[guess]}"
            pairs[key] = pairs.get(key, 0) + 1
    return ", ".join(f"{key}: {n}" for key, n in sorted(pairs.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=24,
                        help="support pool per class (twin: images rendered per class is "
                             "twice this, about half land in the held-out regions)")
    parser.add_argument("--held-out", type=int, default=10)
    parser.add_argument("--datasets", default="twin,foreign,nion")
    parser.add_argument("--shots", default=",".join(map(str, SHOTS)))
    parser.add_argument("--nion-anywhere", action="store_true",
                        help="the flake sample's frames over the whole stage, vacuum included "
                             "(the protocol before 2026-12-07)")
    args = parser.parse_args()
    chosen = args.datasets.split(",")
    shots = tuple(int(k) for k in args.shots.split(","))
    features = Features()
    per, held = args.per_class, args.held_out
    started = time.perf_counter()
    f_images, f_labels = foreign_images(per, 0)
    f_test, f_test_labels = foreign_images(held, 1)
    foreign_data = dataset(list(FOREIGN), f_labels + f_test_labels,
                           np.arange(len(f_labels) + len(f_test_labels)) < len(f_labels),
                           np.concatenate([f_images, f_test]), features,
                           per if "foreign" in chosen else 0, held)
    results = {}
    if "twin" in chosen or "foreign" in chosen:
        twin, labels, regions, looks = twin_images(2 * per)
        in_pool = region_split(labels, regions)
        twin_data = dataset(sorted(set(labels)), labels, in_pool, twin, features,
                            per if "twin" in chosen else 0, held, looks)
        if "twin" in chosen:
            results["twin"] = (twin_data, foreign_data.test)
        if "foreign" in chosen:
            results["foreign"] = (foreign_data, twin_data.test)
    if "nion" in chosen:
        frames, n_labels, left = nion_frames(per, held, args.nion_anywhere)
        results["nion"] = (dataset(list(NION_SAMPLES), n_labels, left, frames, features,
                                   per, held), foreign_data.test)
    print(f"data and stem features: {time.perf_counter() - started:.0f} s, "
          f"{features.seconds / max(features.images, 1) * 1e3:.0f} ms per stem pass "
          f"({features.images} passes, one thread)")
    print("| dataset | classes | shots/class | top-1 (mean +- sd, 3 seeds) | known flagged | "
          "never-taught flagged | fit s | top-1 look seen / unseen (unseen share) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (data, never) in results.items():
        for row in curve(data, never, shots):
            short = f" (pool: {row['least']})" if row["least"] < row["k"] else ""
            print(f"| {name} | {len(data.names)} | {row['k']}{short} | {row['top1']:.3f} +- "
                  f"{row['top1_sd']:.3f} | {row['known']:.3f} of {len(data.test_y)} | "
                  f"{row['never']:.3f} of {len(never)} | {row['fit_s']:.1f} | "
                  + (f"{row['seen']:.3f} / {row['unseen']:.3f} ({row['unseen_share']:.2f})"
                     if data.test_look is not None else "") + " |", flush=True)
        print(f"{name}, {row['k']} shots, held-out images taken for another class (seed "
              f"{SEEDS[-1]}): {row['confused'] or 'none'}")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
