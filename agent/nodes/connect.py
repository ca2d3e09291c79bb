"""connect: learn what the instrument can do and apply the session's imaging settings."""

from __future__ import annotations

from typing import Any

from agent.nodes._common import event, fail
from agent.runtime import Runtime
from agent.state import AgentState
from instruments.errors import InstrumentError


def make(rt: Runtime):
    def connect(state: AgentState) -> dict[str, Any]:
        try:
            caps = rt.microscope.capabilities()
            if rt.tiles is None:
                rt.applied = rt.microscope.set_imaging(rt.imaging)
        except InstrumentError as exc:
            return fail(state, f"connect: {exc}")
        return {"next": "check_instrument",
                "events": event(state, "connected", rt.microscope.instrument_id,
                                capabilities={"can_move_stage": caps.can_move_stage,
                                              "has_overview": caps.has_overview,
                                              "has_spectra": caps.has_spectra})}
    return connect
