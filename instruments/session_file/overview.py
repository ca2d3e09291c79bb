"""A session's overview: the low-magnification mosaic a targeting strategy took and the score
it gave each candidate tile, as two NSID datasets in the session file's `/Overview` group,
with their calibration (stage coordinates in m: axis 0 is y, rows of increasing y; axis 1 is
x), so any NSID reader (SciFiReaders, pyNSID) places them on the stage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from instruments.session_file.nsid_writer import Dimension, NsidDataset

OVERVIEW_GROUP = "Overview"
IMAGE_NAME = "Overview"
SCORES_NAME = "Score_map"


@dataclass
class StoredOverview:
    """What a session file holds of its overview (read back)."""
    image: np.ndarray
    origin: tuple[float, float]      # (x, y) of pixel (0, 0)'s corner, m
    pixel: float                     # m a side
    scores: np.ndarray               # (rows, cols) per search tile; NaN: no candidate
    area_origin: tuple[float, float]  # (x, y) of the search area's corner, m
    tile: float                      # the search tile's side (the session's FOV), m
    metadata: dict[str, Any]         # strategy, objective, visited order


def _dims(shape: tuple[int, int], origin: tuple[float, float], step: float
          ) -> list[Dimension]:
    return [Dimension("y", origin[1] + np.arange(shape[0]) * step, "m", "distance"),
            Dimension("x", origin[0] + np.arange(shape[1]) * step, "m", "distance")]


def overview_datasets(stored: StoredOverview) -> dict[str, NsidDataset]:
    """The two NSID datasets of an overview, by name."""
    meta = {"micagent": "overview", **stored.metadata}
    image = NsidDataset(data=np.asarray(stored.image, np.float32),
                        dims=_dims(stored.image.shape, stored.origin, stored.pixel),
                        title=IMAGE_NAME, quantity="intensity", units="a.u.",
                        data_type="IMAGE", source="micagent:overview", metadata=meta)
    scores = NsidDataset(data=np.asarray(stored.scores, np.float32),
                         dims=_dims(stored.scores.shape,
                                    (stored.area_origin[0] + stored.tile / 2,
                                     stored.area_origin[1] + stored.tile / 2), stored.tile),
                         title=SCORES_NAME, quantity="target score", units="probability",
                         data_type="IMAGE", source="micagent:targeting", metadata=meta)
    return {IMAGE_NAME: image, SCORES_NAME: scores}


def _axis_start_step(dataset: h5py.Dataset, axis: str) -> tuple[float, float]:
    values = np.asarray(dataset.parent[axis][()], dtype=np.float64)
    return float(values[0]), float(values[1] - values[0]) if len(values) > 1 else 0.0


def read_overview(f: h5py.File) -> StoredOverview | None:
    """The overview a session file holds, or None (a session without one)."""
    group = f.get(OVERVIEW_GROUP)
    if not isinstance(group, h5py.Group) or IMAGE_NAME not in group \
            or SCORES_NAME not in group:
        return None
    image = group[IMAGE_NAME][IMAGE_NAME]
    scores = group[SCORES_NAME][SCORES_NAME]
    (ix, pixel), (iy, _) = _axis_start_step(image, "x"), _axis_start_step(image, "y")
    (sx, tile), (sy, _) = _axis_start_step(scores, "x"), _axis_start_step(scores, "y")
    meta = json.loads(group.attrs.get("metadata", "{}"))
    return StoredOverview(image=image[()], origin=(ix, iy), pixel=pixel, scores=scores[()],
                          area_origin=(sx - tile / 2, sy - tile / 2), tile=tile,
                          metadata=meta)
