"""Objectives and the positions they visit: a survey grid, or an outward spiral for a hunt."""

from __future__ import annotations

import math
from typing import Any


class ObjectiveError(ValueError):
    """An objective string that does not parse, or names unknown classes."""


def parse_objective(text: str, class_names: list[str] | None = None) -> dict[str, Any]:
    """`survey`, `explore` or `hunt:CLASS[,CLASS][:N]` -> {"kind", "classes", "target"}."""
    text = text.strip()
    if text in ("survey", "explore"):
        return {"kind": text, "classes": [], "target": 0}
    kind, _, rest = text.partition(":")
    if kind != "hunt" or not rest:
        raise ObjectiveError(f"objective {text!r}: expected 'survey', 'explore' or "
                             "'hunt:CLASS[,CLASS][:N]'")
    names, _, count = rest.partition(":")
    classes = [c.strip() for c in names.split(",") if c.strip()]
    try:
        target = int(count) if count else 5
    except ValueError as exc:
        raise ObjectiveError(f"objective {text!r}: N must be an integer") from exc
    if not classes or target < 1:
        raise ObjectiveError(f"objective {text!r}: needs at least one class and N >= 1")
    if class_names is not None:
        unknown = [c for c in classes if c not in class_names]
        if unknown:
            raise ObjectiveError(f"objective {text!r}: unknown class "
                                 f"{', '.join(unknown)}; the model knows "
                                 f"{', '.join(class_names)}")
    return {"kind": "hunt", "classes": classes, "target": target}


def grid_positions(region: tuple[tuple[float, float], tuple[float, float]], fov: float,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """Tile centres of a row-major grid of `fov`-sized tiles covering `region` ((x0,x1),(y0,y1))."""
    (x0, x1), (y0, y1) = region
    cols = max(1, math.floor((x1 - x0) / fov + 1e-9))    # tolerance: 100e-6 // 20e-6 == 4.0
    rows = max(1, math.floor((y1 - y0) / fov + 1e-9))
    out = []
    for row in range(rows):
        for col in range(cols):
            out.append({"x": x0 + (col + 0.5) * fov, "y": y0 + (row + 0.5) * fov,
                        "row": row, "col": col})
            if limit is not None and len(out) >= limit:
                return out
    return out


def spread(positions: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` positions evenly spread over the list (all of them when count >= len)."""
    if count >= len(positions):
        return list(positions)
    step = len(positions) / count
    return [positions[int(i * step)] for i in range(count)]


def spiral_offset(index: int) -> tuple[int, int]:
    """The `index`-th cell (col, row) of a square spiral outward from (0, 0)."""
    if index == 0:
        return 0, 0
    ring = math.ceil((math.sqrt(index + 1) - 1) / 2)
    side = 2 * ring
    first = (2 * ring - 1) ** 2          # index of the first cell of this ring
    k = index - first
    if k < side:
        return ring, -ring + 1 + k
    k -= side
    if k < side:
        return ring - 1 - k, ring
    k -= side
    if k < side:
        return -ring, ring - 1 - k
    k -= side
    return -ring + 1 + k, -ring


def spiral_position(index: int, start: tuple[float, float], pitch: float) -> dict[str, Any]:
    col, row = spiral_offset(index)
    return {"x": start[0] + col * pitch, "y": start[1] + row * pitch, "row": row, "col": col}
