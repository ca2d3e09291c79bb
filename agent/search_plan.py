"""The search plan of a hunt or exploration (agent/targeting.py): the candidate tiles fixed
in the session's plan file at the start (ordered by the strategy, or for `active` in
row-major order with the choices made one by one in the checkpointed state), and the
overview, where the strategy takes one, stored in the session file.

On a stage-less instrument that serves an overview (DTMicroscope's STEM dataset, a tile
source) the candidates are the served image's windows within the stage bounds, and the
overview is that served image (agent/overview.py `targeting_overview`), not a mosaic taken."""

from __future__ import annotations

from typing import Any

from agent.context import SessionContext
from agent.survey_plan import planned_positions
from agent.targeting import (
    ACTIVE_INPUTS,
    Overview,
    choose_next,
    crop_features,
    objective_scores,
    outcome_mark,
    rank,
    read_crops,
    score_map,
    search_area,
    spiral_order,
    stage_bounds,
    take_overview,
)
from instruments.devices.errors import InstrumentError
from instruments.session_file.overview import StoredOverview


def search_fov(ctx: SessionContext) -> float:
    """The side of one search tile: the session's FOV, or a served overview's window."""
    return ctx.acquirer.tiles.tile_fov if ctx.acquirer.tiles is not None else ctx.imaging.fov


def _candidates(ctx: SessionContext, state: dict[str, Any], start: tuple[float, float]
                ) -> list[dict[str, Any]]:
    """The search area's tiles that lie wholly inside the stage range and envelope."""
    bounds, fov = stage_bounds(ctx.acquirer), search_fov(ctx)
    if ctx.acquirer.tiles is None:
        return search_area(start, fov, state["max_frames"], bounds)
    (x0, x1), (y0, y1) = bounds
    return [p for p in ctx.acquirer.tiles.positions()
            if x0 <= p["x"] - fov / 2 and p["x"] + fov / 2 <= x1
            and y0 <= p["y"] - fov / 2 and p["y"] + fov / 2 <= y1]


def _overview(ctx: SessionContext, candidates: list[dict[str, Any]]) -> Overview:
    """The served image where the instrument serves one, else a mosaic taken now."""
    if ctx.acquirer.tiles is not None:
        return ctx.acquirer.tiles.targeting_overview()
    return take_overview(ctx.acquirer, ctx.imaging, candidates)


def _store(ctx: SessionContext, state: dict[str, Any], overview: Overview,
           candidates: list[dict[str, Any]], scores: Any, ranked: list[dict[str, Any]]
           ) -> None:
    fov = search_fov(ctx)
    first = min(candidates, key=lambda p: (p["row"], p["col"]))
    area_origin = (first["x"] - (first["col"] + 0.5) * fov,
                   first["y"] - (first["row"] + 0.5) * fov)
    ctx.writer.write_overview(StoredOverview(
        image=overview.image, origin=overview.origin, pixel=overview.pixel,
        scores=score_map(candidates, scores), area_origin=area_origin, tile=fov,
        metadata={"strategy": state["objective"]["strategy"], "objective": state["objective"],
                  "overview_source": "served" if ctx.acquirer.tiles is not None else "taken",
                  "overview_frames": [f.frame_id for f in overview.frames],
                  "ranked": [[p["row"], p["col"]] for p in ranked]}))
    if ctx.stream is not None:               # as stored: the first, where a rerun took another
        ctx.stream.overview(ctx.writer.overview())


def with_surrogate_inputs(candidates: list[dict[str, Any]], scores: Any, embeddings: Any,
                          kind: str) -> list[dict[str, Any]]:
    """The candidates with what the active surrogate reads of the overview (ACTIVE_INPUTS):
    the score as `prior`, the embedding features as `features`. They go into the plan file,
    whose sha256 the checkpointed state keeps, so a resumed session's surrogate reads the
    very inputs the killed one did."""
    with_prior, with_features = ACTIVE_INPUTS[kind]
    features = crop_features(embeddings) if with_features else None
    out = []
    for i, p in enumerate(candidates):
        q = dict(p)
        if with_prior:
            q["prior"] = round(float(scores[i]), 6)
        if features is not None:
            q["features"] = features[i].tolist()
        out.append(q)
    return out


def start_search(ctx: SessionContext, state: dict[str, Any]) -> dict[str, Any]:
    """The update that fixes the search plan (and takes the overview where one is asked:
    `overview`, and `active` where its surrogate reads the overview)."""
    objective, fov = state["objective"], search_fov(ctx)
    start = tuple(objective.get("start", (0.0, 0.0)))
    candidates = _candidates(ctx, state, start)
    strategy, events = objective["strategy"], []
    ordered = candidates
    reads = strategy == "overview" or (strategy == "active" and any(
        ACTIVE_INPUTS[objective["kind"]]))
    if strategy == "spiral":
        ordered = spiral_order(candidates, start)
    elif reads and candidates:
        try:
            overview = _overview(ctx, candidates)
        except InstrumentError as exc:
            events.append({"kind": "overview_failed", "message": f"no overview ({exc}); "
                           "the search goes on without it"})
            ordered = spiral_order(candidates, start) if strategy == "overview" else candidates
        else:
            readings = read_crops(ctx.classifier, overview, candidates, fov)
            scores = objective_scores(readings, objective)
            ranked = rank(candidates, scores, start)
            ordered = ranked if strategy == "overview" else with_surrogate_inputs(
                candidates, scores, readings.embeddings, objective["kind"])
            _store(ctx, state, overview, candidates, scores, ranked)
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
    index = choose_next(positions, done["chosen"], outcomes, here, search_fov(ctx))
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
