"""connect: learn what the instrument can do and apply the session's imaging settings."""

from __future__ import annotations

from typing import Any

from agent.context import SessionContext
from agent.nodes._common import event, fail
from agent.state import AgentState
from instruments.devices.errors import InstrumentError


def make(ctx: SessionContext):
    def connect(state: AgentState) -> dict[str, Any]:
        try:
            caps = ctx.acquirer.connect(ctx.imaging)
        except InstrumentError as exc:
            return fail(f"connect: {exc}")
        return {"events": event("connected", ctx.acquirer.instrument_id,
                                capabilities={"can_move_stage": caps.can_move_stage,
                                              "has_overview": caps.has_overview,
                                              "has_spectra": caps.has_spectra})}
    return connect
