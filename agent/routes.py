"""Where the graph goes after a node: pure functions of the state (LangGraph conditional
edges). Nodes write what happened (a planned position or the end of the plan, a frame or an
abandoned position, a failure); after a decision the policy's ruling (`state["ruling"]`,
`agent.policy`) names the next step and the router follows it."""

from __future__ import annotations

from typing import Literal

from agent.state import AgentState

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
    """A planned position is acquired; at the end of the plan the session finishes."""
    return "acquire" if state.get("progress") == "planned" else FINISH


def after_acquire(state: AgentState) -> Literal["assess_quality", "plan", "finish"]:
    """A frame is assessed; an abandoned position (refused, bad frames) goes back to plan."""
    if _failed(state):
        return FINISH
    return "assess_quality" if state.get("progress") == "acquired" else "plan"


def follow_ruling(state: AgentState) -> Literal["record", "rescan", "adjudicate", "approve"]:
    """After classify, adjudicate and approve: the step the policy's ruling names."""
    return state["ruling"]["step"]


def after_rescan(state: AgentState) -> Literal["acquire", "finish"]:
    return FINISH if _failed(state) else "acquire"
