"""relook: the frame's field imaged again with its centre shifted a quarter field along each
diagonal (`context_evidence.relook_centres`), at the frame's own settings, each look taken
through the acquirer (the guard below it checks every move against the envelope and books the
dose), classified on its own, and averaged with the frame's prediction
(`context_evidence.relooked_evidence`) before the rest of the context is pooled; the policy rules
on the pool (`agent.policy.rule_in_context`). The looks' frames are not stored in the session
file: their centres, predictions and times are, in the record's context. A refused look (the
envelope, a move outside the free zone: a context look asks no human) or a bad frame is
recorded with why and the others go on; a lost instrument fails the session, as in acquire.

The policy relooks frames of good quality read below `RoutePolicy.relook_below` (0.7). Measured
in the agent (benchmarks/results/survey_quality.md, "Relooks in the agent"): on held-out twin
seeds 10-19 x 100 tiles, 3.3 % of frames relooked, 4 fixed and none broken."""

from __future__ import annotations

from typing import Any

from agent import context_evidence
from agent.context import SessionContext
from agent.nodes._common import fail
from agent.nodes._context import ruled_with
from agent.state import AgentState
from instruments.devices.errors import BadFrame, InstrumentError, SafetyRefused
from instruments.session_file.decision_record import (
    DecisionRecord,
    LookRecord,
    PredictionRecord,
)


def _looks(ctx: SessionContext, current: DecisionRecord
           ) -> tuple[list[LookRecord], int, InstrumentError | None]:
    """The relooks of the frame in flight, the stage moves they made, and the error that lost
    the instrument (None: none did; with one, no looks)."""
    settings = current.settings
    shots, moves = [], 0
    for x, y in context_evidence.relook_centres(current.position.x, current.position.y,
                                                settings.fov):
        shot = ctx.acquirer.look({"x": x, "y": y}, settings)
        moves += int(shot.moved)
        shots.append((x, y, shot))
        if shot.error is not None and not isinstance(shot.error, (SafetyRefused, BadFrame)):
            return [], moves, shot.error
    taken = [s for _, _, s in shots if s.frame is not None]
    predictions = iter(ctx.classifier.classify(
        [s.frame.image for s in taken],
        imaging=[{"fov": s.frame.settings.fov, "detector": s.frame.settings.detector}
                 for s in taken]) if taken else [])
    looks = []
    for x, y, shot in shots:
        if shot.frame is None:
            looks.append(LookRecord(x=x, y=y, error=f"{type(shot.error).__name__}: "
                                                   f"{shot.error}"))
            continue
        looks.append(LookRecord(
            x=x, y=y, frame_id=shot.frame.frame_id, acquire_s=shot.acquire_s,
            prediction=PredictionRecord.model_validate(next(predictions).as_record())))
    return looks, moves, None


def make(ctx: SessionContext):
    def relook(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        looks, moves, lost = _looks(ctx, current)
        if lost is not None:
            return {"used": {"moves": moves},
                    **fail(f"relook: {type(lost).__name__}: {lost}")}
        record, ruling = ruled_with(ctx, state, {"looks": looks})
        return {"current": record, "ruling": ruling,
                "used": {"relooks": 1, "moves": moves}}
    return relook
