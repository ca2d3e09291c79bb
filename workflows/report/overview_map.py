"""The overview a targeting strategy took, in the report: the mosaic's underlay (the
overview image at its stage position) and a figure of the candidate score map with the order
the frames were taken in and the targets found."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from agent.objectives import ObjectiveError, parse_objective
from instruments.session_file.decision_row import DecisionRow
from instruments.session_file.overview import StoredOverview
from instruments.utils import atomic_file
from instruments.utils.image8 import to_uint8

UNDERLAY_NAME = "overview.png"
MAP_NAME = "search_map.png"


@dataclass(frozen=True)
class Underlay:
    """An image under the mosaic: its PNG (relative to the page) and the stage square it
    covers (m)."""
    src: str
    x0: float
    y0: float
    width: float
    height: float


def write_underlay(stored: StoredOverview, out: Path) -> Underlay:
    """The overview as a PNG drawn y upwards (the mosaic's orientation)."""
    rows, cols = stored.image.shape
    with atomic_file.atomic_path(out / UNDERLAY_NAME) as tmp:
        Image.fromarray(np.flipud(to_uint8(stored.image))).save(tmp, format="PNG")
    return Underlay(UNDERLAY_NAME, stored.origin[0], stored.origin[1],
                    cols * stored.pixel, rows * stored.pixel)


def hit_rows(rows: list[DecisionRow], objective: str) -> set[int]:
    """Indices of the frames labelled with a hunted class."""
    try:
        classes = parse_objective(objective or "survey")["classes"]
    except ObjectiveError:
        return set()
    return {r.index for r in rows if r.label in classes}


def search_map(stored: StoredOverview, rows: list[DecisionRow], objective: str,
               out: Path) -> str:
    """The figure: overview in grey, candidate scores over it, frames numbered in the order
    they were taken, hits ringed; its file name under `out`."""
    rows_px, cols_px = stored.image.shape
    extent_img = (stored.origin[0] * 1e6, (stored.origin[0] + cols_px * stored.pixel) * 1e6,
                  stored.origin[1] * 1e6, (stored.origin[1] + rows_px * stored.pixel) * 1e6)
    srows, scols = stored.scores.shape
    ax0, ay0 = stored.area_origin
    extent_map = (ax0 * 1e6, (ax0 + scols * stored.tile) * 1e6,
                  ay0 * 1e6, (ay0 + srows * stored.tile) * 1e6)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.imshow(stored.image, cmap="gray", origin="lower", extent=extent_img)
    shown = ax.imshow(np.ma.masked_invalid(stored.scores), cmap="viridis", alpha=0.45,
                      origin="lower", extent=extent_map)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="candidate score")
    hits = hit_rows(rows, objective)
    placed = [r for r in rows if r.x is not None and r.y is not None]
    for order, row in enumerate(placed, 1):
        x, y = row.x * 1e6, row.y * 1e6
        if row.index in hits:
            ax.plot(x, y, "o", ms=14, mfc="none", mec="#ff3b30", mew=2)
        ax.text(x, y, str(order), ha="center", va="center", fontsize=8, color="white",
                weight="bold")
    if len(placed) > 1:
        ax.plot([r.x * 1e6 for r in placed], [r.y * 1e6 for r in placed], "-", lw=0.8,
                color="white", alpha=0.7)
    ax.set_xlabel("stage x (µm)")
    ax.set_ylabel("stage y (µm)")
    ax.set_title(f"{len(placed)} frames in visiting order, {len(hits)} hits (ringed)")
    with atomic_file.atomic_path(out / MAP_NAME) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return MAP_NAME
