"""The decisions stored in a session file, as the replay compares them: the typed decision
records (instruments/session_file/decision_record.py, older versions migrated by the reader)
reduced to what
a replay row holds, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.reader import SessionReader


@dataclass(frozen=True)
class StoredDecision:
    """What a session recorded for one frame: the final label and route, the classifier's
    top-1 confidence and top-k (label, probability) pairs, and the ground truth if stored."""

    frame_id: str
    label: str | None
    route: str | None
    confidence: float | None
    top_k: tuple[tuple[str, float], ...]
    truth: str | None


def _decision(record: DecisionRecord, truth: dict[str, Any]) -> StoredDecision:
    prediction = record.prediction
    return StoredDecision(
        frame_id=str(record.frame_id), label=record.label,
        route=record.route.value if record.route else None,
        confidence=prediction.confidence if prediction else None,
        top_k=tuple((str(label), float(p)) for label, p in prediction.top_k)
        if prediction else (),
        truth=truth.get("label"))


def stored_decisions(reader: SessionReader) -> list[StoredDecision]:
    """The decision of every complete frame of the reader's file, in write order."""
    return [_decision(record, truth)
            for record, truth in zip(reader.records(), reader.evaluations(), strict=True)]
