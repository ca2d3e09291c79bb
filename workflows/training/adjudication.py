"""Measure the adjudicators of a checkpoint where the policy would use them, and store the
measurement with the model (`micagent measure-adjudicators CKPT DATA`; rerun it after the
model is retrained).

1. The offline adjudicator's reference: the embeddings (`Classifier.embed`) of the training
   split named in the checkpoint's `training.json` (at most `per_class` per class), with their
   labels (agent/adjudication/reference.py); the model's passes over the splits come from
   workflows/training/held_out.py (cached).
2. The frames the policy sends an adjudicator: held-out images the classifier is unsure of
   (not confident by the policy's default thresholds) and that its OOD test does not flag
   (an unknown frame is never adjudicated).
3. The vote rule (k, least share, least similarity) is chosen on the unsure frames of the
   validation split: the rule that wins most labels over the classifier on the frames it
   answers. It is then measured on the unsure frames of the test split, which nothing was
   chosen on: per adjudicator, on the frames it gives a class, its accuracy and the
   classifier's on the same frames, the frames answered and abstained on
   (agent/adjudication/trust.py reads it: it may overrule the classifier only where it is
   more accurate).
4. A VLM is measured the same way when `vlm` is given (demonstrations: the most similar
   training images).

The dataset is matched to the training record by file name: a twin dataset re-rendered after
the twin changed holds some images that differ from the ones trained on; the record says how
many (`changed_images`). Run it after the OOD fit (`micagent fit-ood`): an unknown frame is
never adjudicated, and the file names the checkpoint's hash, which the OOD fit changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.adjudication.base import Adjudicator
from agent.adjudication.demonstrations import DemonstrationBank
from agent.adjudication.offline import OfflineKnnAdjudicator
from agent.adjudication.reference import TrainingReference, VoteRule
from agent.adjudication.trust import TRUST_FILE
from agent.policy import RoutePolicy
from instruments.session_file.decision_record import OodVerdict, PredictionRecord
from instruments.utils import atomic_file
from models.calibration import prediction_set
from models.classifier import Classifier
from workflows.training.held_out import Frames, Progress, dataset_splits

RULES = [VoteRule(k, share) for k in (5, 10, 20) for share in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)]
SIMILARITY_QUANTILE = 0.01   # abstain below the 1 % quantile of held-out images' similarity


@dataclass
class Split:
    """Held-out images of one split, the model's pass over them and its labels."""

    images: np.ndarray
    frames: Frames
    class_names: list[str]

    def label(self, i: int) -> str:
        return self.class_names[int(np.argmax(self.frames.probs[i]))]

    def truth(self, i: int) -> str:
        return self.class_names[int(self.frames.labels[i])]

    def unsure(self, clf: Classifier, policy: RoutePolicy) -> np.ndarray:
        """Indices of the frames the policy would send an adjudicator: not confident, not
        flagged by the OOD test."""
        out = []
        scores = None
        if clf.ood is not None:
            scores = (clf.ood.score(self.frames.embeddings, self.frames.pooled)
                      if getattr(clf.ood, "space", "fused") == "both"
                      else clf.ood.score(self.frames.embeddings))
        for i, p in enumerate(self.frames.probs):
            members = ([int(np.argmax(p))] if clf.conformal_qhat is None
                       else prediction_set(p, clf.conformal_qhat))
            record = PredictionRecord(
                label=self.label(i), confidence=float(p.max()),
                conformal_set=[self.class_names[j] for j in members],
                ood=None if scores is None else OodVerdict(**clf.ood.record(scores[i])))
            if not policy.is_confident(record) and not policy.is_unknown(record):
                out.append(i)
        return np.array(out, dtype=int)


def _answers(adjudicator: Adjudicator, split: Split, frames: np.ndarray,
             bank: DemonstrationBank | None, demo_k: int) -> list[str | None]:
    out = []
    for i in frames:
        embedding = split.frames.embeddings[i]
        demos = bank.select(embedding, demo_k) if bank is not None else []
        verdict = adjudicator.adjudicate(split.images[i], demos, split.class_names, embedding)
        out.append(verdict.answer.label if verdict.answer is not None else None)
    return out


def score(answers: list[str | None], split: Split, frames: np.ndarray) -> dict[str, Any]:
    """On the frames an adjudicator gave a class: its accuracy and the classifier's."""
    given = [j for j, a in enumerate(answers) if a in split.class_names]
    right = sum(answers[j] == split.truth(frames[j]) for j in given)
    right_first = sum(split.label(frames[j]) == split.truth(frames[j]) for j in given)
    return {"frames": len(frames), "answered": len(given),
            "abstained": len(frames) - len(given),
            "accuracy": right / len(given) if given else 0.0,
            "classifier_accuracy": right_first / len(given) if given else 0.0,
            "gain": right - right_first,
            "classifier_accuracy_all": sum(split.label(i) == split.truth(i) for i in frames)
            / max(len(frames), 1)}


def choose_rule(reference: TrainingReference, split: Split, frames: np.ndarray) -> VoteRule:
    """The vote rule that wins most labels over the classifier on `frames` (validation);
    the least similarity is the 1 % quantile of the split's nearest-neighbour similarity."""
    sims, _ = reference.neighbours(split.frames.embeddings, 1)
    floor = float(np.quantile(sims[:, 0], SIMILARITY_QUANTILE))
    best, best_gain = VoteRule(min_similarity=floor), None
    for rule in RULES:
        reference.rule = VoteRule(rule.k, rule.min_share, floor)
        gain = score(_answers(OfflineKnnAdjudicator(reference), split, frames, None, 0),
                     split, frames)["gain"]
        if best_gain is None or gain > best_gain:
            best, best_gain = reference.rule, gain
    return best


def measure_adjudicators(ckpt: str | Path, data_dir: str | Path, per_class: int = 120,
                         vlm: Adjudicator | None = None, demo_k: int = 8,
                         cache: Path | None = None,
                         progress: Progress = lambda _: None) -> dict[str, Any]:
    """Write the reference and `adjudication.json` beside `ckpt`; returns the measurement."""
    ckpt = Path(ckpt)
    clf = Classifier.load(ckpt)
    names = clf.class_names
    frames, images, info = dataset_splits(ckpt, Path(data_dir), clf, per_class, cache,
                                          progress)
    reference = TrainingReference.build(frames["train"].embeddings, frames["train"].labels,
                                        names)
    policy = RoutePolicy()
    splits = {name: Split(images[name], frames[name], names) for name in ("val", "test")}
    unsure = {name: split.unsure(clf, policy) for name, split in splits.items()}
    reference.rule = choose_rule(reference, splits["val"], unsure["val"])
    test, chosen = splits["test"], unsure["test"]
    offline = OfflineKnnAdjudicator(reference)
    measured = {offline.name: score(_answers(offline, test, chosen, None, 0), test, chosen)}
    if vlm is not None:
        bank = DemonstrationBank(images["train"], [names[int(c)] for c in frames["train"].labels],
                                 reference.embeddings,
                                 [f"train-{j}" for j in range(len(frames["train"]))])
        progress(f"asking {vlm.name} about {len(chosen)} frames")
        measured[vlm.name] = score(_answers(vlm, test, chosen, bank, demo_k), test, chosen)
    result = {"checkpoint_sha256": clf.checkpoint_sha256, "data": str(data_dir), **info,
              "policy": {"confidence": policy.confidence, "max_set_size": policy.max_set_size},
              "unsure_frames": {name: [len(unsure[name]), len(splits[name].frames)]
                                for name in splits},
              "rule": reference.rule.as_dict(), "adjudicators": measured}
    reference.save(ckpt)
    atomic_file.write_text(ckpt / TRUST_FILE, json.dumps(result, indent=1))
    return result
