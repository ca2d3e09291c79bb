"""The TEM protocol's `set_stage` request, parsed once for every server (stdlib only)."""
from __future__ import annotations

from typing import Any

STAGE_AXES = ("x", "y", "z", "a", "b")


def stage_target(stage_positions: Any, current: list[float], relative: bool,
                 movable: tuple[str, ...]) -> list[float]:
    """Target [x, y, z, a, b] for a DTMicroscope-style `stage_positions` (a list in axis order
    or a dict by axis name); axes not given keep `current`. Moving an axis outside `movable`
    is a ValueError, as is any other shape of request."""
    if isinstance(stage_positions, list | tuple):
        stage_positions = dict(zip(STAGE_AXES, stage_positions, strict=False))
    if not isinstance(stage_positions, dict) or set(stage_positions) - set(STAGE_AXES):
        raise ValueError(f"stage_positions must be a list or a dict of {STAGE_AXES}")
    for axis in STAGE_AXES:
        if axis not in movable and stage_positions.get(axis):
            raise ValueError(f"this stage has no {axis} axis to move")
    target = []
    for axis, now in zip(STAGE_AXES, current, strict=True):
        value = stage_positions.get(axis)
        target.append(now if value is None else float(value) + (now if relative else 0.0))
    return target
