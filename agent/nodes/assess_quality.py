"""assess_quality: sharpness, SNR and (against an earlier frame of the same place) drift."""

from __future__ import annotations

from typing import Any

from agent.quality import assess
from agent.runtime import Runtime
from agent.state import AgentState


def make(rt: Runtime):
    def assess_quality(state: AgentState) -> dict[str, Any]:
        current = dict(state["current"])
        frame = rt.scratch.get(current["frame_id"])
        reference = rt.reference if current["rescans"] else None
        if reference is not None and reference.shape != frame.image.shape:
            reference = None
        current["quality"] = assess(frame.image, rt.thresholds, reference)
        return {"current": current, "next": "classify"}
    return assess_quality
