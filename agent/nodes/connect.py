"""connect: learn what the instrument can do and apply the session's imaging settings."""

from __future__ import annotations

from typing import Any

from agent.nodes._common import event, fail
from agent.runtime import Runtime
from agent.state import AgentState
from instruments.devices.errors import InstrumentError


def make(rt: Runtime):
    def connect(state: AgentState) -> dict[str, Any]:
        if rt.prefetch is not None:
            rt.prefetch.settle()               # the instrument finishes the frame in flight
        try:
            caps = rt.microscope.capabilities()
            if rt.tiles is None:
                rt.applied = rt.microscope.set_imaging(rt.imaging)
        except InstrumentError as exc:
            return fail(f"connect: {exc}")
        return {"events": event("connected", rt.microscope.instrument_id,
                                capabilities={"can_move_stage": caps.can_move_stage,
                                              "has_overview": caps.has_overview,
                                              "has_spectra": caps.has_spectra})}
    return connect
