"""check_instrument: the instrument is connected, under vacuum and with beam (where it says)."""

from __future__ import annotations

from typing import Any

from agent.context import SessionContext
from agent.nodes._common import fail
from agent.state import AgentState
from instruments.devices.errors import InstrumentError


def make(ctx: SessionContext):
    def check_instrument(state: AgentState) -> dict[str, Any]:
        try:
            status = ctx.acquirer.status()
        except InstrumentError as exc:
            return fail(f"instrument status: {exc}")
        if not status.connected:
            return fail(f"instrument {status.instrument_id} reports not connected")
        if status.vacuum_ok is False:
            return fail(f"instrument {status.instrument_id}: vacuum not ready")
        if status.beam_on is False:
            return fail(f"instrument {status.instrument_id}: beam is off")
        return {}
    return check_instrument
