"""zoom_out: a wider field at the frame's centre (ZOOM_OUT_FACTOR times the FOV, within the
instrument's range and the safety envelope), taken through the acquirer (the guard below it
checks the settings and books the dose), classified on its own and pooled with the frame's
prediction and its neighbours' (agent/context_evidence.py); the policy rules on the pool
(`agent.policy.rule_in_context`). The wide frame is not stored in the session file: its
settings, prediction, thumbnail and time are, in the record's context. A refused or failed
zoom-out (the envelope, a bad frame) is recorded with why and the decision goes on without
it; a lost instrument fails the session, as in acquire."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent import context_evidence
from agent.acquirer import Shot
from agent.context import SessionContext
from agent.nodes._common import fail, thumbnail
from agent.nodes._context import ruled_with
from agent.state import AgentState
from instruments.devices.errors import BadFrame, SafetyRefused
from instruments.devices.frame import ImagingSettings
from instruments.session_file.decision_record import (
    DecisionRecord,
    PredictionRecord,
    ZoomOutRecord,
)


def wider(ctx: SessionContext, settings: ImagingSettings) -> ImagingSettings:
    """The frame's settings with the FOV widened, clamped to what the instrument and the
    envelope allow (the same FOV where nothing wider is allowed)."""
    caps, envelope = ctx.acquirer.capabilities(), ctx.acquirer.envelope
    top = min(caps.fov_range[1], envelope.fov[1])
    return replace(settings, fov=max(min(settings.fov * context_evidence.ZOOM_OUT_FACTOR, top),
                                     settings.fov))


def _look(ctx: SessionContext, current: DecisionRecord) -> tuple[ZoomOutRecord, Shot]:
    """The zoom-out of the frame in flight, and the shot it came from."""
    settings = wider(ctx, current.settings)
    shot = ctx.acquirer.look(current.position.model_dump(), settings)
    if shot.frame is None:
        return ZoomOutRecord(settings=settings, error=f"{type(shot.error).__name__}: "
                                                      f"{shot.error}"), shot
    taken = {"fov": shot.frame.settings.fov, "detector": shot.frame.settings.detector}
    prediction = ctx.classifier.classify([shot.frame.image], imaging=[taken])[0]
    return ZoomOutRecord(
        settings=settings, frame_id=shot.frame.frame_id,
        thumbnail=str(thumbnail(ctx, shot.frame)), acquire_s=shot.acquire_s,
        prediction=PredictionRecord.model_validate(prediction.as_record())), shot


def make(ctx: SessionContext):
    def zoom_out(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        zoom, shot = _look(ctx, current)
        if shot.error is not None and not isinstance(shot.error, (SafetyRefused, BadFrame)):
            return {"used": {"moves": int(shot.moved)}, **fail(f"zoom_out: {zoom.error}")}
        record, ruling = ruled_with(ctx, state, {"zoom_out": zoom})
        return {"current": record, "ruling": ruling,
                "used": {"zoom_outs": 1, "moves": int(shot.moved)}}
    return zoom_out
