"""One frame's decision as one flat row, derived from its stored record in one place: what
`inspect` counts, the session report draws, and replay (one file or an archive) compares.

`DecisionRow.of` reads the typed record (decision_record.py) with the frame's stored metadata
and ground truth as fallbacks; `tally` is the record part of `inspect --json`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from instruments.session_file.decision_record import (
    DECIDED_ROUTES,
    DecisionRecord,
    HumanRecord,
    Route,
    accuracy,
)


def _finite(value: Any) -> float | None:
    """A finite number, or None (absent, NaN, inf or not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class DecisionRow(BaseModel):
    """What a session decided about one frame, flat.

    `label` is the final label (None: skipped by a human), `predicted` and `confidence` the
    classifier's own top-1 on the stored frame, `rescans` the attempts before it, `truth` the
    ground truth where the file stored one. Positions, field of view and sequence fall back on
    the frame's stored metadata where the record lacks them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int                        # write order in the file
    frame_id: str
    sequence: int | None = None
    x: float | None = None
    y: float | None = None
    fov: float | None = None
    tile: tuple[int, int] | None = None
    label: str | None = None
    route: str | None = None
    predicted: str | None = None
    confidence: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()
    rescans: int = 0
    adjudicated: bool = False
    relooked: bool = False                       # imaged again at shifted centres
    zoomed_out: bool = False                     # imaged again with a wider field
    human: HumanRecord | None = None
    human_acts: tuple[HumanRecord, ...] = ()     # every human act, rescan requests included
    truth: str | None = None
    timings: dict[str, float] = {}

    @property
    def decided(self) -> bool:
        """Recorded under a class on the evidence (a decided route with a label)."""
        return self.label is not None and self.route in {r.value for r in DECIDED_ROUTES}

    @property
    def escalated(self) -> bool:
        """Rescanned, relooked, zoomed out, adjudicated or decided by a human."""
        return bool(self.rescans or self.relooked or self.zoomed_out or self.adjudicated
                    or self.human)

    @classmethod
    def of(cls, index: int, record: DecisionRecord, evaluation: Mapping[str, Any] | None = None,
           meta: Mapping[str, Any] | None = None) -> DecisionRow:
        """The row of the `index`-th frame from its record, ground truth (`evaluation`) and
        stored frame metadata (`meta`: frame_id, sequence, stage, settings)."""
        meta = meta or {}
        stage, settings = meta.get("stage") or {}, meta.get("settings") or {}
        position, prediction = record.position, record.prediction
        truth = (evaluation or {}).get("label")
        sequence = record.sequence if record.sequence is not None else meta.get("sequence")
        return cls(
            index=index, frame_id=str(record.frame_id or meta.get("frame_id", "")),
            sequence=sequence,
            x=_finite(position.x if position and position.x is not None else stage.get("x")),
            y=_finite(position.y if position and position.y is not None else stage.get("y")),
            fov=_finite(record.settings.fov if record.settings else settings.get("fov")),
            tile=(record.tile.row, record.tile.col) if record.tile else None,
            label=record.label, route=record.route.value if record.route else None,
            predicted=record.classifier_label,
            confidence=_finite(prediction.confidence) if prediction else None,
            top_k=tuple((str(label), float(p)) for label, p in prediction.top_k)
            if prediction else (),
            rescans=len(record.escalations) or int(record.route == Route.RESCAN),
            adjudicated=bool(record.adjudication) or record.route in (Route.ADJUDICATED,
                                                                       Route.CONTESTED),
            relooked=bool(record.context and record.context.looks),
            zoomed_out=bool(record.context and record.context.zoom_out),
            human=record.human, human_acts=tuple(record.human_acts),
            truth=truth if isinstance(truth, str) else None,
            timings={key: number for key, value in record.timings.model_dump().items()
                     if (number := _finite(value)) is not None})


def tally(rows: Sequence[DecisionRow]) -> dict[str, Any]:
    """The decisions of a session counted: the record part of `micagent inspect --json`."""
    labels = [r.label for r in rows]
    routes = [r.route for r in rows]
    humans = [r.human for r in rows if r.human]
    truths = [r.truth for r in rows]
    final, scored = accuracy(labels, truths)
    alone, _ = accuracy([r.predicted for r in rows], truths)
    decided = [r for r in rows if r.decided]
    on_decided, scored_decided = accuracy([r.label for r in decided],
                                          [r.truth for r in decided])
    return {
        "frames": len(rows),
        "labels": labels,
        "routes": routes,
        "label_counts": dict(Counter(lab for lab in labels if lab is not None)),
        "route_counts": dict(Counter(r for r in routes if r is not None)),
        "escalations": sum(r.escalated for r in rows),
        "escalation_counts": {
            "rescan": sum(1 for r in rows if r.rescans),
            "relook": sum(1 for r in rows if r.relooked),
            "zoom_out": sum(1 for r in rows if r.zoomed_out),
            "adjudication": sum(1 for r in rows if r.adjudicated),
            "human": len(humans),
        },
        "approvals": len(humans),
        "approval_decisions": dict(Counter(h.decision.value for h in humans)),
        "human_acts": dict(Counter(a.decision.value for r in rows for a in r.human_acts)),
        "human_changed": sum(1 for h in humans if h.changed),
        "scored_frames": scored,
        "accuracy": final,
        "accuracy_classifier": alone,
        "decided": len(decided),
        "coverage": len(decided) / len(rows) if rows else None,
        "scored_decided": scored_decided,
        "accuracy_decided": on_decided,
    }
