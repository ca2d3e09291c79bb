"""Small helpers shared by nodes."""

from __future__ import annotations

import time
from typing import Any

from agent.state import AgentState


def fail(state: AgentState, reason: str) -> dict[str, Any]:
    """Update that ends the session as failed."""
    return {"status": "failed", "reason": reason, "next": "finish",
            "events": [*state.get("events", []), {"time": time.time(), "kind": "failed",
                                                  "message": reason}]}


def event(state: AgentState, kind: str, message: str, **extra: Any) -> list[dict[str, Any]]:
    """The state's event list with one more incident."""
    return [*state.get("events", []),
            {"time": time.time(), "kind": kind, "message": message, **extra}]
