"""The offline stand-in: the nearest labelled demonstrations vote, weighted by similarity."""

from __future__ import annotations

import hashlib

import numpy as np

from agent.adjudication.base import Answer, Demonstration, Verdict

NAME = "offline-knn"


class OfflineKnnAdjudicator:
    """Votes of the demonstrations, each weighted by exp(cosine / temperature) to the frame."""

    name = NAME

    def __init__(self, temperature: float = 0.1) -> None:
        self.temperature = temperature

    def adjudicate(self, image: np.ndarray, demonstrations: list[Demonstration],
                   class_names: list[str], embedding: np.ndarray | None = None) -> Verdict:
        ids = [d.id for d in demonstrations]
        digest = hashlib.sha256((NAME + "|" + ",".join(ids)).encode()).hexdigest()[:16]
        if not demonstrations or embedding is None:
            return Verdict(NAME, None, ids, digest, error="no demonstrations or embedding")
        e = np.asarray(embedding, dtype=np.float64).ravel()
        e = e / (np.linalg.norm(e) or 1.0)
        votes: dict[str, float] = {}
        for demo in demonstrations:
            d = np.asarray(demo.embedding, dtype=np.float64).ravel()
            cos = float(d @ e / (np.linalg.norm(d) or 1.0))
            votes[demo.label] = votes.get(demo.label, 0.0) + float(np.exp(cos / self.temperature))
        label = max(votes, key=votes.get)
        share = votes[label] / sum(votes.values())
        rationale = ", ".join(f"{k}: {v / sum(votes.values()):.2f}" for k, v in
                              sorted(votes.items(), key=lambda kv: -kv[1]))
        return Verdict(NAME, Answer(label, round(share, 4), f"similarity-weighted vote of "
                                    f"{len(ids)} demonstrations ({rationale})"), ids, digest)
