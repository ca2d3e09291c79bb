"""Should a rescan's reading replace the first one, or be pooled with it?

    python -m benchmarks.rescan_pooling [--model DIR] [--per-class 80] [--offset 0]

Frames: fresh twin benchmark draws past the model's calibration frames' first index (as
`workflows/training/risk_calibration.py` draws them; `--offset` moves further on, to frames
neither saw). On the frames the default policy escalates (top probability under 0.9 or a
conformal set of several classes), each rescan kind re-images the same field as the rescan
would (dwell x4, focus at the region's true focus, FOV x0.7). Printed per kind, against the
classifier's first reading: accuracy, frames fixed and frames broken when the rescan's reading
replaces the first (what the agent did before) and when the two are pooled
(`Classifier.pooled`, what it does now).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from models.classifier import Classifier
from models.risk import RiskControl
from twins.dataset import iter_labelled
from twins.microscope import TwinMicroscope
from workflows.session_assembly import BUNDLED_MODEL
from workflows.training.risk_calibration import (
    ESCALATED_BELOW,
    RESCAN_KINDS,
    rescan_images,
)


def _row(kind: str, how: str, before: np.ndarray, after: np.ndarray) -> str:
    return (f"| {kind} | {how} | {after.mean():.3f} | {int((~before & after).sum())} | "
            f"{int((before & ~after).sum())} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--offset", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clf = Classifier.load(args.model)
    control = RiskControl.load(args.model)
    source = control.source if control is not None else {}
    seed, first = source.get("seed", 0), source.get("first_index", 500) + args.offset
    scope = TwinMicroscope(seed=seed, instrument_id="twin-risk-calibration")
    items = list(iter_labelled(args.per_class, 224, seed, microscope=scope, first=first))
    firsts = clf.classify([it.image for it in items])
    escalated = [i for i, p in enumerate(firsts)
                 if p.confidence < ESCALATED_BELOW or len(p.conformal_set) > 1]
    right_first = np.asarray([firsts[i].label == items[i].label for i in escalated])
    print(f"model {args.model}; frames {len(items)} (seed {seed}, indices from {first}); "
          f"escalated {len(escalated)}, first reading right on {right_first.mean():.3f}\n")
    print("| kind | reading kept | accuracy | fixed | broken |\n|---|---|---|---|---|")
    for kind in RESCAN_KINDS:
        again = clf.classify(rescan_images(scope, [items[i] for i in escalated], kind))
        labels = [items[i].label for i in escalated]
        replaced = np.asarray([p.label == t for p, t in zip(again, labels, strict=True)])
        pooled = np.asarray([clf.pooled(p, firsts[i].probabilities, 1).label == t
                             for p, i, t in zip(again, escalated, labels, strict=True)])
        print(_row(kind, "replace", right_first, replaced))
        print(_row(kind, "pooled", right_first, pooled))


if __name__ == "__main__":
    main()
