"""Tiles of a stored overview (stage-less instruments): pycroscopy's windows in row-major
order, stage positions at the tile centres, and every tile checked like any acquired frame."""

from __future__ import annotations

import numpy as np
import pytest
from test_session_file import make_frame, make_record

from agent.overview import OverviewTiles, window_overview
from instruments.devices.errors import BadFrame
from instruments.devices.replay import ReplayMicroscope
from instruments.devices.safety import GuardedMicroscope
from instruments.session_file.writer import SessionWriter


def test_windows_cut_the_overview_row_by_row():
    image = np.arange(130 * 200, dtype=np.float32).reshape(130, 200)
    windows = window_overview(image, 64)
    assert windows.shape == (2, 3, 64, 64)                # cropped to whole tiles
    np.testing.assert_array_equal(windows[1, 2], image[64:128, 128:192])


def test_a_tile_that_fails_the_frame_checks_is_a_bad_frame(tmp_path):
    overview = make_frame(0, size=128)
    overview.image[:64, :64] = 5.0                        # a blank quadrant
    overview.image[64:, 64:][:48] = 1000.0                # and one three quarters at maximum
    path = tmp_path / "overview.h5"
    with SessionWriter(path, {"session_id": "overview"}) as writer:
        writer.write_frame(overview, make_record(overview, "Fibres"))
    tiles = OverviewTiles(GuardedMicroscope(ReplayMicroscope(path)), tile_px=64)
    positions = {(p["row"], p["col"]): p for p in tiles.positions()}
    assert sorted(positions) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    with pytest.raises(BadFrame, match="empty"):
        tiles.frame(positions[0, 0], 1)
    with pytest.raises(BadFrame, match="saturated"):
        tiles.frame(positions[1, 1], 2)
    good = tiles.frame(positions[0, 1], 3)
    np.testing.assert_array_equal(good.image, overview.image[:64, 64:])
    assert good.settings.pixel_size == pytest.approx(overview.settings.pixel_size)
    assert good.stage.x == pytest.approx(overview.stage.x + 0.5 * 64 * good.settings.pixel_size)
