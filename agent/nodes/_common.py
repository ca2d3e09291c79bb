"""Small helpers shared by nodes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.adjudication.images import png_bytes
from agent.runtime import Runtime
from agent.state import AgentState
from instruments import atomic_file
from instruments.frame import Frame


def fail(state: AgentState, reason: str) -> dict[str, Any]:
    """Update that ends the session as failed."""
    return {"status": "failed", "reason": reason, "next": "finish",
            "events": [*state.get("events", []), {"time": time.time(), "kind": "failed",
                                                  "message": reason}]}


def event(state: AgentState, kind: str, message: str, **extra: Any) -> list[dict[str, Any]]:
    """The state's event list with one more incident."""
    return [*state.get("events", []),
            {"time": time.time(), "kind": kind, "message": message, **extra}]


def thumbnail(rt: Runtime, frame: Frame) -> Path:
    """A PNG of the frame for human front-ends, written once per frame id."""
    path = rt.thumbnails / f"{frame.frame_id}.png"
    if not path.exists():
        atomic_file.write_bytes(path, png_bytes(frame.image, max_side=256))
    return path
