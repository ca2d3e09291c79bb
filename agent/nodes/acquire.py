"""acquire: move to the planned position (asking a human where the envelope says so), apply
the frame's imaging settings and acquire. The frame goes to the scratch store, its id to the
state."""

from __future__ import annotations

import time
from typing import Any

from langgraph.types import interrupt

from agent.nodes._common import event, fail
from agent.runtime import Runtime
from agent.state import AgentState, bump
from instruments.errors import ApprovalRequired, BadFrame, InstrumentError, SafetyRefused
from instruments.frame import Frame, ImagingSettings, StagePosition
from instruments.safety import Approval

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


def _acquire_frame(rt: Runtime, state: AgentState, current: dict[str, Any]) -> Frame:
    if rt.tiles is not None:
        return rt.tiles.frame({**current["position"], **(current["tile"] or {})},
                              state["sequence"])
    settings = ImagingSettings(**current["settings"])
    if rt.applied != settings:
        rt.applied = rt.microscope.set_imaging(settings)
    try:
        return rt.microscope.acquire()
    except BadFrame:
        return rt.microscope.acquire()        # one retry; a second bad frame is reported


def make(rt: Runtime):
    def acquire(state: AgentState) -> dict[str, Any]:
        current = dict(state["current"])
        used, counts = dict(state["used"]), dict(state["counts"])
        target = StagePosition(x=current["position"]["x"], y=current["position"]["y"])
        try:
            if rt.tiles is None and rt.can_move:
                moved, approval = _move(rt, state, target)
                used["moves"] = used.get("moves", 0) + moved
                if approval is not None:        # stored with the frame taken there
                    current["position"] = {**current["position"], "approval": approval}
            t0 = time.perf_counter()
            frame = _acquire_frame(rt, state, current)
            acquire_s = time.perf_counter() - t0
        except _Skip as exc:
            return {"used": used, "counts": bump(counts, "refused"), "current": None,
                    "events": event(state, exc.kind, str(exc), position=current["position"]),
                    "next": "plan"}
        except SafetyRefused as exc:
            return {"used": used, "counts": bump(counts, "refused"), "current": None,
                    "events": event(state, "refused", str(exc), position=current["position"]),
                    "next": "plan"}
        except BadFrame as exc:
            counts = bump(bump(counts, "errors"), "consecutive_errors")
            if counts["consecutive_errors"] >= MAX_CONSECUTIVE_ERRORS:
                return {**fail(state, f"{counts['consecutive_errors']} bad frames in a row, "
                                      f"last: {exc}"), "counts": counts, "used": used}
            return {"used": used, "counts": counts, "current": None, "next": "plan",
                    "events": event(state, "bad_frame", str(exc), position=current["position"])}
        except InstrumentError as exc:
            return {**fail(state, f"acquire: {type(exc).__name__}: {exc}"), "used": used}
        frame.sequence = state["sequence"]
        previous_id = current.get("frame_id")
        rt.scratch.put(frame)
        if previous_id and previous_id != frame.frame_id:
            rt.scratch.drop(previous_id)          # an earlier attempt of this position
            rt.predictions.pop(previous_id, None)
        timings = dict(current["timings"])
        timings["acquire_s"] = timings.get("acquire_s", 0.0) + acquire_s
        current.update(frame_id=frame.frame_id, sequence=frame.sequence,
                       stage=frame.stage.as_dict(), settings=frame.settings.as_dict(),
                       timings=timings, started=current.get("started", time.time()))
        counts["consecutive_errors"] = 0
        return {"current": current, "used": used, "counts": counts, "next": "assess_quality"}
    return acquire
