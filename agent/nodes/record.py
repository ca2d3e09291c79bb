"""record: append the frame and its decision record to the session file (idempotent by
frame id, so a record replayed after a crash is stored once), under the label and route of
the policy's ruling. With a Recorder the write is queued to its thread and overlaps the next
acquisition."""

from __future__ import annotations

import time
from typing import Any

from agent import context_evidence
from agent.autofocus import learned
from agent.context import SessionContext
from agent.policy import UNKNOWN, ruling_of
from agent.state import AgentState
from instruments.session_file.decision_record import DECIDED_ROUTES, DecisionRecord, Route


def final_record(ctx: SessionContext, state: AgentState) -> DecisionRecord:
    """The frame's record as stored: the ruling's label and route, the total time, and the
    spectrum at a tile's centre where the instrument has one."""
    current: DecisionRecord = state["current"]
    ruling = ruling_of(ctx.policy, state)
    update: dict[str, Any] = {"label": ruling["label"], "route": Route(ruling["route"])}
    update["timings"] = current.timings.model_copy(
        update={"total_s": time.time() - (state.get("frame_started") or time.time())})
    objective = state["objective"]
    if ctx.acquirer.tiles is not None and current.tile and (
            objective["kind"] == "survey" or ruling["label"] in objective["classes"]):
        update["point_data"] = ctx.acquirer.point_data(current.tile.model_dump())
    return current.model_copy(update=update)


def remember(ctx: SessionContext, state: AgentState, record: DecisionRecord
             ) -> list[dict[str, Any]]:
    """The neighbourhood memory once this frame is recorded: with it when the classifier was
    sure of it, or, in a learning session, when a human named its class, or its taught
    neighbours did and the head's own top-1 class agrees (a neighbour's label the head
    contradicts is recorded, not passed on: on twin seed 2 one such label, from the next
    region, was passed along six frames the head read right)."""
    memory = state.get("neighbourhood") or ()
    if ctx.learner is None:
        return context_evidence.remembered(memory, record, state.get("embedding"),
                                           record.route in (Route.CONFIDENT, Route.RESCAN))
    confirmed = (record.route == Route.NEIGHBOURHOOD
                 and record.prediction.label == record.label)
    taught = ((record.route == Route.HUMAN or confirmed)
              and record.label not in (None, UNKNOWN))
    return context_evidence.remembered(memory, record, state.get("embedding"), taught,
                                       context_evidence.TAUGHT_FRAMES)


def make(ctx: SessionContext):
    def record(state: AgentState) -> dict[str, Any]:
        record = final_record(ctx, state)
        frame_id = record.frame_id
        if ctx.writer.has_frame(frame_id) and not ctx.scratch.has(frame_id):
            pass  # stored, then killed before this step's writes were saved: the step re-runs
        elif ctx.recorder is not None:
            ctx.recorder.submit(frame_id, record)
        else:
            ctx.writer.write_frame(ctx.scratch.get(frame_id), record)
            ctx.scratch.drop(frame_id)
        if state.get("reference_id"):
            ctx.scratch.drop(state["reference_id"])   # the attempt this frame replaced
        objective = state["objective"]
        hit = (objective["kind"] == "hunt" and record.label in objective["classes"]
               and record.quality.ok and record.route in DECIDED_ROUTES)
        counts = {"recorded": 1, "hits": int(hit), "routes": {record.route.value: 1},
                  "labels": {str(record.label): 1}}
        if ctx.stream is not None:
            ctx.stream.frame(record, recorded=state["counts"]["recorded"] + 1,
                             budgets_left={key: round(limit - state["used"].get(key, 0), 1)
                                           for key, limit in state["budgets"].items()})
        update = {"counts": counts, "current": None, "ruling": None,
                  "previous_frame_id": frame_id,
                  "sequence": state["sequence"] + 1, "reference_id": None, "embedding": None}
        if record.quality.ok:                 # a focus that worked carries to the next tile
            update["defocus"] = record.settings.defocus
            if ctx.autofocus is not None:
                update["focus"] = learned(state.get("focus"), record)
        if ctx.policy.neighbourhood:          # frames sure or taught inform later ones
            update["neighbourhood"] = remember(ctx, state, record)
        return update
    return record
