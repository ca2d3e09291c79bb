"""record: append the frame and its decision record to the session file (idempotent by
frame id, so a record replayed after a crash is stored once). With a Recorder the write is
queued to its thread and overlaps the next acquisition."""

from __future__ import annotations

import time
from typing import Any

from agent.policy import standing_route, verdict
from agent.runtime import Runtime
from agent.state import AgentState
from instruments.session_file.decision_record import DECIDED_ROUTES, DecisionRecord


def final_record(rt: Runtime, state: AgentState) -> DecisionRecord:
    """The frame's record as stored: the classifier's verdict where nothing else decided,
    the total time, and the spectrum at a tile's centre where the instrument has one."""
    current: DecisionRecord = state["current"]
    update: dict[str, Any] = {}
    if current.route is None:
        update.update(route=standing_route(rt.policy, current),
                      label=verdict(rt.policy, current.prediction).label)
    update["timings"] = current.timings.model_copy(
        update={"total_s": time.time() - (current.started or time.time())})
    objective, label = state["objective"], update.get("label", current.label)
    if rt.tiles is not None and current.tile and (
            objective["kind"] == "survey" or label in objective["classes"]):
        update["point_data"] = rt.tiles.point_data(current.tile.model_dump())
    return current.model_copy(update=update)


def make(rt: Runtime):
    def record(state: AgentState) -> dict[str, Any]:
        record = final_record(rt, state)
        frame_id = record.frame_id
        if rt.writer.has_frame(frame_id) and not rt.scratch.has(frame_id):
            pass  # stored, then killed before this step's writes were saved: the step re-runs
        elif rt.recorder is not None:
            rt.recorder.submit(frame_id, record)
        else:
            rt.writer.write_frame(rt.scratch.get(frame_id), record)
            rt.scratch.drop(frame_id)
        if state.get("reference_id"):
            rt.scratch.drop(state["reference_id"])   # the attempt this frame replaced
        objective = state["objective"]
        hit = (objective["kind"] == "hunt" and record.label in objective["classes"]
               and record.quality.ok and record.route in DECIDED_ROUTES)
        counts = {"recorded": 1, "hits": int(hit), "routes": {record.route.value: 1},
                  "labels": {str(record.label): 1}}
        if rt.stream is not None:
            rt.stream.frame(record, recorded=state["counts"]["recorded"] + 1,
                            budgets_left={key: round(limit - state["used"].get(key, 0), 1)
                                          for key, limit in state["budgets"].items()})
        update = {"counts": counts, "current": None, "previous_frame_id": frame_id,
                  "sequence": state["sequence"] + 1, "reference_id": None, "embedding": None}
        if record.quality.ok:                 # a focus that worked carries to the next tile
            update["defocus"] = record.settings.defocus
        return update
    return record
