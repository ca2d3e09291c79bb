"""The search plan of a hunt or exploration (agent/targeting.py): the candidate tiles fixed
in the session's plan file at the start (ordered by the strategy, or for `active` in
row-major order with the choices made one by one in the checkpointed state), and the
overview, where the strategy takes one, stored in the session file."""

from __future__ import annotations

from typing import Any

from agent.context import SessionContext
from agent.survey_plan import planned_positions
from agent.targeting import (
    Overview,
    choose_next,
    outcome_mark,
    rank,
    score_candidates,
    score_map,
    search_area,
    spiral_order,
    stage_bounds,
    take_overview,
)
from instruments.devices.errors import InstrumentError
from instruments.session_file.overview import StoredOverview


def _store(ctx: SessionContext, state: dict[str, Any], overview: Overview,
           candidates: list[dict[str, Any]], scores: Any, ranked: list[dict[str, Any]]
           ) -> None:
    fov = ctx.imaging.fov
    first = min(candidates, key=lambda p: (p["row"], p["col"]))
    area_origin = (first["x"] - (first["col"] + 0.5) * fov,
                   first["y"] - (first["row"] + 0.5) * fov)
    ctx.writer.write_overview(StoredOverview(
        image=overview.image, origin=overview.origin, pixel=overview.pixel,
        scores=score_map(candidates, scores), area_origin=area_origin, tile=fov,
        metadata={"strategy": "overview", "objective": state["objective"],
                  "overview_frames": [f.frame_id for f in overview.frames],
                  "ranked": [[p["row"], p["col"]] for p in ranked]}))
    if ctx.stream is not None:               # as stored: the first, where a rerun took another
        ctx.stream.overview(ctx.writer.overview())


def start_search(ctx: SessionContext, state: dict[str, Any]) -> dict[str, Any]:
    """The update that fixes the search plan (and takes the overview where one is asked)."""
    objective, fov = state["objective"], ctx.imaging.fov
    start = tuple(objective.get("start", (0.0, 0.0)))
    candidates = search_area(start, fov, state["max_frames"], stage_bounds(ctx.acquirer))
    strategy, events = objective["strategy"], []
    ordered = candidates
    if strategy == "spiral":
        ordered = spiral_order(candidates, start)
    elif strategy == "overview" and candidates:
        try:
            overview = take_overview(ctx.acquirer, ctx.imaging, candidates)
        except InstrumentError as exc:
            events.append({"kind": "overview_failed", "message": f"no overview ({exc}); "
                           "the search goes outward from the start instead"})
            ordered = spiral_order(candidates, start)
        else:
            scores = score_candidates(ctx.classifier, overview, candidates, fov, objective)
            ordered = rank(candidates, scores, start)
            _store(ctx, state, overview, candidates, scores, ordered)
    update: dict[str, Any] = {"plan": ctx.plan.fix(ordered)}
    if strategy == "active":
        update["targeting"] = {"chosen": [], "outcomes": [], "marks": []}
    if events:
        update["events"] = events
    return update


def next_choice(ctx: SessionContext, state: dict[str, Any]) -> dict[str, Any] | None:
    """An active search's next choice as the state's new `targeting` (None: none left)."""
    positions = planned_positions(ctx.plan, state)
    done = dict(state["targeting"])
    mark = outcome_mark(state)
    outcomes = list(done["outcomes"])
    if done["chosen"]:
        outcomes.append(float(mark > done["marks"][-1]))
    last = positions[done["chosen"][-1]] if done["chosen"] else None
    here = (last["x"], last["y"]) if last else tuple(state["objective"].get("start", (0, 0)))
    index = choose_next(positions, done["chosen"], outcomes, here, ctx.imaging.fov)
    if index is None:
        return None
    return {"chosen": [*done["chosen"], index], "outcomes": outcomes,
            "marks": [*done["marks"], mark]}


def search_position(ctx: SessionContext, state: dict[str, Any], index: int
                    ) -> dict[str, Any] | None:
    """The search's index-th position (None past its end)."""
    positions = planned_positions(ctx.plan, state)
    targeting = state.get("targeting")
    if targeting is not None:
        chosen = targeting["chosen"]
        return positions[chosen[index]] if index < len(chosen) else None
    return positions[index] if index < len(positions) else None
