"""acquire: the frame at the planned position with the frame's imaging settings, through the
acquirer (`agent.acquirer`: taken ahead where it fits, else now), asking a human where the
envelope says a move needs one. The frame goes to the scratch store, its id to the record in
the state; a position given up is `abandoned`."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from langgraph.types import interrupt

from agent.acquirer import Shot
from agent.approval_request import DecisionRefused, MoveRequest
from agent.context import SessionContext
from agent.nodes._common import event, fail
from agent.state import AgentState, add_tallies_update
from instruments.devices.errors import ApprovalRequired, BadFrame, SafetyRefused
from instruments.devices.frame import StagePosition
from instruments.devices.safety import Approval
from instruments.session_file.decision_record import Decision, DecisionRecord, MoveApproval

MAX_CONSECUTIVE_ERRORS = 3


def _with_approval(ctx: SessionContext, state: AgentState, current: DecisionRecord,
                   shot: Shot) -> tuple[Shot, DecisionRecord]:
    """A move outside the free zone (`shot.error`: ApprovalRequired), asked of a human: the
    shot taken once approved, with the approval stored in the record's position; or, with no
    approval (unattended, declined), a shot refused and why."""
    exc = shot.error
    target = StagePosition(x=current.position.x, y=current.position.y)
    if ctx.policy.approve == "none":
        return replace(shot, error=SafetyRefused(
            f"{exc} (unattended session: position skipped)")), current
    request = MoveRequest(
        session_id=state["session_id"], reason=str(exc), target=target.as_dict(),
        proposal=f"move the stage to ({target.x:.6g}, {target.y:.6g}) m",
        on_approve="move the stage to this target and acquire there")
    try:
        decision = request.accept(interrupt(request))
    except DecisionRefused as refused:
        return replace(shot, error=SafetyRefused(
            f"no usable decision on the move to ({target.x:.6g}, {target.y:.6g}): "
            f"{refused}")), current
    if decision.decision != Decision.APPROVE:
        return replace(shot, error=SafetyRefused(
            f"operator {decision.operator} declined the move "
            f"to ({target.x:.6g}, {target.y:.6g})")), current
    approval = Approval(target=target, operator=decision.operator, note=decision.note)
    ctx.acquirer.grant(approval)
    shot, _ = ctx.acquirer.take(_where(current), current.settings, state["sequence"])
    stored = MoveApproval(decision=decision.decision, operator=approval.operator,
                          note=approval.note, time=approval.timestamp, reason=str(exc))
    return shot, current.model_copy(update={"position": current.position.model_copy(
        update={"approval": stored})})


def _where(current: DecisionRecord) -> dict[str, Any]:
    """The planned position (and tile) as the acquirer takes it."""
    return {**current.position.model_dump(),
            **(current.tile.model_dump() if current.tile else {})}


def _discarded(shot: Shot | None, current: DecisionRecord) -> dict[str, Any]:
    """The update that accounts for a frame taken ahead that the plan did not ask for."""
    if shot is None:
        return {}
    why = shot.unusable_for((current.position.x, current.position.y), current.settings)
    return {"used": {"moves": int(shot.moved)}, "counts": {"speculative_discarded": 1},
            "events": event("speculative_discarded", why,
                            position=current.position.model_dump())}


def _failed(state: AgentState, shot: Shot, where: dict[str, Any],
            stored: bool) -> dict[str, Any]:
    """The update for a shot with no frame: the position abandoned, or the session failed
    (bad frames in a row mean a broken instrument, unless the frames are `stored` ones being
    replayed: each of those is abandoned alone)."""
    exc = shot.error
    moves = {"moves": int(shot.moved)}
    if isinstance(exc, SafetyRefused):
        return {"used": moves, "counts": {"refused": 1}, "current": None,
                "progress": "abandoned", "events": event("refused", str(exc), position=where)}
    if isinstance(exc, BadFrame):
        errors = state.get("consecutive_errors", 0) + 1
        update = {"used": moves, "counts": {"errors": 1}, "consecutive_errors": errors}
        if errors >= MAX_CONSECUTIVE_ERRORS and not stored:
            return {**update, **fail(f"{errors} bad frames in a row, last: {exc}")}
        return {**update, "current": None, "progress": "abandoned",
                "events": event("bad_frame", str(exc), position=where)}
    return {"used": moves, **fail(f"acquire: {type(exc).__name__}: {exc}")}


def make(ctx: SessionContext):
    def acquire(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        where = current.position.model_dump()
        shot, ahead = ctx.acquirer.take(_where(current), current.settings, state["sequence"])
        discarded = _discarded(ahead, current)
        if isinstance(shot.error, ApprovalRequired):
            shot, current = _with_approval(ctx, state, current, shot)
        if shot.frame is None:
            failed = _failed(state, shot, where, ctx.acquirer.replays_stored)
            return add_tallies_update(discarded, failed)
        if state.get("ahead"):                # the instrument is free: on to the next tile
            ctx.acquirer.prefetch((state["ahead"]["x"], state["ahead"]["y"]), replace(
                ctx.imaging, defocus=state.get("defocus", ctx.imaging.defocus)))
        frame = shot.frame
        frame.sequence = state["sequence"]
        ctx.scratch.put(frame)
        if current.frame_id and current.frame_id not in (frame.frame_id,
                                                         state.get("reference_id")):
            ctx.scratch.drop(current.frame_id)    # an attempt no rescan measures against
        timings = current.timings.model_copy(
            update={"acquire_s": (current.timings.acquire_s or 0.0) + shot.acquire_s})
        record = current.model_copy(update={
            "frame_id": frame.frame_id, "sequence": frame.sequence, "settings": frame.settings,
            "timings": timings})
        # the frame's time starts with its first acquisition (a rescan's keeps it), so the
        # recorded total_s is never shorter than acquire_s
        started = state.get("frame_started") if current.frame_id else None
        return add_tallies_update(discarded, {"current": record, "progress": "acquired",
                                              "used": {"moves": int(shot.moved)},
                                              "consecutive_errors": 0,
                                              "frame_started": started
                                              or time.time() - shot.acquire_s})
    return acquire
