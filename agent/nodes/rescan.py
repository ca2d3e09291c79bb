"""rescan: adapt the imaging settings to what was wrong and send the frame back to acquire.

noise -> dwell x4 (within the envelope); blur -> a focus sweep at reduced pixels that keeps
the defocus of the sharpest frame; drift -> half dwell (a faster scan drifts less); a last
rescan that follows an unsuccessful one also narrows the FOV to 0.7x around the centre.
A rescan a human asked for makes the change they picked (longer dwell, refocus, zoom; "auto":
the above), kept with their act in the attempt's record, with what it changed.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from agent.context import SessionContext
from agent.nodes._common import fail, thumbnail
from agent.quality import sharpness
from agent.state import AgentState
from instruments.devices.errors import InstrumentError, SafetyRefused
from instruments.devices.frame import ImagingSettings
from instruments.session_file.decision_record import (
    DecisionRecord,
    HumanRecord,
    RescanChange,
    RescanRecord,
)

SWEEP_STEPS = (-2, -1, 0, 1, 2)
SWEEP_PIXELS = 256
# the failures whose repair makes the change a human picked (no failure: zoom in)
ASKED_FAILURES = {RescanChange.DWELL: ["noise"], RescanChange.FOCUS: ["blur"],
                  RescanChange.ZOOM: []}
_SETTINGS_SHOWN = (("dwell", "s"), ("defocus", "m"), ("fov", "m"))


def _clamp(value: float, *ranges: tuple[float, float]) -> float:
    lo = max(r[0] for r in ranges)
    hi = min(r[1] for r in ranges)
    return min(max(value, lo), hi)


def focus_sweep(ctx: SessionContext, settings: ImagingSettings) -> tuple[float, list[list[float]]]:
    """Acquire at defocus offsets around the current value; the sharpest defocus and the
    (defocus, sharpness) pairs measured."""
    caps = ctx.acquirer.capabilities()
    pixels = min(settings.pixels, SWEEP_PIXELS)
    pixels = pixels if pixels in caps.pixel_options else settings.pixels
    results = []
    for step in SWEEP_STEPS:
        defocus = _clamp(settings.defocus + step * ctx.focus_step, caps.defocus_range)
        trial = replace(settings, defocus=defocus, pixels=pixels)
        results.append([defocus, sharpness(ctx.acquirer.snap(trial).image)])
    best = max(results, key=lambda r: r[1])[0]
    return best, results


def adapt(ctx: SessionContext, settings: ImagingSettings, failures: list[str],
          last_chance: bool, skip: frozenset[str] = frozenset()
          ) -> tuple[ImagingSettings, dict[str, Any]]:
    """New settings for the rescan and a note of what was changed; kinds of change in `skip`
    (dwell, focus, fov: see agent/rescan_effect) are not made."""
    caps, env = ctx.acquirer.capabilities(), ctx.acquirer.envelope
    note: dict[str, Any] = {}
    new = settings
    if "dwell" in skip:
        failures = [f for f in failures if f not in ("noise", "drift")]
    if "focus" in skip:
        failures = [f for f in failures if f != "blur"]
    if "noise" in failures:
        new = replace(new, dwell=_clamp(new.dwell * 4, caps.dwell_range, env.dwell))
        note["dwell"] = new.dwell
    if "drift" in failures and "noise" not in failures:
        new = replace(new, dwell=_clamp(new.dwell / 2, caps.dwell_range, env.dwell))
        note["dwell"] = new.dwell
    if "blur" in failures and caps.defocus_range[0] < caps.defocus_range[1]:
        best, sweep = focus_sweep(ctx, new)
        new = replace(new, defocus=best)
        note["focus_sweep"] = sweep
    if (last_chance or not failures) and "fov" not in skip:
        new = replace(new, fov=_clamp(new.fov * 0.7, caps.fov_range, env.fov))
        note["fov"] = new.fov
    return new, note


def settings_change(old: ImagingSettings, new: ImagingSettings, note: dict[str, Any]) -> str:
    """What a rescan changed, in words (for the audit trail of a human's rescan)."""
    if "refused" in note:
        return f"no change: refused ({note['refused']})"
    changes = [f"{name} {getattr(old, name):.3g} {unit} -> {getattr(new, name):.3g} {unit}"
               for name, unit in _SETTINGS_SHOWN if getattr(old, name) != getattr(new, name)]
    return ", ".join(changes) or "no change: the settings are at their limits"


def _plan(current: DecisionRecord, asked: HumanRecord | None, last_chance: bool,
          ineffective: frozenset[str]) -> tuple[list[str], bool, frozenset[str]]:
    """(failures to repair, last chance, kinds to skip): the frame's own, or those that make
    the change a human picked (made even where it changed nothing before)."""
    change = asked.rescan_change if asked is not None else None
    if change in ASKED_FAILURES:
        return list(ASKED_FAILURES[change]), change == RescanChange.ZOOM, frozenset()
    return list(current.quality.failures), last_chance, ineffective


def replaced(ctx: SessionContext, state: AgentState, new: ImagingSettings, reason: str,
             note: dict[str, Any], adapt_s: float, effect: str | None = None,
             human: HumanRecord | None = None) -> dict[str, Any]:
    """The update that sends the frame in flight back to acquire with `new` settings: the
    attempt it replaces is recorded (its thumbnail, quality, prediction and `note` of what
    was changed, and the `human` act that asked for it) and kept as the reference the next
    frame's drift is measured against."""
    current: DecisionRecord = state["current"]
    previous = ctx.scratch.get(current.frame_id)
    old_reference = state.get("reference_id")
    if old_reference and old_reference != current.frame_id:
        ctx.scratch.drop(old_reference)        # superseded: drift is measured to the last
    attempt = RescanRecord(
        settings=current.settings, new_settings=new, reason=reason, quality=current.quality,
        prediction=current.prediction, adaptation=note, adapt_s=adapt_s,
        thumbnail=str(thumbnail(ctx, previous)), frame_id=current.frame_id, effect=effect,
        human=human)
    record = current.model_copy(update={
        "rescans": [*current.rescans, attempt], "settings": new, "human": None,
        "proposal": None, "route": None, "label": None})
    return {"current": record, "reference_id": current.frame_id, "embedding": None}


def make(ctx: SessionContext):
    def rescan(state: AgentState) -> dict[str, Any]:
        ctx.acquirer.settle()             # the frame in flight first: adapt_s is adapting
        current: DecisionRecord = state["current"]
        settings = current.settings
        asked = current.human                  # a human's "reject and rescan", if any
        failures, last_chance, skip = _plan(
            current, asked, bool(current.escalations) and len(current.escalations) + 1 >=
            ctx.policy.max_rescans, frozenset(state.get("ineffective") or ()))
        t0 = time.perf_counter()
        try:
            new, note = adapt(ctx, settings, failures, last_chance,
                              skip if asked else skip | frozenset(ctx.policy.escalations_off))
        except SafetyRefused as exc:
            note, new = {"refused": str(exc)}, settings
        except InstrumentError as exc:
            return fail(f"rescan: {type(exc).__name__}: {exc}")
        if asked is not None:
            reason = f"operator {asked.operator} asked ({asked.rescan_change or 'auto'})"
            asked = asked.model_copy(update={"effect": settings_change(settings, new, note)})
        else:
            reason = ", ".join(failures) or "unsure"
        return {**replaced(ctx, state, new, reason, note, time.perf_counter() - t0,
                           human=asked),
                "used": {"rescans": 1}}
    return rescan
