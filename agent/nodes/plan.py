"""plan: the next position to image, or the end of the session (objective met, budget used);
on a survey also the position after it (`ahead`: acquired ahead when pipelining)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.context import SessionContext
from agent.objectives import grid_positions, spiral_position, spread
from agent.search_plan import next_choice, search_position, start_search
from agent.state import AgentState
from agent.survey_plan import planned_positions
from agent.targeting import searching
from instruments.session_file.decision_record import DecisionRecord, Position, Tile, Timings


def _survey_positions(ctx: SessionContext, max_frames: int) -> list[dict[str, Any]]:
    if ctx.acquirer.tiles is not None:
        return spread(ctx.acquirer.tiles.positions(), max_frames)
    if ctx.survey_positions:
        return spread(ctx.survey_positions, max_frames)
    region = ctx.region or ctx.acquirer.capabilities().stage_range
    return grid_positions(region, ctx.imaging.fov, limit=max_frames)


def _done(state: AgentState, used: dict[str, float]) -> str:
    budgets, counts, obj = state["budgets"], state["counts"], state["objective"]
    if used["wall_s"] >= budgets.get("wall_s", float("inf")):
        return f"budget exhausted: wall time {budgets['wall_s']:g} s"
    covered = searching(obj) and state.get("plan") is not None \
        and state["plan_index"] >= state["plan"]["size"]
    if obj["kind"] == "explore" and (covered or state["plan_index"] >= state["max_frames"]):
        return f"explore complete: {counts['recorded']} frames"
    if obj["kind"] == "hunt":
        if counts["hits"] >= obj["target"]:
            return f"hunt complete: {counts['hits']} frames of {', '.join(obj['classes'])}"
        if used["moves"] >= budgets.get("moves", float("inf")):
            return f"budget exhausted: {int(budgets['moves'])} stage moves"
        if state["plan_index"] >= state["max_frames"]:
            return (f"hunt ended after {state['plan_index']} positions with "
                    f"{counts['hits']}/{obj['target']} found")
        if covered:
            return (f"hunt ended: search area of {state['plan']['size']} tiles covered, "
                    f"{counts['hits']}/{obj['target']} found")
        return ""
    if state["plan_index"] >= (state.get("plan") or {}).get("size", 0):
        return f"survey complete: {counts['recorded']} frames"
    return ""


def position_at(ctx: SessionContext, state: AgentState, index: int) -> dict[str, Any] | None:
    """The plan's index-th position (None past the end of a survey)."""
    if searching(state["objective"]):
        return search_position(ctx, state, index)
    if state["objective"]["kind"] == "hunt":
        start = state["objective"].get("start", (0.0, 0.0))
        return spiral_position(index, tuple(start), ctx.imaging.fov)
    positions = planned_positions(ctx.plan, state)
    return positions[index] if index < len(positions) else None


def planned_record(ctx: SessionContext, state: AgentState,
                   position: dict[str, Any]) -> DecisionRecord:
    """The record a planned position starts from: where, and with which settings (the
    defocus that last gave a good frame carries forward)."""
    return DecisionRecord(
        position=Position(x=position["x"], y=position["y"]),
        tile=Tile(row=position["row"], col=position["col"]) if "row" in position else None,
        settings=replace(ctx.imaging, defocus=state.get("defocus", ctx.imaging.defocus)),
        timings=Timings(acquire_s=0.0, classify_s=0.0))


def make(ctx: SessionContext):
    def plan(state: AgentState) -> dict[str, Any]:
        tick = ctx.tick()
        update: dict[str, Any] = {"used": {"wall_s": tick}}
        if state["objective"]["kind"] == "survey" and not state.get("plan"):
            update["plan"] = ctx.plan.fix(_survey_positions(ctx, state["max_frames"]))
            state = {**state, **update}
        elif searching(state["objective"]) and not state.get("plan"):
            search = start_search(ctx, state)
            update.update(search)
            state = {**state, **{k: v for k, v in search.items() if k != "events"}}
        used = {**state["used"], "wall_s": state["used"].get("wall_s", 0.0) + tick}
        reason = _done(state, used)
        if reason:
            return {**update, "current": None, "progress": "plan_finished", "reason": reason}
        index = state["plan_index"]
        if state.get("targeting") is not None and index >= len(state["targeting"]["chosen"]):
            choice = next_choice(ctx, state)
            if choice is None:
                return {**update, "current": None, "progress": "plan_finished",
                        "reason": f"{state['objective']['kind']} ended: every tile visited"}
            update["targeting"] = choice
            state = {**state, "targeting": choice}
        record = planned_record(ctx, state, position_at(ctx, state, index))
        ahead = (position_at(ctx, state, index + 1)
                 if state["objective"]["kind"] == "survey" else None)
        return {**update, "plan_index": index + 1, "current": record, "progress": "planned",
                "ahead": ahead}
    return plan
