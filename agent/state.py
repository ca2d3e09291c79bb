"""The graph's checkpointed state: small values only (ids, numbers, the typed record).

Heavy objects (the acquirer, classifier, session writer, adjudicator, frame pixels) live in
`agent.context.SessionContext`, never here. Everything a node needs to continue after a restart is
here: the decision being built (`current`, an
`instruments.session_file.decision_record.DecisionRecord`),
the classifier's embedding of the frame in flight (for demonstrations) and the id of the frame
a rescan is measured against for drift (its pixels stay in the scratch store).

Tallies are accumulated by reducers, so a node returns what it adds, never a copy of the
whole: `used` and `counts` add numbers (nested dicts key by key), `events` appends and keeps
the latest EVENTS_KEPT (every event also goes to the event stream, hence the session file and
log: the checkpoint does not grow with a long session's faults).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from agent.policy import Ruling
from instruments.session_file.decision_record import DecisionRecord

Progress = Literal["planned", "plan_finished", "acquired", "abandoned"]
"""Where the frame in flight stands: plan gave a position (`planned`) or none is left
(`plan_finished`); acquire took its frame (`acquired`) or gave the position up (`abandoned`:
a refused move, bad frames)."""


def add_tallies(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer: `left` with every number of `right` added (nested dicts merged the same way)."""
    out = dict(left or {})
    for key, value in (right or {}).items():
        if isinstance(value, dict):
            out[key] = add_tallies(out.get(key), value)
        else:
            out[key] = out.get(key, 0) + value
    return out


def add_tallies_update(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two node updates as one: tallies added, events joined, other keys from `second`."""
    out = {**first, **second}
    for key in ("used", "counts"):
        if key in first and key in second:
            out[key] = add_tallies(first[key], second[key])
    if "events" in first and "events" in second:
        out["events"] = [*first["events"], *second["events"]]
    return out


EVENTS_KEPT = 100
DROPPED = "events_dropped"


def keep_recent(left: list[dict[str, Any]] | None,
                right: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Reducer: `left` then `right`, the latest EVENTS_KEPT entries only; what fell off is
    counted in a leading `events_dropped` entry."""
    items = [*(left or []), *(right or [])]
    dropped = items.pop(0)["count"] if items and items[0].get("kind") == DROPPED else 0
    if len(items) > EVENTS_KEPT:
        dropped, items = dropped + len(items) - EVENTS_KEPT, items[-EVENTS_KEPT:]
    if not dropped:
        return items
    return [{"kind": DROPPED, "count": dropped,
             "message": f"{dropped} earlier events left the checkpoint (the session file's "
                        "incident log and the session log hold them)"}, *items]


class AgentState(TypedDict, total=False):
    session_id: str
    objective: dict[str, Any]      # {"kind": "survey"|"hunt"|"explore", "classes": [...],
    #                                 "target": N, "start", "strategy" (agent.targeting)}
    max_frames: int
    plan: dict[str, Any] | None      # survey plan {"size", "sha256"}: agent.survey_plan
    plan_index: int
    targeting: dict[str, Any] | None  # active search: chosen, outcomes, marks (agent.search_plan)
    sequence: int
    current: DecisionRecord | None   # the decision being built for the frame in flight
    frame_started: float | None      # when its first acquisition began (epoch seconds)
    progress: Progress               # what plan and acquire made of it (the routers read it)
    ruling: Ruling | None            # the policy's decision on it (agent.policy)
    ahead: dict[str, Any] | None     # a survey's next planned position (taken ahead)
    embedding: list[float] | None    # the classifier's embedding of that frame
    reference_id: str | None         # drift reference: the attempt a rescan replaces
    previous_frame_id: str | None
    defocus: float                   # last defocus that gave a good frame (carried forward)
    focus: dict[str, Any]            # autofocus: at_moves, searches, frames, expected{label}
    budgets: dict[str, float]        # limits: rescans, adjudications, tokens, moves, wall_s
    used: Annotated[dict[str, float], add_tallies]   # spent so far (wall_s: seconds)
    counts: Annotated[dict[str, Any], add_tallies]   # recorded, hits, routes{}, labels{}, ...
    consecutive_errors: int          # bad frames in a row (reset by a good one)
    ineffective: list[str]           # kinds of rescan change that changed nothing here
    neighbourhood: list[dict[str, Any]]  # frames the classifier was sure of (context_evidence)
    events: Annotated[list[dict[str, Any]], keep_recent]  # latest incidents
    envelope: dict[str, Any]         # the guard's counters (Acquirer.snapshotting)
    learning: dict[str, Any] | None  # --learn: support set, head, version (agent.learning)
    status: str                      # running | completed | interrupted | failed
    reason: str


def new_state(session_id: str, objective: dict[str, Any], max_frames: int,
              budgets: dict[str, float]) -> AgentState:
    """The initial state of a fresh session."""
    return AgentState(
        session_id=session_id, objective=objective, max_frames=max_frames, plan=None,
        plan_index=0, sequence=0, current=None, ruling=None, embedding=None,
        reference_id=None,
        previous_frame_id=None, budgets=dict(budgets),
        used={"rescans": 0, "adjudications": 0, "tokens": 0, "moves": 0, "wall_s": 0.0},
        counts={"recorded": 0, "hits": 0, "routes": {}, "labels": {}, "errors": 0,
                "refused": 0},
        consecutive_errors=0, ineffective=[], events=[], status="running", reason="")
