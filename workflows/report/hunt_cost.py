"""The summary's lines on what a hunt's targets cost: frames, stage travel and dose per target
found (a target: a frame of a hunted class, of good quality, on a decided route, as the
record node counts it)."""

from __future__ import annotations

import math

from agent.objectives import ObjectiveError, parse_objective
from instruments.devices.safety import dose_per_nm2
from instruments.session_file.decision_record import DECIDED_ROUTES, DecisionRecord


def hunt_rows(objective: str, records: list[DecisionRecord]) -> list[tuple[str, str]]:
    """(item, value) lines for a hunt's session; none for another objective."""
    try:
        parsed = parse_objective(objective or "survey")
    except ObjectiveError:
        return []
    if parsed["kind"] != "hunt":
        return []
    found = sum(r.label in parsed["classes"] and r.quality is not None and r.quality.ok
                and r.route in DECIDED_ROUTES for r in records)
    travel, here = 0.0, None
    for r in records:
        if r.position is not None:
            if here is not None:
                travel += math.hypot(r.position.x - here[0], r.position.y - here[1])
            here = (r.position.x, r.position.y)
    dose = sum(dose_per_nm2(r.settings) for r in records if r.settings is not None)
    if not found:
        return [("targets found", f"none in {len(records)} frames, {travel * 1e6:.0f} um "
                                  f"travel, {dose:.3g} e/nm^2")]
    return [("targets found", f"{found} of {parsed['target']}"),
            ("per target found", f"{len(records) / found:.1f} frames, "
                                 f"{travel * 1e6 / found:.0f} um travel, "
                                 f"{dose / found:.3g} e/nm^2 (sum of frame doses)")]
