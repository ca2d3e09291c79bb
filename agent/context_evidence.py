"""Context for a frame's decision, as a microscopist uses it: a wider field at the same centre
(the zoom-out) and the decided frames of the same region (the neighbourhood), pooled with the
frame's own prediction. Pure functions of plain values; the policy decides what the pooled
prediction makes of the frame (`agent.policy.rule_in_context`).

Pooling is log-linear (a weighted geometric mean of the class distributions, renormalised;
Genest & Zidek, Statistical Science 1986): sources that agree sharpen the result, a source that
is sure of another class pulls it down. The pooled distribution has no conformal calibration of
its own, so the policy applies its confidence threshold to it and no set size.

The neighbourhood is the decided frames within NEIGHBOUR_RADIUS fields of view on the stage
whose embedding has cosine similarity >= MIN_SIMILARITY with this frame's (one region of the
twin is about 11 fields of 20 um wide; two regions of a class differ in texture and scale, so
position alone would pool another region's frames). Only frames the classifier was sure of are
remembered (the latest MEMORY of them, in the checkpointed state), so a pooled decision never
feeds the next one and an error cannot spread along a row. It informs later frames only: a
frame already recorded is not revised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
NEIGHBOUR_RADIUS = 7.5       # stage distance, in fields of view of the frame
MIN_SIMILARITY = 0.7         # cosine similarity of the embeddings
MEMORY = 12                  # decided frames remembered for the neighbourhood
FLOOR = 1e-6                 # probabilities are floored before logs (a zero vetoes nothing)


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


def fused(record: DecisionRecord, neighbours: Sequence[Mapping[str, Any]]
          ) -> PredictionRecord | None:
    """The frame's prediction pooled with its zoom-out's (when taken) and its neighbours'
    (entries of `remembered`); None when there is nothing to pool it with."""
    sources: list[tuple[Mapping[str, float], float]] = [(record.prediction.probabilities, 1.0)]
    zoom = record.context.zoom_out if record.context else None
    if zoom is not None and zoom.prediction is not None:
        sources.append((zoom.prediction.probabilities, ZOOM_OUT_WEIGHT))
    sources += [(n["probabilities"], NEIGHBOUR_WEIGHT) for n in neighbours]
    return as_prediction(pool(sources)) if len(sources) > 1 else None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def neighbours(memory: Sequence[Mapping[str, Any]], record: DecisionRecord,
               embedding: Sequence[float] | None) -> list[tuple[dict[str, Any], NeighbourRecord]]:
    """The remembered frames of the same region as `record` (by stage distance and embedding
    similarity, see the module), each with what the decision record keeps of it."""
    if embedding is None or record.position is None or record.position.x is None:
        return []
    here = np.asarray(embedding, dtype=np.float64)
    radius = NEIGHBOUR_RADIUS * record.settings.fov
    out = []
    for entry in memory:
        distance = math.hypot(entry["x"] - record.position.x, entry["y"] - record.position.y)
        if distance > radius or entry["frame_id"] == record.frame_id:
            continue
        similarity = _cosine(here, np.asarray(entry["embedding"], dtype=np.float64))
        if similarity >= MIN_SIMILARITY:
            out.append((dict(entry), NeighbourRecord(
                frame_id=entry["frame_id"], label=entry["label"], distance_m=distance,
                similarity=similarity)))
    return out


def remembered(memory: Sequence[Mapping[str, Any]], record: DecisionRecord,
               embedding: Sequence[float] | None, sure: bool) -> list[dict[str, Any]]:
    """The memory with `record` added when the classifier was `sure` of it (the latest
    MEMORY entries): position, label, probabilities and embedding."""
    if not sure or embedding is None or record.position is None or record.position.x is None:
        return list(memory)
    entry = {"frame_id": record.frame_id, "x": record.position.x, "y": record.position.y,
             "label": record.prediction.label,
             "probabilities": dict(record.prediction.probabilities),
             "embedding": [round(float(v), 5) for v in embedding]}
    return [*memory, entry][-MEMORY:]
