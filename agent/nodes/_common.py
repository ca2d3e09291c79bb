"""Small helpers shared by nodes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.adjudication.images import png_bytes
from agent.context import SessionContext
from instruments.devices.frame import Frame


def event(kind: str, message: str, **extra: Any) -> list[dict[str, Any]]:
    """One incident, as the update of the state's `events` (the reducer appends it)."""
    return [{"time": time.time(), "kind": kind, "message": message, **extra}]


def fail(reason: str) -> dict[str, Any]:
    """Update that ends the session as failed (the routers send it to finish)."""
    return {"status": "failed", "reason": reason, "events": event("failed", reason)}


def thumbnail(ctx: SessionContext, frame: Frame) -> Path:
    """A PNG of the frame for human front-ends, written once per frame id."""
    path = ctx.thumbnails / f"{frame.frame_id}.png"
    if not path.exists():
        path.write_bytes(png_bytes(frame.image, max_side=256))
    return path
