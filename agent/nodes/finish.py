"""finish: store the session's outcome (counts, budgets used, incidents) and close the file
with its status: completed, interrupted or failed, and why."""

from __future__ import annotations

from typing import Any

from agent.context import SessionContext
from agent.nodes._common import event
from agent.state import AgentState, add_tallies, add_tallies_update


def close_session(ctx: SessionContext, state: AgentState, status: str, wall_s: float) -> None:
    """Every recorded frame in the file, the outcome stored, the file closed with `status`."""
    if ctx.recorder is not None:
        ctx.recorder.drain()
    ctx.writer.update_provenance(outcome={
        "counts": state["counts"], "used": {**state["used"], "wall_s": wall_s},
        "budgets": state["budgets"], "events": state.get("events", [])[-200:],
        "objective": state["objective"]})
    ctx.writer.close(status, state.get("reason", ""))


def final_status(state: AgentState) -> str:
    status = state.get("status", "running")
    return "completed" if status == "running" else status


def left_over(ctx: SessionContext) -> dict[str, Any]:
    """The update that accounts for a speculative frame the session no longer needs."""
    shot = ctx.acquirer.leftover()
    if shot is None:
        return {}
    return {"counts": {"speculative_discarded": 1}, "used": {"moves": int(shot.moved)},
            "events": event("speculative_discarded", f"{shot.what} at {shot.position} not "
                                                     "needed: the session ended")}


def make(ctx: SessionContext):
    def finish(state: AgentState) -> dict[str, Any]:
        tick = ctx.tick()
        update = add_tallies_update(left_over(ctx), {"status": final_status(state),
                                                    "used": {"wall_s": tick}})
        ended = {**state, "counts": add_tallies(state["counts"], update.get("counts")),
                 "used": add_tallies(state["used"], update["used"]),
                 "events": [*state.get("events", []), *update.get("events", [])]}
        close_session(ctx, ended, update["status"], ended["used"].get("wall_s", 0.0))
        return update
    return finish
