"""route: record, rescan, adjudicate or ask a human, by the policy."""

from __future__ import annotations

from typing import Any

from agent.policy import decide
from agent.runtime import Runtime
from agent.state import AgentState


def recorded_route(current: dict[str, Any], confident: bool) -> str:
    """The route name a frame is recorded under when the classifier's label stands."""
    if confident:
        return "rescan" if current["rescans"] else "confident"
    return "quality_failed" if not current["quality"]["ok"] else "unresolved"


def make(rt: Runtime):
    def route(state: AgentState) -> dict[str, Any]:
        current = dict(state["current"])
        step = decide(rt.policy, current["prediction"], current["quality"],
                      len(current["rescans"]), state["budgets"], state["used"])
        if step == "record":
            confident = rt.policy.is_confident(current["prediction"])
            current.update(route=recorded_route(current, confident),
                           label=current["prediction"]["label"])
        elif step == "approve":
            current.update(proposal={"label": current["prediction"]["label"],
                                     "source": "classifier"})
        return {"current": current, "next": step}
    return route
