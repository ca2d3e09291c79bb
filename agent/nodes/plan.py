"""plan: the next position to image, or the end of the session (objective met, budget used)."""

from __future__ import annotations

from typing import Any

from agent.objectives import grid_positions, spiral_position, spread
from agent.runtime import Runtime
from agent.state import AgentState


def _survey_positions(rt: Runtime, max_frames: int) -> list[dict[str, Any]]:
    if rt.tiles is not None:
        return spread(rt.tiles.positions(), max_frames)
    if rt.survey_positions:
        return spread(rt.survey_positions, max_frames)
    region = rt.region or rt.microscope.capabilities().stage_range
    return grid_positions(region, rt.imaging.fov, limit=max_frames)


def _done(state: AgentState, used: dict[str, float]) -> str:
    budgets, counts, obj = state["budgets"], state["counts"], state["objective"]
    if state.get("status", "running") != "running":
        return state.get("reason", "")
    if used["wall_s"] >= budgets.get("wall_s", float("inf")):
        return f"budget exhausted: wall time {budgets['wall_s']:g} s"
    if obj["kind"] == "hunt":
        if counts["hits"] >= obj["target"]:
            return f"hunt complete: {counts['hits']} frames of {', '.join(obj['classes'])}"
        if used["moves"] >= budgets.get("moves", float("inf")):
            return f"budget exhausted: {int(budgets['moves'])} stage moves"
        if state["plan_index"] >= state["max_frames"]:
            return (f"hunt ended after {state['plan_index']} positions with "
                    f"{counts['hits']}/{obj['target']} found")
        return ""
    if state["plan_index"] >= len(state["positions"]):
        return f"survey complete: {counts['recorded']} frames"
    return ""


def make(rt: Runtime):
    def plan(state: AgentState) -> dict[str, Any]:
        used = dict(state["used"])
        used["wall_s"] = used.get("wall_s", 0.0) + rt.tick()
        update: dict[str, Any] = {"used": used}
        if state["objective"]["kind"] == "survey" and not state.get("positions"):
            update["positions"] = _survey_positions(rt, state["max_frames"])
            state = {**state, **update}
        reason = _done(state, used)
        if reason:
            status = state.get("status", "running")
            return {**update, "next": "finish",
                    "status": "completed" if status == "running" else status, "reason": reason}
        index = state["plan_index"]
        if state["objective"]["kind"] == "hunt":
            start = state["objective"].get("start", (0.0, 0.0))
            position = spiral_position(index, tuple(start), rt.imaging.fov)
        else:
            position = state["positions"][index]
        current = {"position": {"x": position["x"], "y": position["y"]},
                   "tile": ({"row": position["row"], "col": position["col"]}
                            if "row" in position else None),
                   "settings": {**rt.imaging.as_dict(),
                                "defocus": state.get("defocus", rt.imaging.defocus)},
                   "rescans": [], "adjudication": None,
                   "human": None, "timings": {"acquire_s": 0.0, "classify_s": 0.0}}
        return {**update, "plan_index": index + 1, "current": current, "next": "acquire"}
    return plan
