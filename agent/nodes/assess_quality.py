"""assess_quality: sharpness, SNR and (against the attempt a rescan replaces) drift. A rescan's
frame is also compared with the attempt it replaced: a rescan that changed nothing (the same
quality within noise) is recorded as such (`effect: none` on its rescan record, an event), and
the kinds of change it tried are not tried again in this session."""

from __future__ import annotations

from typing import Any

from agent.context import SessionContext
from agent.nodes._common import event
from agent.quality import assess
from agent.rescan_effect import had_effect, kinds_tried
from agent.state import AgentState
from instruments.session_file.decision_record import DecisionRecord, QualityRecord


def make(ctx: SessionContext):
    def assess_quality(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        frame = ctx.scratch.get(current.frame_id)
        reference = None
        if current.rescans and state.get("reference_id"):
            earlier = ctx.scratch.get(state["reference_id"])
            reference = earlier.image
            if reference.shape != frame.image.shape or (
                    earlier.settings is not None and frame.settings is not None
                    and earlier.settings.fov != frame.settings.fov):
                reference = None          # another field: no drift to measure against it
        quality = QualityRecord(**assess(frame.image, ctx.thresholds, reference))
        update: dict[str, Any] = {}
        rescans = current.rescans
        if rescans and rescans[-1].effect is None:
            last = rescans[-1]
            changed = had_effect(last.quality.model_dump(), quality.model_dump(),
                                 frame.image.shape)
            rescans = [*rescans[:-1], last.model_copy(
                update={"effect": "improved" if changed else "none"})]
            kinds = kinds_tried(last.adaptation)
            if not changed and kinds:
                update["ineffective"] = sorted(set(state.get("ineffective") or []) | kinds)
                update["events"] = event("rescan_no_effect", f"rescan of {last.frame_id} "
                                         f"({', '.join(sorted(kinds))}) left the quality as "
                                         "it was; not tried again", kinds=sorted(kinds))
        update["current"] = current.model_copy(update={"quality": quality,
                                                       "rescans": rescans})
        return update
    return assess_quality
