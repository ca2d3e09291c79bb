"""Context for a frame's decision, as a microscopist uses it: more looks at the same field
with the centre shifted (the relooks), a wider field at the same centre (the zoom-out) and the
decided frames of the same region (the neighbourhood), pooled with the frame's own
prediction. Pure functions of plain values; the policy decides what the pooled
prediction makes of the frame (`agent.policy.rule_in_context`).

The relooks are the frame's own evidence at its own scale: their predictions are averaged with
the frame's (a linear pool, as measured in benchmarks/unsure_looks.py), and that average
enters the pool below in place of the frame's own.

Pooling of the other sources is log-linear (a weighted geometric mean of the class
distributions, renormalised; Genest & Zidek, Statistical Science 1986): sources that agree
sharpen the result, a source that is sure of another class pulls it down. The pooled
distribution has no conformal calibration of its own, so the policy applies its confidence
threshold to it and no set size.

The neighbourhood is the decided frames within NEIGHBOUR_RADIUS fields of view on the stage
whose embedding has cosine similarity >= MIN_SIMILARITY with this frame's (one region of the
twin is about 11 fields of 20 um wide; two regions of a class differ in texture and scale, so
position alone would pool another region's frames). Only frames the classifier was sure of are
remembered (the latest `SURE_FRAMES.memory` of them, in the checkpointed state), so a pooled
decision never feeds the next one and an error cannot spread along a row. It informs later
frames only: a frame already recorded is not revised.

In a learning session (`micagent run --learn`) the neighbourhood is what the human taught
(`TAUGHT_FRAMES`): the frames a human named, and the frames recorded under such a neighbour's
label that the head read the same way, remembered under their label; similarity is taken in
the learned head's space (features standardised on the session's support set), where it
separates regions at a lower cosine. The policy records a frame under its taught neighbours'
label when they agree (`agent.policy.rule_on_taught`). Measured with the scripted operator on
the twin: see benchmarks/results/teach.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from instruments.session_file.decision_record import (
    DecisionRecord,
    NeighbourRecord,
    PredictionRecord,
)

ZOOM_OUT_FACTOR = 2.0        # the wider field: twice the FOV (four times the area)
ZOOM_OUT_WEIGHT = 1.0        # its weight in the pool (the frame's own is 1)
NEIGHBOUR_WEIGHT = 1.0       # each neighbour's weight in the pool
RELOOK_SHIFT = 0.25          # a relook's centre shift along each axis, a fraction of the FOV
RELOOK_DIAGONALS = ((1, 1), (-1, -1), (1, -1), (-1, 1))   # the looks' shift directions
FLOOR = 1e-6                 # probabilities are floored before logs (a zero vetoes nothing)


@dataclass(frozen=True)
class Recall:
    """Which remembered frames are a frame's neighbours: within `radius` fields of view of it
    on the stage, with embedding cosine similarity >= `min_similarity`; the latest `memory`
    frames are remembered."""

    radius: float
    min_similarity: float
    memory: int


SURE_FRAMES = Recall(radius=7.5, min_similarity=0.7, memory=12)
"""Frames the classifier was sure of, similarity of the classifier's embeddings."""
TAUGHT_FRAMES = Recall(radius=7.5, min_similarity=0.5, memory=64)
"""A learning session's frames named by a human or by their taught neighbours, similarity in
the learned head's space. Chosen with benchmarks/teach_neighbours_sweep.py (twin seeds 0, 1,
2, 300 frames; benchmarks/results/teach.md): radius 5 decided a third to a half fewer frames
by a neighbour and asked more; similarity 0.7 reached the 0.95 target 3 answers later on
seed 0, as soon elsewhere; the latest 64 taught frames decide as 1000 do."""


def pool(sources: Sequence[tuple[Mapping[str, float], float]]) -> dict[str, float]:
    """Log-linear pool of class distributions `(probabilities, weight)`; classes are those
    of the first source."""
    classes = list(sources[0][0])
    logits = np.zeros(len(classes))
    for probabilities, weight in sources:
        logits += weight * np.log(np.maximum([probabilities.get(c, 0.0) for c in classes],
                                             FLOOR))
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return dict(zip(classes, map(float, p), strict=True))


def as_prediction(probabilities: Mapping[str, float], k: int = 3) -> PredictionRecord:
    """A pooled distribution as a prediction record (no conformal set, no OOD verdict)."""
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])
    return PredictionRecord(
        label=ranked[0][0], confidence=ranked[0][1], probabilities=dict(probabilities),
        top_k=ranked[:k],
        entropy=float(-sum(p * math.log(p) for p in probabilities.values() if p > 0)))


def relook_centres(x: float, y: float, fov: float) -> list[tuple[float, float]]:
    """Where the relooks of a frame centred at (`x`, `y`) with field `fov` are taken: the
    centre shifted by RELOOK_SHIFT fields along each diagonal (a quarter field: each look
    shares 9/16 of its area with the frame). Set before the first measurement, not tuned."""
    step = RELOOK_SHIFT * fov
    return [(x + dx * step, y + dy * step) for dx, dy in RELOOK_DIAGONALS]


def relooked_evidence(record: DecisionRecord) -> dict[str, float] | None:
    """The frame's class distribution at its own scale once relooked: its prediction averaged
    with its relooks' (those classified), a linear pool; None when no look was classified."""
    looks = [look.prediction.probabilities for look in
             (record.context.looks if record.context else []) if look.prediction is not None]
    if not looks:
        return None
    own = record.prediction.probabilities
    return {c: float(np.mean([own[c], *(look.get(c, 0.0) for look in looks)])) for c in own}


def fused(record: DecisionRecord, neighbours: Sequence[Mapping[str, Any]]
          ) -> PredictionRecord | None:
    """The frame's own evidence (its prediction, or `relooked_evidence` when relooked) pooled
    with its zoom-out's (when taken) and its neighbours' (entries of `remembered`); None when
    there is nothing to pool and no relook."""
    relooked = relooked_evidence(record)
    own = relooked if relooked is not None else record.prediction.probabilities
    sources: list[tuple[Mapping[str, float], float]] = [(own, 1.0)]
    zoom = record.context.zoom_out if record.context else None
    if zoom is not None and zoom.prediction is not None:
        sources.append((zoom.prediction.probabilities, ZOOM_OUT_WEIGHT))
    sources += [(n["probabilities"], NEIGHBOUR_WEIGHT) for n in neighbours]
    if len(sources) > 1:
        return as_prediction(pool(sources))
    return as_prediction(relooked) if relooked is not None else None


Space = Callable[[np.ndarray], np.ndarray]
"""Maps embeddings (n, d) into the space their similarity is taken in."""


def _cosines(memory: np.ndarray, here: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(memory, axis=1) * np.linalg.norm(here)
    return np.divide(memory @ here, norms, out=np.zeros(len(memory)), where=norms > 0)


def neighbours(memory: Sequence[Mapping[str, Any]], record: DecisionRecord,
               embedding: Sequence[float] | None, recall: Recall = SURE_FRAMES,
               space: Space | None = None
               ) -> list[tuple[dict[str, Any], NeighbourRecord]]:
    """The remembered frames of the same region as `record` (by stage distance and embedding
    similarity, in `space` when given, as `recall` says), each with what the decision record
    keeps of it."""
    if (embedding is None or not memory or record.position is None
            or record.position.x is None):
        return []
    radius = recall.radius * record.settings.fov
    distances = [math.hypot(e["x"] - record.position.x, e["y"] - record.position.y)
                 for e in memory]
    vectors = np.asarray([e["embedding"] for e in memory] + [list(embedding)],
                         dtype=np.float64)
    if space is not None:
        vectors = space(vectors)
    similarities = _cosines(vectors[:-1], vectors[-1])
    return [(dict(entry), NeighbourRecord(frame_id=entry["frame_id"], label=entry["label"],
                                          distance_m=distance, similarity=float(similarity)))
            for entry, distance, similarity in zip(memory, distances, similarities, strict=True)
            if distance <= radius and entry["frame_id"] != record.frame_id
            and similarity >= recall.min_similarity]


def remembered(memory: Sequence[Mapping[str, Any]], record: DecisionRecord,
               embedding: Sequence[float] | None, keep: bool,
               recall: Recall = SURE_FRAMES) -> list[dict[str, Any]]:
    """The memory with `record` added under its recorded label when `keep` (the latest
    `recall.memory` entries): position, label, probabilities and embedding."""
    if not keep or embedding is None or record.position is None or record.position.x is None:
        return list(memory)
    entry = {"frame_id": record.frame_id, "x": record.position.x, "y": record.position.y,
             "label": record.label,
             "probabilities": dict(record.prediction.probabilities),
             "embedding": [round(float(v), 5) for v in embedding]}
    return [*memory, entry][-recall.memory:]
