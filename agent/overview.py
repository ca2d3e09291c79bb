"""Tiles of a stored overview, for instruments that serve an overview instead of moving a
stage (DTMicroscope's STEM server): the overview is windowed with pycroscopy's
ImageWindowing, each window becomes a Frame, and where the dataset holds a spectrum image the
spectrum at the tile centre is fetched with `get_point_data`. For a targeting strategy the
served image is also the search's low-magnification overview (`targeting_overview`)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from agent.targeting import OVERVIEW_PIXELS, Overview
from instruments.devices.frame import Frame
from instruments.devices.frame_checks import check_image
from instruments.devices.safety import GuardedMicroscope
from instruments.utils.library_log import prints_to_log


def window_overview(image: np.ndarray, tile_px: int) -> np.ndarray:
    """Non-overlapping `tile_px` windows of `image` (cropped to a whole number of tiles), as
    (rows, cols, tile_px, tile_px), computed by pycroscopy's ImageWindowing."""
    rows, cols = image.shape[0] // tile_px, image.shape[1] // tile_px
    if rows < 1 or cols < 1:
        raise ValueError(f"overview {image.shape} is smaller than one {tile_px} px tile")
    crop = np.asarray(image[:rows * tile_px, :cols * tile_px], dtype=np.float32)
    with prints_to_log("pycroscopy ImageWindowing"):     # it prints per-dimension notes
        import sidpy  # deferred: pycroscopy takes seconds to import; only stage-less runs
        from pycroscopy.image import ImageWindowing

        dataset = sidpy.Dataset.from_array(crop, title="overview")
        dataset.data_type = "image"
        windowing = ImageWindowing({"window_size_x": tile_px, "window_size_y": tile_px,
                                    "window_step_x": tile_px, "window_step_y": tile_px,
                                    "mode": "image"})
        windows = np.asarray(windowing.MakeWindows(dataset), dtype=np.float32)
    return windows.transpose(1, 0, 2, 3)      # ImageWindowing indexes (x, y) = (col, row)


class OverviewTiles:
    """A TileSource over the overview image of a stage-less instrument."""

    def __init__(self, microscope: GuardedMicroscope, tile_px: int = 64) -> None:
        """Acquires the overview once. Where the instrument's capabilities name a spectrum
        image (`spectrum_channel`), it is sampled with `get_point_data` at recorded tile
        centres."""
        self.microscope = microscope
        self.spectrum_index = microscope.capabilities().spectrum_channel
        self.overview = microscope.acquire()
        self.tile_px = tile_px
        self.windows = window_overview(self.overview.image, tile_px)
        fov = self.overview.settings.fov
        self.pixel = fov / self.overview.image.shape[0]

    @property
    def tile_fov(self) -> float:
        """A window's side, m."""
        return self.tile_px * self.pixel

    def _corner(self) -> tuple[float, float]:
        """Stage coordinates (m) of the overview's pixel (0, 0) corner: the overview is
        centred on the stage position it reports."""
        half = self.overview.image.shape[0] * self.pixel / 2
        return self.overview.stage.x - half, self.overview.stage.y - half

    def positions(self) -> list[dict[str, Any]]:
        rows, cols = self.windows.shape[:2]
        x0, y0 = self._corner()
        return [{"x": x0 + (c + 0.5) * self.tile_fov, "y": y0 + (r + 0.5) * self.tile_fov,
                 "row": r, "col": c} for r in range(rows) for c in range(cols)]

    def targeting_overview(self, max_pixels: int = OVERVIEW_PIXELS) -> Overview:
        """The served image as a search's overview: block-averaged (scikit-image's
        block_reduce) to at most `max_pixels` a side, so candidates are scored at low
        magnification and each one's high-magnification frame is its full-resolution window.

        Deviation from SmartScope/Ptolemy's atlas: a stage-less server has no magnification
        to change, so the atlas is the one served image binned, not a separate acquisition;
        an image of at most `max_pixels` a side is scored as served (crops = windows)."""
        from skimage.measure import block_reduce

        image = np.asarray(self.overview.image, dtype=np.float32)
        factor = max(1, math.ceil(max(image.shape) / max_pixels))
        rows, cols = image.shape[0] // factor * factor, image.shape[1] // factor * factor
        binned = block_reduce(image[:rows, :cols], (factor, factor), np.mean)
        return Overview(binned.astype(np.float32), self._corner(), self.pixel * factor,
                        [self.overview])

    def frame(self, position: dict[str, Any], sequence: int) -> Frame:
        """The window at the position's row and column; BadFrame (as for any acquired frame)
        where it fails `check_image`, e.g. a constant or saturated patch of the overview."""
        r, c = int(position["row"]), int(position["col"])
        settings = replace(self.overview.settings, fov=self.tile_px * self.pixel,
                           pixels=self.tile_px)
        meta: dict[str, Any] = {"source": "overview window", "overview_frame_id":
                                self.overview.frame_id, "window": {"row": r, "col": c,
                                                                   "size_px": self.tile_px}}
        signal = {key: self.overview.original_metadata[key] for key in ("quantity", "units")
                  if key in self.overview.original_metadata}
        meta.update(signal)                    # the overview's signal is each tile's
        stage = replace(self.overview.stage, x=float(position["x"]), y=float(position["y"]))
        image = check_image(self.windows[r, c].copy(), self.tile_px,
                            where=f"{self.overview.instrument_id} window ({r}, {c})")
        return Frame(image=image, instrument_id=self.overview.instrument_id,
                     settings=settings, stage=stage, sequence=sequence, original_metadata=meta)

    def point_data(self, tile: dict[str, Any]) -> dict[str, Any] | None:
        """The spectrum at a tile's centre pixel (None without a spectrum image).

        DTMicroscope's `get_point_data(key, x, y)` returns `data[x, y]`, x indexing the
        array's first axis (sidpy's "x" dimension): the same axis the tile rows cut."""
        if self.spectrum_index is None:
            return None
        x = int(tile["row"]) * self.tile_px + self.tile_px // 2
        y = int(tile["col"]) * self.tile_px + self.tile_px // 2
        values = np.asarray(self.microscope.inner.get_point_data(self.spectrum_index, x, y))
        return {"channel": self.spectrum_index, "x": x, "y": y,
                "values": values.ravel().astype(float).tolist()}

