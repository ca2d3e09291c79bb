"""The graph's checkpointed state: small, JSON-able values only.

Heavy objects (microscope, classifier, session writer, adjudicator, frame pixels) live in
`agent.runtime.Runtime`, never here, so the SQLite checkpointer stores only ids, counters,
budgets and the decision being built for the frame in flight.
"""

from __future__ import annotations

from typing import Any, TypedDict


class AgentState(TypedDict, total=False):
    session_id: str
    objective: dict[str, Any]      # {"kind": "survey"|"hunt", "classes": [...], "target": N}
    max_frames: int
    positions: list[dict[str, Any]]  # survey plan: [{"x","y","row","col"}]; empty for hunt
    plan_index: int
    sequence: int
    current: dict[str, Any] | None  # the decision being built for the frame in flight
    previous_frame_id: str | None
    defocus: float                 # last defocus that gave a good frame (carried forward)
    budgets: dict[str, float]      # limits: rescans, adjudications, tokens, moves, wall_s
    used: dict[str, float]         # spent so far, same keys (wall_s = seconds elapsed)
    counts: dict[str, Any]         # recorded, hits, routes{}, labels{}, errors, refused, ...
    events: list[dict[str, Any]]   # session-level incidents (errors, refusals), for the report
    status: str                    # running | completed | interrupted | failed
    reason: str
    next: str                      # the node a conditional edge goes to next


def new_state(session_id: str, objective: dict[str, Any], max_frames: int,
              budgets: dict[str, float]) -> AgentState:
    """The initial state of a fresh session."""
    return AgentState(
        session_id=session_id, objective=objective, max_frames=max_frames, positions=[],
        plan_index=0, sequence=0, current=None, previous_frame_id=None, budgets=dict(budgets),
        used={"rescans": 0, "adjudications": 0, "tokens": 0, "moves": 0, "wall_s": 0.0},
        counts={"recorded": 0, "hits": 0, "routes": {}, "labels": {}, "errors": 0,
                "consecutive_errors": 0, "refused": 0},
        events=[], status="running", reason="", next="")


def bump(mapping: dict[str, Any], key: str, by: int = 1) -> dict[str, Any]:
    """A copy of `mapping` with `key` incremented (state values are replaced, not mutated)."""
    out = dict(mapping)
    out[key] = out.get(key, 0) + by
    return out
