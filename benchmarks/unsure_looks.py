"""Shifted looks at unsure survey tiles, outside the agent (issue 24, "the region's other
tiles"): each tile the bundled classifier is unsure of as taken (top probability below the
policy's 0.9) is imaged again at the same field of view and dwell, its centre shifted by
`--shift` of the FOV along the four diagonals, and each look classified on its own; the
predictions are pooled (mean probabilities) with the tile's as taken or with its eight
dihedral views (`Classifier.classify(views=8)`, what the agent does now). Two looks are the
first diagonal pair. Zoom-out changes the scale the classifier reads; these looks keep it.

Prints top-1 over all tiles and over the unsure ones for each pooling, frames fixed and broken
against the tile as taken, the share of tiles that would be re-imaged and the extra frames
(dose) per tile.

    python -m benchmarks.unsure_looks [--seeds 0-9] [--tiles 60] [--shift 0.25]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agent.context_evidence import RELOOK_DIAGONALS, RELOOK_SHIFT  # noqa: E402
from benchmarks.unsure_views import CONFIDENCE  # noqa: E402
from instruments.devices.frame import ImagingSettings, StagePosition  # noqa: E402
from models.classifier import Classifier  # noqa: E402
from twins.microscope import TwinMicroscope  # noqa: E402
from workflows.session_assembly import BUNDLED_MODEL  # noqa: E402

torch.set_num_threads(1)
FOV = 20e-6
DIAGONALS = RELOOK_DIAGONALS                            # the first two: the two-look variant
POOLINGS = ("as taken", "8 views", "as taken + 2 looks", "as taken + 4 looks",
            "8 views + 4 looks")


def probabilities(classifier: Classifier, image: np.ndarray, views: int = 1) -> np.ndarray:
    return np.asarray(classifier.classify([image], views=views)[0].probabilities, dtype=float)


def pooled_labels(classifier: Classifier, twin: TwinMicroscope, centre: StagePosition,
                  image: np.ndarray, taken: np.ndarray, shift: float) -> dict[str, int]:
    """The class index each pooling gives an unsure tile at `centre` (imaged as `image`,
    classified as `taken`)."""
    views = probabilities(classifier, image, views=8)
    looks = []
    for dx, dy in DIAGONALS:
        twin.move_stage(StagePosition(x=centre.x + dx * shift * FOV,
                                      y=centre.y + dy * shift * FOV))
        looks.append(probabilities(classifier, twin.acquire().image))
    pools = {"as taken": [taken], "8 views": [views], "as taken + 2 looks": [taken, *looks[:2]],
             "as taken + 4 looks": [taken, *looks], "8 views + 4 looks": [views, *looks]}
    return {name: int(np.mean(pools[name], axis=0).argmax()) for name in POOLINGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--tiles", type=int, default=60)
    parser.add_argument("--shift", type=float, default=RELOOK_SHIFT,
                        help="centre shift along each diagonal axis, a fraction of the FOV")
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    args = parser.parse_args()
    lo, hi = (int(v) for v in args.seeds.split("-"))
    classifier = Classifier.load(args.model)
    names = classifier.class_names
    right = {name: [] for name in POOLINGS}
    unsure: list[bool] = []
    for seed in range(lo, hi + 1):
        twin = TwinMicroscope(seed=seed)
        twin.set_imaging(ImagingSettings(fov=FOV, pixels=256, dwell=2e-6))
        centres = twin.specimen.survey_centres(FOV)
        for i in np.linspace(0, len(centres) - 1, args.tiles).astype(int):
            centre = centres[i]
            twin.move_stage(centre)
            image = twin.acquire().image
            truth = names.index(twin.specimen.label_at(centre.x, centre.y))
            first = classifier.classify([image])[0]
            unsure.append(first.confidence < CONFIDENCE)
            taken = np.asarray(first.probabilities, dtype=float)
            labels = (pooled_labels(classifier, twin, centre, image, taken, args.shift)
                      if unsure[-1]
                      else dict.fromkeys(POOLINGS, names.index(first.label)))
            for name in POOLINGS:
                right[name].append(labels[name] == truth)
            if unsure[-1] and len(set(labels.values())) > 1:
                print(f"seed {seed} {names[truth]}: "
                      + ", ".join(f"{n} {names[v]}" for n, v in labels.items()), flush=True)
    mask = np.array(unsure)
    right_as_taken = np.array(right["as taken"])
    print(f"tiles {len(mask)}, unsure {mask.sum()} ({mask.mean():.1%} re-imaged); extra "
          f"frames per tile: 2 looks {2 * mask.mean():.3f}, 4 looks {4 * mask.mean():.3f}")
    for name in POOLINGS:
        ok = np.array(right[name])
        print(f"{name}: all {ok.mean():.4f}, unsure {ok[mask].mean():.4f}, "
              f"fixed {int((ok & ~right_as_taken).sum())}, "
              f"broke {int((~ok & right_as_taken).sum())}")


if __name__ == "__main__":
    main()
