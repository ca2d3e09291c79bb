"""The scripted-operator learning session of benchmarks/teach_operator.py replayed offline, for
head variants: the same survey frames of the twin (seed 0, 20 um FOV, 256 px, positions
spread as the session spreads them), their raw stem features computed once, then the
session's loop: the head (models/fewshot_head.SupportSet.fit) decides a frame alone where the
policy lets it (agent.policy.learned_enough, conformal set of one class, not flagged unknown),
and every other frame is answered from the twin's truth and refits the head. With the
variant `alpha=0.1` this reproduces the CLI session's figures frame for frame.

Printed per variant: answers, the frame and answer count where the unattended accuracy over
the last 50 frames first reaches 0.95 (or never), the best such window, the accuracy of the
frames decided alone, and per block of 50 frames asked / unattended / top-1.

Variants change module constants of models/fewshot_head for the run (LOGISTIC_C,
OOD_QUANTILE), the conformal alpha, or take the label of the nearest support example (knn).

    python -m benchmarks.teach_operator_sweep [--frames 300]
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import numpy as np

import models.fewshot_head as fewshot_head
from agent.objectives import spread
from agent.policy import learned_enough
from benchmarks.teach_operator import WINDOW, reach
from instruments.devices.frame import ImagingSettings
from models.fewshot_head import StemFeatures, SupportSet
from twins.microscope import TwinMicroscope

FOV, PIXELS, LEARN_MIN = 20e-6, 256, 3
VARIANTS = [("alpha 0.1 (before)", {"alpha": 0.1}), ("alpha 0.05", {"alpha": 0.05}),
            ("alpha 0.02", {"alpha": 0.02}), ("alpha 0.1, OOD quantile 0.99",
                                               {"alpha": 0.1, "OOD_QUANTILE": 0.99}),
            ("alpha 0.1, OOD quantile 0.7", {"alpha": 0.1, "OOD_QUANTILE": 0.7}),
            ("alpha 0.1, C 1", {"alpha": 0.1, "LOGISTIC_C": 1.0}),
            ("alpha 0.1, C 100", {"alpha": 0.1, "LOGISTIC_C": 100.0}),
            ("alpha 0.05, nearest support label", {"alpha": 0.05, "knn": True})]


def survey(frames: int) -> tuple[np.ndarray, list[str]]:
    """Raw stem features and truths of the session's survey frames (twin seed 0)."""
    features, truths, _ = survey_frames(frames, seed=0)
    return features, truths


def survey_images(frames: int, seed: int = 0) -> tuple[list[np.ndarray], list[str],
                                                     np.ndarray]:
    """The frames, truths and stage positions (n, 2), m, of the survey of the twin of `seed`
    at the default run's settings, spread as the session spreads them."""
    twin = TwinMicroscope(seed=seed)
    twin.set_imaging(ImagingSettings(fov=FOV, pixels=PIXELS))
    images, truths, positions = [], [], []
    for position in spread(list(twin.specimen.survey_centres(FOV)), frames):
        twin.move_stage(position)
        images.append(twin.acquire().image)
        truths.append(twin.specimen.evaluation((position.x, position.y), FOV)["label"])
        positions.append((position.x, position.y))
    return images, truths, np.array(positions)


def survey_frames(frames: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Raw stem features, truths and stage positions (n, 2), m, of the survey frames of the
    twin of `seed`."""
    images, truths, positions = survey_images(frames, seed)
    stem = StemFeatures()
    return np.stack([stem([image])[0] for image in images]), truths, positions


@contextmanager
def constants(values: dict):
    saved = {name: getattr(fewshot_head, name) for name in values}
    for name, value in values.items():
        setattr(fewshot_head, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(fewshot_head, name, value)


def guess(head, support: SupportSet, raw: np.ndarray, knn: bool) -> tuple[str, bool, bool]:
    """(label, flagged unknown, conformal set of one class) of one frame."""
    p = head.predict(raw[None])[0]
    label = head.class_names[int(p.argmax())]
    if knn:
        label = support.labels[int(np.argmax(head.normalise(support.features)
                                             @ head.normalise(raw)))]
    flagged = bool(head.ood.score(head.normalise(raw[None]))[0] > head.ood.threshold)
    single = head.conformal_qhat is not None and len(head.conformal_set(p)) == 1
    return label, flagged, single


def session(features: np.ndarray, truths: list[str], alpha: float, knn: bool = False,
            support: SupportSet | None = None) -> dict:
    """The session's loop from `support` (default: empty) on precomputed frame features."""
    support, head = (SupportSet() if support is None else support), None
    asked, alone, top1 = [], [], []
    for raw, truth in zip(features, truths, strict=True):
        label, flagged, single = (guess(head, support, raw, knn) if head is not None
                                  else ("unknown", False, False))
        ask = not learned_enough(support.counts(), LEARN_MIN, label) or flagged or not single
        asked.append(ask)
        alone.append(("unknown" if flagged else label) == truth)
        top1.append(label == truth)
        if ask:
            support = support.add(raw.astype(np.float32), truth)
            head = support.fit(0, alpha) if len(support.class_names) >= 2 else None
    asked, alone, top1 = np.array(asked), np.array(alone), np.array(top1)
    return {**reach(asked, alone),
            "alone": float(alone[~asked].mean()), "alone_n": int((~asked).sum()),
            "blocks": [(asked[s:s + WINDOW].mean(), alone[s:s + WINDOW].mean(),
                        top1[s:s + WINDOW].mean()) for s in range(0, len(alone), WINDOW)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    t0 = time.perf_counter()
    features, truths = survey(args.frames)
    print(f"{len(truths)} frames, stem features in {time.perf_counter() - t0:.0f} s")
    print("| variant | answers | 0.95 reached (frame, answers) | best 50-frame window "
          "| decided alone: accuracy (frames) | per 50 frames: asked / unattended / top-1 |")
    print("|---|---|---|---|---|---|")
    for name, values in VARIANTS:
        values = dict(values)
        alpha, knn = values.pop("alpha"), values.pop("knn", False)
        with constants(values):
            r = session(features, truths, alpha, knn)
        blocks = "; ".join(f"{a:.2f} / {u:.2f} / {t:.2f}" for a, u, t in r["blocks"])
        print(f"| {name} | {r['answers']} | {r['reached'] or 'never'} | {r['best']:.2f} "
              f"| {r['alone']:.3f} ({r['alone_n']}) | {blocks} |")


if __name__ == "__main__":
    main()
