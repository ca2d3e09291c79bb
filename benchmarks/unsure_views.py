"""Test-time augmentation on survey tiles of twin specimens, outside the agent: the bundled
classifier's top-1 on each tile as taken and averaged over its eight dihedral views
(`Classifier.classify(views=8)`), over all tiles and over those it is unsure of as taken (top
probability below the policy's 0.9). Prints the figures and the tiles whose label changed.

    python -m benchmarks.unsure_views [--seeds 0-19] [--tiles 30] [--model CKPT]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from instruments.devices.frame import ImagingSettings  # noqa: E402
from models.classifier import Classifier  # noqa: E402
from twins.microscope import TwinMicroscope  # noqa: E402
from workflows.session_assembly import BUNDLED_MODEL  # noqa: E402

torch.set_num_threads(1)
CONFIDENCE = 0.9


def tiles(seed: int, count: int):
    """`count` survey tiles spread over twin specimen `seed` at the default imaging, with
    their ground-truth labels."""
    twin = TwinMicroscope(seed=seed)
    twin.set_imaging(ImagingSettings(fov=20e-6, pixels=256, dwell=2e-6))
    centres = twin.specimen.survey_centres(20e-6)
    for i in np.linspace(0, len(centres) - 1, count).astype(int):
        twin.move_stage(centres[i])
        yield twin.acquire().image, twin.specimen.label_at(centres[i].x, centres[i].y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-19")
    parser.add_argument("--tiles", type=int, default=30)
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    args = parser.parse_args()
    lo, hi = (int(v) for v in args.seeds.split("-"))
    classifier = Classifier.load(args.model)
    rows = []
    for seed in range(lo, hi + 1):
        for image, truth in tiles(seed, args.tiles):
            taken = classifier.classify([image])[0]
            views = classifier.classify([image], views=8)[0]
            rows.append((taken.label == truth, views.label == truth,
                         taken.confidence < CONFIDENCE))
            if taken.label != views.label:
                print(f"seed {seed} {truth}: as taken {taken.label} ({taken.confidence:.2f}), "
                      f"8 views {views.label} ({views.confidence:.2f})", flush=True)
    taken_ok, views_ok, unsure = (np.array(c) for c in zip(*rows, strict=True))
    print(f"tiles {len(rows)}: top-1 as taken {taken_ok.mean():.3f}, "
          f"8 views {views_ok.mean():.3f}")
    fixed, broke = (int((a & ~b)[unsure].sum()) for a, b in ((views_ok, taken_ok),
                                                             (taken_ok, views_ok)))
    print(f"unsure as taken {int(unsure.sum())}: as taken {taken_ok[unsure].mean():.3f}, "
          f"8 views {views_ok[unsure].mean():.3f} (fixed {fixed}, broke {broke})")


if __name__ == "__main__":
    main()
