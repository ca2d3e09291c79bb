"""assess_quality: sharpness, SNR and (against the attempt a rescan replaces) drift."""

from __future__ import annotations

from typing import Any

from agent.quality import assess
from agent.runtime import Runtime
from agent.state import AgentState
from instruments.decision_record import DecisionRecord, QualityRecord


def make(rt: Runtime):
    def assess_quality(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        frame = rt.scratch.get(current.frame_id)
        reference = None
        if current.rescans and state.get("reference_id"):
            reference = rt.scratch.get(state["reference_id"]).image
            if reference.shape != frame.image.shape:
                reference = None
        quality = QualityRecord(**assess(frame.image, rt.thresholds, reference))
        return {"current": current.model_copy(update={"quality": quality})}
    return assess_quality
