"""Cumulative electron dose per area over a session.

Every scanned frame is an exposure: a square footprint of side `fov` centred on the stage
position, and the dose it delivered there (electrons per nm^2). The dose a point of the
specimen has received is the sum over the footprints that cover it: rescans, autofocus frames
and overlapping neighbours all count. Exposures at the same place with the same field of view
are merged, so the ledger grows with the places imaged, not with the frames.
"""

from __future__ import annotations

import numpy as np

KEY_DIGITS = 12          # positions and fields of view equal to 1 pm are the same exposure


class DoseLedger:
    """Exposures (x, y, fov in m; dose in e/nm^2) and the peak dose under a footprint."""

    def __init__(self, exposures: list[list[float]] | None = None) -> None:
        self._doses: dict[tuple[float, float, float], float] = {}
        for x, y, fov, dose in exposures or []:
            self.add(x, y, fov, dose)

    def add(self, x: float, y: float, fov: float, dose: float) -> None:
        """Record one frame's exposure."""
        key = (round(float(x), KEY_DIGITS), round(float(y), KEY_DIGITS),
               round(float(fov), KEY_DIGITS))
        self._doses[key] = self._doses.get(key, 0.0) + float(dose)

    def peak(self, x: float, y: float, fov: float) -> float:
        """The highest dose any point of the footprint (x, y, fov) has received so far."""
        if not self._doses:
            return 0.0
        rects = np.array([(ex - ef / 2, ex + ef / 2, ey - ef / 2, ey + ef / 2, dose)
                          for (ex, ey, ef), dose in self._doses.items()])
        x0, x1, y0, y1 = x - fov / 2, x + fov / 2, y - fov / 2, y + fov / 2
        overlap = ((rects[:, 0] < x1) & (rects[:, 1] > x0) & (rects[:, 2] < y1)
                   & (rects[:, 3] > y0))
        rects = rects[overlap]
        if not len(rects):
            return 0.0
        # cells between the clipped edges: the dose is constant on each
        xs = np.unique(np.clip(np.r_[rects[:, 0], rects[:, 1], x0, x1], x0, x1))
        ys = np.unique(np.clip(np.r_[rects[:, 2], rects[:, 3], y0, y1], y0, y1))
        mx, my = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
        inside_x = (rects[:, 0][:, None] <= mx) & (mx <= rects[:, 1][:, None])
        inside_y = (rects[:, 2][:, None] <= my) & (my <= rects[:, 3][:, None])
        per_cell = np.einsum("r,rx,ry->xy", rects[:, 4], inside_x.astype(float),
                             inside_y.astype(float))
        return float(per_cell.max()) if per_cell.size else 0.0

    def snapshot(self) -> list[list[float]]:
        """The exposures as plain lists (for a checkpoint); `DoseLedger(snapshot)` restores."""
        return [[x, y, fov, dose] for (x, y, fov), dose in self._doses.items()]

    def __len__(self) -> int:
        return len(self._doses)
