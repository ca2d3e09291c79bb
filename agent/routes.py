"""Where the graph goes after a node: pure functions of the state (LangGraph conditional
edges). Nodes write what happened (a frame, a verdict, a human decision, a failure); these
read it. The route policy (`agent.policy.decide`) is the router after classification."""

from __future__ import annotations

from typing import Literal

from agent.policy import RoutePolicy, decide
from agent.state import AgentState
from instruments.session_file.decision_record import Decision

FINISH = "finish"


def _failed(state: AgentState) -> bool:
    return state.get("status", "running") == "failed"


def after_setup(target: str):
    """connect and check_instrument: on to `target`, or finish when the node failed."""
    def route(state: AgentState) -> str:
        return FINISH if _failed(state) else target
    route.__name__ = f"to_{target}"
    return route


def after_plan(state: AgentState) -> Literal["acquire", "finish"]:
    """A planned position is acquired; no position means the plan is done."""
    return "acquire" if state.get("current") is not None else FINISH


def after_acquire(state: AgentState) -> Literal["assess_quality", "plan", "finish"]:
    """A frame is assessed; an abandoned position (refused, bad frames) goes back to plan."""
    if _failed(state):
        return FINISH
    return "assess_quality" if state.get("current") is not None else "plan"


def after_classify(policy: RoutePolicy):
    """The route policy as the router: record, rescan, adjudicate or approve."""
    def route_frame(state: AgentState) -> Literal["record", "rescan", "adjudicate", "approve"]:
        current = state["current"]
        return decide(policy, current.prediction, current.quality, len(current.rescans),
                      state["budgets"], state["used"],
                      ineffective=state.get("ineffective") or ())
    return route_frame


def after_rescan(state: AgentState) -> Literal["acquire", "finish"]:
    return FINISH if _failed(state) else "acquire"


def after_adjudicate(state: AgentState) -> Literal["record", "approve"]:
    """A decided route is recorded; a proposal without one waits for a human."""
    return "record" if state["current"].route is not None else "approve"


def after_approve(state: AgentState) -> Literal["record", "rescan"]:
    human = state["current"].human
    return "rescan" if human is not None and human.decision == Decision.RESCAN else "record"
