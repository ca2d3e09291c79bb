"""Learning during the session (`micagent run --learn`): every human answer that names a class
(an approval of a class, a relabel, a new class name) adds the frame's stem features to the
session's support set and refits the few-shot head (models/fewshot_head.py); the next frame is
classified by the new head.

`SessionLearner` is the session's classifier under `--learn` (the `ClassifierLike` of the
context): it embeds frames with the frozen stem and predicts with its current head. Its small
state (support set, head, version: the number of answers it learned from) is mirrored in the
checkpointed state (`state["learning"]`, `LearnerState`), so a killed session resumes with
exactly what it had learned: the nodes `sync` the learner from the state before using it.

Until two classes have `learn_min` examples each the head is not trusted: the policy sends
every frame to the human; after that, every frame the head reads as a class with fewer
(agent/policy.py, `learned_enough`). Either way, once the head exists (two classes taught), a
frame whose taught neighbours (frames of its region a human named) agree is recorded under
their label (`agent.policy.rule_on_taught`). The first answers are
classified as well as a head allows: with no class yet, the frame's only class is `unknown`;
with one class, that class; while a class has a single example the head is uncalibrated and
its conformal set is every class (so it never decides alone on a guess).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from instruments.utils import atomic_file
from models.classifier import Classifier
from models.config import FusionConfig
from models.fewshot_head import FewShotHead, StemFeatures, SupportSet
from models.prediction import Prediction

LEARN_ALPHA = 0.05
"""Conformal miscoverage of a learning session's head: a frame is decided alone only where its
set at this level is a single class. Measured with the scripted operator on the twin
(benchmarks/teach_operator.py, benchmarks/results/teach.md): against 0.1 (what
`train --profile fewshot` calibrates at) the frames decided alone go from 0.839 to 0.894
correct, for more questions (112 answers instead of 77 in 300 frames)."""

STAGE_BLOCK_FIELDS = 10.0
"""Width of the stage blocks, in fields of view, that calibrate a learning session's head
(`stage_block`): about one region of the twin (11 fields of 20 um), set before measuring.
Measured with the scripted operator (benchmarks/teach_operator.py and teach_neighbours_sweep.py,
benchmarks/results/teach.md): better than folds over single frames on twin seeds 0-5, worse on
held-out seeds 6-9 (frames recorded unasked 0.965 -> 0.953), 0.972 -> 0.978 over all ten."""

UNTAUGHT = "unknown"
"""The only class a learner that was taught nothing can name (the policy's unknown label)."""


def stage_block(x: float | None, y: float | None, fov: float | None,
                fields: float = STAGE_BLOCK_FIELDS) -> str:
    """The block of the stage, `fields` fields of view wide, a frame at (x, y) was taken in:
    its calibration group in the support set ("" without a position or FOV). Frames of one
    block are alike; the head's conformal threshold is cross-validated over blocks
    (models/fewshot_head.py), meant to hold for a region the session has not met yet."""
    if x is None or y is None or not fov:
        return ""
    width = fields * fov
    return f"{math.floor(x / width)},{math.floor(y / width)}"


class SessionLearner:
    """The stem, the support set and the head fitted on it; `version` counts the answers
    learned from (0: nothing learned this session)."""

    def __init__(self, support: SupportSet | None = None, seed: int = 0,
                 features: StemFeatures | None = None) -> None:
        self.features = features or StemFeatures()
        self.seed = seed
        self.support = support or SupportSet()
        self.version = 0
        self.head: FewShotHead | None = self._fit(self.support)

    @classmethod
    def from_checkpoint(cls, path: str | Path, seed: int = 0) -> SessionLearner:
        """A learner that goes on from a checkpoint's stored support set (its stem checked
        by loading the checkpoint)."""
        Classifier.load(path)
        return cls(SupportSet.load(path), seed)

    def _fit(self, support: SupportSet) -> FewShotHead | None:
        return (support.fit(self.seed, LEARN_ALPHA) if len(support.class_names) >= 2
                else None)

    @property
    def class_names(self) -> list[str]:
        return self.support.class_names

    def counts(self) -> dict[str, int]:
        """Support examples per class."""
        return self.support.counts()

    @property
    def space(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Maps raw stem features (n, 472) into the current head's space (standardised on
        the support set, unit length), where frames are compared; None while there is no head
        (one class taught: nothing to compare frames in, and every taught frame would name
        that one class)."""
        return None if self.head is None else self.head.normalise

    def classify(self, images, lmm_labels=None, imaging=None, views: int = 1
                 ) -> list[Prediction]:
        """Predictions of the current head; the embedding is the raw stem features (what a
        human's answer adds to the support set). `lmm_labels` and `imaging` are taken as
        `Classifier.classify` takes them and unused: the head has no text branch, and its OOD
        test is the support set's distances alone (no imaging range was taught). The head
        reads the frame as taken: `views` other than 1 is refused (a learning session's
        policy asks for none, `RunConfig.policy`)."""
        if views != 1:
            raise ValueError(f"the learned head classifies the frame as taken, not {views} views")
        raw = self.features(images)
        return [self._prediction(row) for row in raw]

    def _prediction(self, raw: np.ndarray) -> Prediction:
        extra: dict[str, Any] = {"head_version": self.version}
        if self.head is None:
            names = self.class_names or [UNTAUGHT]
            return Prediction(class_names=names, probabilities=np.ones(len(names)) / len(names),
                              conformal_set=names, embedding=raw,
                              extra={**extra, "conformal": "untaught"})
        p = self.head.predict(raw[None])[0]
        ood = self.head.ood.record(self.head.ood.score(self.head.normalise(raw[None]))[0])
        # uncalibrated (a class with one example): the set is every class, never a single
        # one, so the head does not decide alone on a guess
        members = (self.head.conformal_set(p) if self.head.conformal_qhat is not None
                   else self.head.class_names)
        return Prediction(class_names=self.head.class_names, probabilities=p,
                          conformal_set=members, embedding=raw,
                          extra={**extra, "temperature": self.head.temperature,
                                 "alpha": self.head.alpha,
                                 "conformal": "LAC" if self.head.conformal_qhat is not None
                                 else "uncalibrated"},
                          ood=ood)

    def teach(self, embedding: Any, label: str, group: str = "") -> dict[str, Any]:
        """Add one answered frame (its raw stem features) under `label`, in calibration
        group `group` (`stage_block`), refit; the new state for the checkpoint."""
        self.support = self.support.add(np.asarray(embedding, dtype=np.float32), label, group)
        self.head = self._fit(self.support)
        self.version += 1
        return self.state()

    def state(self) -> dict[str, Any]:
        """The checkpointed state: version, support set and head as plain values."""
        return {"version": self.version, "support": self.support.to_state(),
                "head": None if self.head is None else self.head.to_state()}

    def sync(self, state: dict[str, Any] | None) -> None:
        """Take up the checkpointed state when it is not the learner's own (a resumed
        session); nothing learned yet (None) keeps the starting support set."""
        if state is None or state["version"] == self.version:
            return
        self.version = state["version"]
        self.support = SupportSet.from_state(state["support"])
        self.head = None if state["head"] is None else FewShotHead.from_state(state["head"])

    def save(self, path: str | Path, session_id: str) -> Path | None:
        """The head as a checkpoint folder (`micagent run --model PATH`) with its support
        set beside it; None while there is no head (fewer than two classes taught)."""
        if self.head is None:
            return None
        clf = Classifier.create(FusionConfig(baseline="fewshot"), self.head.class_names)
        self.head.apply(clf)
        clf.head = {"kind": "fewshot", "fitted_by": f"micagent run --learn (session "
                                                     f"{session_id})",
                    "version": self.version, "support": self.counts(),
                    "calibration": self.head.calibration,
                    "not_calibrated": self.head.not_calibrated}
        with atomic_file.atomic_path(path) as tmp:
            clf.save(tmp)
            self.support.save(tmp)
        return Path(path)

