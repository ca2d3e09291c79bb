"""The decisions stored in a session file, as the replay compares them: one small reader, so
that the replay depends on the session file's decision records in exactly one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from instruments.session_reader import SessionReader


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


def _decision(record: dict[str, Any], truth: dict[str, Any]) -> StoredDecision:
    prediction = record.get("prediction") or {}
    confidence = prediction.get("confidence")
    return StoredDecision(
        frame_id=str(record["frame_id"]), label=record.get("label"), route=record.get("route"),
        confidence=None if confidence is None else float(confidence),
        top_k=tuple((str(label), float(p)) for label, p in prediction.get("top_k") or ()),
        truth=truth.get("label"))


def stored_decisions(reader: SessionReader) -> list[StoredDecision]:
    """The decision of every complete frame of the reader's file, in write order."""
    return [_decision(record, truth)
            for record, truth in zip(reader.records(), reader.evaluations(), strict=True)]
