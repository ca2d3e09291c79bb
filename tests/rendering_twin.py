"""The twin as tests of context need it: remembering which region and field each frame it
acquired shows (by the frame's pixels), and survey tiles of one region."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from instruments.devices.frame import Frame
from twins.microscope import TwinMicroscope

TILE_FOV = 20e-6


class RenderingTwin(TwinMicroscope):
    """The twin, remembering which region and field each frame it acquired shows."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.shown: dict[str, dict[str, Any]] = {}

    def acquire(self) -> Frame:
        frame = super().acquire()
        stage, settings = self.status().stage, frame.settings
        region = self.specimen.region_at(stage.x, stage.y)
        self.shown[digest(frame.image)] = {"region": self.specimen.regions.index(region),
                                           "label": region.label, "fov": settings.fov,
                                           "x": stage.x, "y": stage.y}
        return frame


def digest(image: np.ndarray) -> str:
    """A frame's identity by its pixels."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


def region_tiles(twin: TwinMicroscope, label: str, count: int) -> list[dict[str, Any]]:
    """`count` survey tiles two fields apart in the first region of `label` that has them."""
    spec = twin.specimen
    by_region: dict[int, list[dict[str, Any]]] = {}
    for p in spec.survey_centres(TILE_FOV):
        region = spec.region_at(p.x, p.y)
        if region.label == label:
            by_region.setdefault(spec.regions.index(region), []).append({"x": p.x, "y": p.y})
    tiles = next(t for t in by_region.values() if len(t) >= 2 * count)
    return tiles[::2][:count]
