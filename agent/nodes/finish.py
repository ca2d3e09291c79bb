"""finish: store the session's outcome (counts, budgets used, incidents) and close the file
with its status: completed, interrupted or failed, and why."""

from __future__ import annotations

from typing import Any

from agent.runtime import Runtime
from agent.state import AgentState


def make(rt: Runtime):
    def finish(state: AgentState) -> dict[str, Any]:
        status = state.get("status", "running")
        status = "completed" if status == "running" else status
        used = dict(state["used"])
        used["wall_s"] = used.get("wall_s", 0.0) + rt.tick()
        if rt.recorder is not None:
            rt.recorder.drain()               # every recorded frame is in the file
        rt.writer.update_provenance(outcome={
            "counts": state["counts"], "used": used, "budgets": state["budgets"],
            "events": state.get("events", [])[-200:], "objective": state["objective"]})
        rt.writer.close(status, state.get("reason", ""))
        if rt.on_update is not None:
            rt.on_update("finished", {"status": status, "reason": state.get("reason", "")})
        return {"status": status, "used": used, "next": "end"}
    return finish
