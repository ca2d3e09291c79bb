"""Calibrate a twin-trained model's decisions for `micagent run --target-risk` (models/risk.py)
and store the result with it (`risk_control.json` in the checkpoint folder).

Calibration frames: fresh draws of the twin benchmark the model was trained on (image indices
from `first` on, past those of its dataset, so none was seen in training or validation),
classified by the model. On the frames the default policy would escalate (not confident: top
probability below `ESCALATED_BELOW` or a conformal set of several classes), each rescan kind
is measured by re-imaging the same field as the rescan would (agent/nodes/rescan.py): `dwell`
x4, `focus` at the region's true focus (what a successful focus search reaches: an upper
bound of that kind's gain), `fov` x0.7 around the same centre; its gain is how many of those
frames it makes right minus how many it makes wrong.

    python -m workflows.training.risk_calibration models/bundled/sem_twin --per-class 80
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace

import numpy as np

from instruments.devices.frame import ImagingSettings, StagePosition
from models.classifier import Classifier
from models.risk import EscalationGain, RiskControl
from twins.dataset import iter_labelled
from twins.microscope import TwinMicroscope

ESCALATED_BELOW = 0.9
RESCAN_KINDS = ("dwell", "focus", "fov")


def _rescan_settings(record: dict) -> dict[str, ImagingSettings]:
    """The settings each rescan kind would image the calibration field with."""
    base = ImagingSettings(fov=record["fov"], pixels=record["pixels"], dwell=record["dwell"],
                           detector=record["detector"], defocus=record["defocus"])
    return {"dwell": replace(base, dwell=min(base.dwell * 4, 1e-4)),
            "focus": replace(base, defocus=record["defocus"] - record["focus_error"]),
            "fov": replace(base, fov=base.fov * 0.7)}


def rescan_images(scope: TwinMicroscope, items: list, kind: str) -> list[np.ndarray]:
    """Each labelled item's field imaged again as a rescan of `kind` would image it."""
    images = []
    for item in items:
        scope.move_stage(StagePosition(**item.record["stage"]))
        scope.set_imaging(_rescan_settings(item.record)[kind])
        images.append(scope.acquire().image)
    return images


def _gain(before: np.ndarray, after: np.ndarray) -> EscalationGain:
    return EscalationGain(n=len(before), fixed=int((~before & after).sum()),
                          broken=int((before & ~after).sum()),
                          accuracy_before=float(before.mean()) if len(before) else 0.0,
                          accuracy_after=float(after.mean()) if len(after) else 0.0)


def calibrate_risk(clf: Classifier, per_class: int, first: int, seed: int = 0,
                   size: int = 224) -> RiskControl:
    """Risk control from `per_class` fresh twin draws per class (indices from `first`)."""
    scope = TwinMicroscope(seed=seed, instrument_id="twin-risk-calibration")
    items = list(iter_labelled(per_class, size, seed, microscope=scope, first=first))
    truth = np.asarray(clf.label_index([it.label for it in items]).cpu())
    preds = clf.classify([it.image for it in items])
    top = np.asarray([int(np.argmax(p.probabilities)) for p in preds])
    confidence = [float(np.max(p.probabilities)) for p in preds]
    set_size = [len(p.conformal_set) for p in preds]
    correct = top == truth
    escalated = [i for i in range(len(items))
                 if confidence[i] < ESCALATED_BELOW or set_size[i] > 1]
    gains = {}
    for kind in RESCAN_KINDS:
        images = rescan_images(scope, [items[i] for i in escalated], kind)
        after = (np.asarray([int(np.argmax(p.probabilities)) for p in clf.classify(images)])
                 == truth[escalated]) if images else np.zeros(0, bool)
        gains[kind] = _gain(correct[escalated], after)
    source = {"how": "fresh twin benchmark draws (workflows/training/risk_calibration.py)",
              "seed": seed, "per_class": per_class, "first_index": first, "size": size,
              "frames": len(items), "escalated_below": ESCALATED_BELOW,
              "checkpoint_sha256": clf.checkpoint_sha256}
    return RiskControl(tuple(confidence), tuple(set_size), tuple(bool(c) for c in correct),
                       gains, source)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--first", type=int, default=500,
                        help="first image index (past the training dataset's per-class count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    clf = Classifier.load(args.checkpoint)
    risk = calibrate_risk(clf, args.per_class, args.first, args.seed, args.size)
    path = risk.save(args.checkpoint)
    print(f"wrote {path}")
    for alpha in (0.01, 0.02, 0.05, 0.1):
        print(json.dumps(asdict(risk.certify(alpha))))
    print(json.dumps({kind: {**asdict(g), "gain": g.gain} for kind, g in risk.gains.items()}))


if __name__ == "__main__":
    main()
