"""Drives a compiled graph: streams until an interrupt, hands the payload to the
ApprovalBroker, resumes with the human's decision (a HumanDecision) via `Command(resume=...)`,
until the end. What enters the state's `events` (the input's and each finished step's) and
every human decision go to the session's event stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.types import Command

from agent.approval_broker import ApprovalBroker
from agent.approval_request import as_request
from agent.event_stream import EventStream
from agent.state import AgentState


class ApprovalUnavailable(RuntimeError):
    """The graph asks a human but the session has no approval front-end."""


def thread_config(session_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": session_id}, "recursion_limit": 1_000_000}


def run_graph(graph, session_id: str, initial: AgentState | None,
              broker: ApprovalBroker | None = None,
              on_step: Callable[[str, dict[str, Any]], None] | None = None,
              approval_timeout: float | None = None,
              stream: EventStream | None = None) -> dict[str, Any]:
    """Run (or, with `initial=None`, resume) the session's thread to its end; its final state.

    Each step's checkpoint is written before the next step starts (durability "sync").
    """
    config = thread_config(session_id)
    payload: Any = initial
    if stream is not None and isinstance(initial, dict):
        stream.state_events(initial.get("events"))
    while True:
        for chunk in graph.stream(payload, config, stream_mode="updates", durability="sync"):
            for node, update in chunk.items():
                if node.startswith("__"):
                    continue
                if stream is not None:
                    stream.state_events((update or {}).get("events"))
                if on_step is not None:
                    on_step(node, update or {})
        snapshot = graph.get_state(config)
        if not snapshot.interrupts:
            return dict(snapshot.values)
        request = as_request(snapshot.interrupts[0].value)
        if broker is None:
            raise ApprovalUnavailable(f"session {session_id} waits for a human decision "
                                      f"({request.kind}) but has no front-end")
        request_id = broker.submit(request)
        decision = broker.wait(request_id, timeout=approval_timeout)
        if decision is None:
            raise ApprovalUnavailable(f"no decision for approval {request_id} within "
                                      f"{approval_timeout} s")
        if stream is not None:
            stream.decision(request, decision)
        payload = Command(resume=decision)
