"""Classifier alone on twin survey tiles, several checkpoints on the same frames (issue 24).

Each seed's twin is surveyed at the default run's settings (20 um, 256 px), `--tiles` fields
spread over the specimen as the session spreads them; every checkpoint classifies the same
frames (one view, no escalation). Prints top-1 per seed and over all, and the share of frames
each checkpoint reads at a top probability of 0.9 or more with its accuracy there.

    python -m benchmarks.stem_probe --seeds 1-19 --tiles 60 \
        --model before=PATH_A --model after=models/bundled/sem_twin
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.teach_operator_sweep import survey_images
from models.classifier import Classifier


def seeds_of(text: str) -> list[int]:
    if "-" in text:
        first, last = map(int, text.split("-"))
        return list(range(first, last + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-19")
    parser.add_argument("--tiles", type=int, default=60)
    parser.add_argument("--model", action="append", required=True,
                        help="NAME=CHECKPOINT (repeat)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {name: Classifier.load(path)
              for name, path in (m.split("=", 1) for m in args.model)}
    right = {name: [] for name in models}
    sure = {name: [] for name in models}
    print("| seed | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    for seed in seeds_of(args.seeds):
        started = time.perf_counter()
        frames, truths, _ = survey_images(args.tiles, seed)
        cells = []
        for name, clf in models.items():
            predictions = clf.classify(frames)
            ok = [p.label == t for p, t in zip(predictions, truths, strict=True)]
            right[name] += ok
            sure[name] += [float(p.probabilities.max()) >= 0.9 for p in predictions]
            cells.append(f"{np.mean(ok):.3f}")
        print(f"| {seed} | " + " | ".join(cells) + f" |  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    print(f"| all ({len(next(iter(right.values())))} frames) | "
          + " | ".join(f"**{np.mean(r):.4f}**" for r in right.values()) + " |")
    for name in models:
        ok, high = np.array(right[name]), np.array(sure[name])
        print(f"{name}: top probability >= 0.9 on {high.mean():.1%} of frames, right there "
              f"{ok[high].mean():.4f}; below it right {ok[~high].mean():.4f}")


if __name__ == "__main__":
    main()
