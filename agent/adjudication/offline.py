"""The offline adjudicator: the nearest training images vote, weighted by similarity, and it
abstains where the vote is split or the frame is far from every training image.

With the model's training reference (agent/adjudication/reference.py) it votes among the
embeddings of the images the model was trained on, by the reference's rule (k, least vote
share, least similarity, chosen on the validation split). Without one (a classifier that was
never measured, e.g. built in memory) it votes among the frame's demonstrations as before.
"""

from __future__ import annotations

import hashlib

import numpy as np

from agent.adjudication.base import ABSTAIN, Answer, Demonstration, Verdict
from agent.adjudication.reference import TrainingReference, VoteRule

NAME = "offline-knn"


class OfflineKnnAdjudicator:
    """Votes weighted by exp(cosine / temperature) to the frame."""

    name = NAME

    def __init__(self, reference: TrainingReference | None = None,
                 temperature: float = 0.1) -> None:
        self.reference = reference
        self.temperature = temperature

    def adjudicate(self, image: np.ndarray, demonstrations: list[Demonstration],
                   class_names: list[str], embedding: np.ndarray | None = None) -> Verdict:
        if self.reference is not None and embedding is not None:
            sims, index = self.reference.neighbours(embedding, self.reference.rule.k)
            labels = [self.reference.class_names[j] for j in self.reference.labels[index[0]]]
            return self._vote(sims[0], labels, [f"train-{j}" for j in index[0]],
                              self.reference.rule)
        ids = [d.id for d in demonstrations]
        if not demonstrations or embedding is None:
            return Verdict(NAME, None, ids, _digest(ids), error="no demonstrations or embedding")
        e = np.asarray(embedding, dtype=np.float64).ravel()
        e = e / (np.linalg.norm(e) or 1.0)
        sims = np.array([float(np.asarray(d.embedding, dtype=np.float64).ravel() @ e
                               / (np.linalg.norm(d.embedding) or 1.0)) for d in demonstrations])
        return self._vote(sims, [d.label for d in demonstrations], ids, VoteRule())

    def _vote(self, sims: np.ndarray, labels: list[str], ids: list[str],
              rule: VoteRule) -> Verdict:
        votes: dict[str, float] = {}
        for sim, label in zip(sims, labels, strict=True):
            votes[label] = votes.get(label, 0.0) + float(np.exp(sim / self.temperature))
        total = sum(votes.values())
        label = max(votes, key=votes.get)
        share = votes[label] / total
        rationale = (f"similarity-weighted vote of {len(ids)} neighbours ("
                     + ", ".join(f"{k}: {v / total:.2f}" for k, v in
                                 sorted(votes.items(), key=lambda kv: -kv[1])) + ")")
        if float(np.max(sims)) < rule.min_similarity:
            label, rationale = ABSTAIN, (f"none of these: nearest similarity "
                                         f"{float(np.max(sims)):.3f} < {rule.min_similarity:.3f}"
                                         f"; {rationale}")
        elif share < rule.min_share:
            label, rationale = ABSTAIN, f"unsure: share {share:.2f} < {rule.min_share:.2f}; " \
                                        + rationale
        return Verdict(NAME, Answer(label, round(share, 4), rationale), ids, _digest(ids))


def _digest(ids: list[str]) -> str:
    return hashlib.sha256((NAME + "|" + ",".join(ids)).encode()).hexdigest()[:16]
