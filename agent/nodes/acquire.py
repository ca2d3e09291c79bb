"""acquire: move to the planned position (asking a human where the envelope says so), apply
the frame's imaging settings and acquire. The frame goes to the scratch store, its id to the
record in the state."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from langgraph.types import interrupt

from agent.nodes._common import add_tallies_update, event, fail
from agent.pipeline import Speculation
from agent.runtime import Runtime
from agent.state import AgentState
from agent.survey_plan import planned_positions
from instruments.devices.errors import ApprovalRequired, BadFrame, InstrumentError, SafetyRefused
from instruments.devices.frame import Frame, StagePosition
from instruments.devices.safety import Approval
from instruments.session_file.decision_record import DecisionRecord

MAX_CONSECUTIVE_ERRORS = 3


class _Skip(Exception):
    """This position is abandoned (refused move, bad frames); the session goes on."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def _move(rt: Runtime, state: AgentState, target: StagePosition
          ) -> tuple[bool, dict[str, Any] | None]:
    """Move the stage to `target`: (whether a move was made, the human approval it needed).
    Raises _Skip when refused."""
    if rt.stage is not None and (rt.stage.x, rt.stage.y) == (target.x, target.y):
        return False, None
    try:
        rt.stage = rt.microscope.move_stage(target)
        return True, None
    except ApprovalRequired as exc:
        if rt.policy.approve == "none":
            raise _Skip("refused", f"{exc} (unattended session: position skipped)") from exc
        decision = interrupt({
            "kind": "move", "session_id": state["session_id"], "request": exc.request,
            "message": str(exc), "reason": str(exc), "target": target.as_dict(),
            "proposal": f"move the stage to ({target.x:.6g}, {target.y:.6g}) m",
            "on_approve": "move the stage to this target and acquire there",
            "choices": ["approve", "skip"]})
        if decision.get("decision") != "approve":
            raise _Skip("refused", f"operator {decision.get('operator', '?')} declined the move "
                                   f"to ({target.x:.6g}, {target.y:.6g})") from exc
        approval = Approval(target=target, operator=decision.get("operator", "?"),
                            note=decision.get("note", ""))
        rt.microscope.grant(approval)
        rt.stage = rt.microscope.move_stage(target)
        return True, {"decision": "approve", "operator": approval.operator,
                      "note": approval.note, "time": approval.timestamp,
                      "reason": str(exc)}
    except SafetyRefused as exc:
        raise _Skip("refused", str(exc)) from exc


def _acquire_frame(rt: Runtime, state: AgentState, current: DecisionRecord) -> Frame:
    if rt.tiles is not None:
        return rt.tiles.frame({**current.position.model_dump(),
                               **(current.tile.model_dump() if current.tile else {})},
                              state["sequence"])
    if rt.applied != current.settings:
        rt.applied = rt.microscope.set_imaging(current.settings)
    try:
        return rt.microscope.acquire()
    except BadFrame:
        return rt.microscope.acquire()        # one retry; a second bad frame is reported


def speculate_next(rt: Runtime, state: AgentState) -> None:
    """Start acquiring the plan's next survey position (pipelining; see agent.pipeline)."""
    if rt.prefetch is None or rt.prefetch.pending or state["objective"]["kind"] != "survey":
        return
    index = state["plan_index"]              # plan has already moved past the current one
    positions = planned_positions(rt.plan, state)
    if index >= len(positions):
        return
    nxt = positions[index]
    settings = replace(rt.imaging, defocus=state.get("defocus", rt.imaging.defocus))
    rt.prefetch.start((nxt["x"], nxt["y"]), settings)


def _speculation(rt: Runtime, current: DecisionRecord) -> tuple[Speculation | None,
                                                                 dict[str, Any]]:
    """The frame acquired ahead for this position, if it fits the plan; the update that
    accounts for one that does not (discarded by rule, counted and logged)."""
    position = (current.position.x, current.position.y)
    speculation = rt.prefetch.collect(position) if rt.prefetch is not None else None
    if speculation is None:
        return None, {}
    why = speculation.unusable_for(position, current.settings)
    if not why:
        return speculation, {}
    return None, {"used": {"moves": int(speculation.moved)},
                  "counts": {"speculative_discarded": 1},
                  "events": event("speculative_discarded", why,
                                  position=current.position.model_dump())}


def make(rt: Runtime):
    def acquire(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        where = current.position.model_dump()
        target = StagePosition(x=current.position.x, y=current.position.y)
        speculation, discarded = _speculation(rt, current)
        moves = int(speculation.moved) if speculation else 0
        try:
            if speculation is not None and isinstance(speculation.error, ApprovalRequired):
                speculation = None                # the human is asked on the main path
            if speculation is not None and speculation.error is not None:
                raise speculation.error           # this position's acquisition failed
            if speculation is not None:
                frame, acquire_s = speculation.frame, speculation.acquire_s
            else:
                if rt.tiles is None and rt.can_move:
                    moved, approval = _move(rt, state, target)
                    moves = int(moved)
                    if approval is not None:    # stored with the frame taken there
                        current = current.model_copy(update={
                            "position": current.position.model_copy(
                                update={"approval": approval})})
                t0 = time.perf_counter()
                frame = _acquire_frame(rt, state, current)
                acquire_s = time.perf_counter() - t0
        except (_Skip, SafetyRefused) as exc:
            kind = exc.kind if isinstance(exc, _Skip) else "refused"
            return add_tallies_update(discarded, {
                "used": {"moves": moves}, "counts": {"refused": 1}, "current": None,
                "events": event(kind, str(exc), position=where)})
        except BadFrame as exc:
            errors = state.get("consecutive_errors", 0) + 1
            update = {"used": {"moves": moves}, "counts": {"errors": 1},
                      "consecutive_errors": errors}
            if errors >= MAX_CONSECUTIVE_ERRORS:
                return add_tallies_update(discarded, {
                    **update, **fail(f"{errors} bad frames in a row, last: {exc}")})
            return add_tallies_update(discarded, {
                **update, "current": None,
                "events": event("bad_frame", str(exc), position=where)})
        except InstrumentError as exc:
            return add_tallies_update(discarded, {
                "used": {"moves": moves}, **fail(f"acquire: {type(exc).__name__}: {exc}")})
        speculate_next(rt, state)             # the instrument is free: on to the next tile
        frame.sequence = state["sequence"]
        rt.scratch.put(frame)
        if current.frame_id and current.frame_id not in (frame.frame_id,
                                                         state.get("reference_id")):
            rt.scratch.drop(current.frame_id)     # an attempt no rescan measures against
        timings = current.timings.model_copy(
            update={"acquire_s": (current.timings.acquire_s or 0.0) + acquire_s})
        record = current.model_copy(update={
            "frame_id": frame.frame_id, "sequence": frame.sequence, "settings": frame.settings,
            "timings": timings, "started": current.started or time.time()})
        return add_tallies_update(discarded, {"current": record, "used": {"moves": moves},
                                              "consecutive_errors": 0})
    return acquire

