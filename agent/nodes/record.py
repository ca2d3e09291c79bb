"""record: append the frame and its decision record to the session file (idempotent by
frame id, so a record replayed after a crash is stored once). With a Recorder the write is
queued to its thread and overlaps the next acquisition."""

from __future__ import annotations

import time
from typing import Any

from agent.runtime import Runtime
from agent.state import AgentState, bump
from instruments.decision_record import DECIDED_ROUTES, DecisionRecord

RECORD_KEYS = ("frame_id", "sequence", "position", "tile", "prediction", "label", "route",
               "rescans", "quality", "adjudication", "human")


def decision_record(current: dict[str, Any]) -> DecisionRecord:
    """The frame's typed decision record (no ground truth in it)."""
    record = {key: current[key] for key in RECORD_KEYS if current.get(key) is not None}
    timings = dict(current["timings"])
    timings["total_s"] = time.time() - current.get("started", time.time())
    record["timings"] = timings
    record["settings"] = current["settings"]
    return DecisionRecord.model_validate(record)


def make(rt: Runtime):
    def record(state: AgentState) -> dict[str, Any]:
        current = state["current"]
        frame_id = current["frame_id"]
        record = decision_record(current)
        objective = state["objective"]
        label = current.get("label")
        if rt.tiles is not None and current.get("tile") and (
                objective["kind"] == "survey" or label in objective["classes"]):
            record.point_data = rt.tiles.point_data(current["tile"])
        if rt.writer.has_frame(frame_id) and not rt.scratch.has(frame_id):
            pass  # stored, then killed before this step's checkpoint: the step is re-run
        elif rt.recorder is not None:
            rt.recorder.submit(frame_id, record)
        else:
            rt.writer.write_frame(rt.scratch.get(frame_id), record)
            rt.scratch.drop(frame_id)
        counts = dict(state["counts"])
        counts["recorded"] = counts.get("recorded", 0) + 1
        counts["routes"] = bump(counts.get("routes", {}), current["route"])
        counts["labels"] = bump(counts.get("labels", {}), str(label))
        if (objective["kind"] == "hunt" and label in objective["classes"]
                and current["quality"]["ok"] and current["route"] in DECIDED_ROUTES):
            counts["hits"] = counts.get("hits", 0) + 1
        rt.predictions.pop(frame_id, None)
        rt.reference = None
        if rt.on_update is not None:
            used = state.get("used", {})
            budgets_left = {key: round(limit - used.get(key, 0), 1)
                            for key, limit in state.get("budgets", {}).items()}
            rt.on_update("recorded", {"frame_id": frame_id, "label": label,
                                      "route": current["route"], "counts": counts,
                                      "budgets_left": budgets_left})
        update = {"counts": counts, "current": None, "previous_frame_id": frame_id,
                  "sequence": state["sequence"] + 1, "next": "plan"}
        if current["quality"]["ok"]:          # a focus that worked carries to the next tile
            update["defocus"] = current["settings"]["defocus"]
        return update
    return record
