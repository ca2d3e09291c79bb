"""autofocus: a focus search at a new position (agent/autofocus.py says when and how), its
trial frames taken through the acquirer; the frame is then acquired again at the sharpest
defocus, which carries to the next positions. The search is recorded as the attempt it
replaced (reason `autofocus`, its trials under `focus_search`); one that found no effect
of defocus is recorded so and not repeated in this session."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from agent.autofocus import focus_due, search
from agent.context import SessionContext
from agent.nodes._common import event, fail
from agent.nodes.rescan import replaced
from agent.quality import sharpness
from agent.state import AgentState
from instruments.devices.errors import InstrumentError, SafetyRefused
from instruments.session_file.decision_record import AUTOFOCUS, DecisionRecord


def make(ctx: SessionContext):
    def autofocus(state: AgentState) -> dict[str, Any]:
        ctx.acquirer.settle()
        current: DecisionRecord = state["current"]
        settings, config = current.settings, ctx.autofocus
        why = focus_due(config, state)
        caps = ctx.acquirer.capabilities()
        pixels = min(settings.pixels, config.pixels)
        pixels = pixels if pixels in caps.pixel_options else settings.pixels

        def measure(defocus: float) -> float:
            trial = replace(settings, defocus=defocus, pixels=pixels)
            return sharpness(ctx.acquirer.snap(trial, where).image)

        where = (current.position.x, current.position.y)
        t0 = time.perf_counter()
        try:
            result = search(measure, settings.defocus, caps.defocus_range, config)
        except SafetyRefused as exc:
            return {"focus": {**(state.get("focus") or {}),
                              "at_moves": state["used"].get("moves", 0)},
                    "events": event("autofocus_refused", str(exc))}
        except InstrumentError as exc:
            return fail(f"autofocus: {type(exc).__name__}: {exc}")
        new = replace(settings, defocus=result.defocus)
        note = {"focus_search": result.probes, "trigger": why}
        focus = state.get("focus") or {}
        update = replaced(ctx, state, new, AUTOFOCUS, note, time.perf_counter() - t0,
                          "improved" if result.effect else "none")
        update.update(defocus=result.defocus, focus={
            **focus, "at_moves": state["used"].get("moves", 0),
            "searches": focus.get("searches", 0) + 1,
            "frames": focus.get("frames", 0) + len(result.probes)})
        if not result.effect:
            update["ineffective"] = sorted(set(state.get("ineffective") or []) | {"focus"})
            update["events"] = event("autofocus_no_effect", f"{len(result.probes)} frames "
                                     "over defocus changed nothing measurable; autofocus and "
                                     "focus rescans stop", kinds=["focus"])
        return update
    return autofocus
