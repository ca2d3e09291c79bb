"""route: record, rescan, adjudicate or ask a human, by the policy."""

from __future__ import annotations

from typing import Any

from agent.policy import UNKNOWN, RoutePolicy, decide
from agent.runtime import Runtime
from agent.state import AgentState


def recorded_route(current: dict[str, Any], policy: RoutePolicy) -> str:
    """The route name a frame is recorded under when the classifier's verdict stands."""
    if policy.is_unknown(current["prediction"]):
        return UNKNOWN
    if policy.is_confident(current["prediction"]):
        return "rescan" if current["rescans"] else "confident"
    return "quality_failed" if not current["quality"]["ok"] else "unresolved"


def verdict(prediction: dict[str, Any], policy: RoutePolicy) -> dict[str, str]:
    """The classifier's proposal: its top class, or unknown when the OOD test flagged it."""
    if policy.is_unknown(prediction):
        return {"label": UNKNOWN, "source": "ood"}
    return {"label": prediction["label"], "source": "classifier"}


def make(rt: Runtime):
    def route(state: AgentState) -> dict[str, Any]:
        current = dict(state["current"])
        step = decide(rt.policy, current["prediction"], current["quality"],
                      len(current["rescans"]), state["budgets"], state["used"])
        if step == "record":
            current.update(route=recorded_route(current, rt.policy),
                           label=verdict(current["prediction"], rt.policy)["label"])
        elif step == "approve":
            current.update(proposal=verdict(current["prediction"], rt.policy))
        return {"current": current, "next": step}
    return route
