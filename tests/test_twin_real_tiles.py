"""Real images as specimen tiles: the shared NSID file (read from a copy) and PNG/TIFF, and
the served twin that shows them (`micagent twin serve --tile FILE`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from instruments.devices.frame import ImagingSettings, StagePosition
from twins.faults import FaultSpec
from twins.microscope import TwinMicroscope
from twins.real_tiles import (
    RealTileError,
    add_real_tiles,
    load_nsid,
    load_real_tiles,
    specimen_with_real_tiles,
)
from twins.serve import make_twin
from twins.specimen import Specimen
from workflows.cli.app import app


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nsid_images_become_tiles_and_the_file_is_untouched(shared_nsid_file):
    before, mtime = digest(shared_nsid_file), shared_nsid_file.stat().st_mtime_ns
    tiles = load_nsid(shared_nsid_file)
    assert digest(shared_nsid_file) == before
    assert shared_nsid_file.stat().st_mtime_ns == mtime
    assert len(tiles) == 4
    tile = tiles[0]
    assert tile.label == "real:PTO_Funakubo0001:Channel_000"
    assert tile.image.shape == (256, 256)
    assert tile.pixel == pytest.approx(1e-6 / 255, rel=1e-6)  # from the x dimension in m

    specimen = Specimen(seed=0, tile=256)
    (region,) = add_real_tiles(specimen, [tile], cells=[0])
    centre = StagePosition((region.x0 + region.x1) / 2, (region.y0 + region.y1) / 2)
    scope = TwinMicroscope(seed=0, specimen=specimen)
    scope.move_stage(centre)
    scope.set_imaging(ImagingSettings(fov=0.8e-6, pixels=128, dwell=20e-6))
    frame = scope.acquire()
    assert frame.evaluation["label"] == tile.label
    truth = tile.image[26:230, 26:230]  # the central 0.8 um of the 1 um image
    ref = np.asarray(Image.fromarray(truth).resize((128, 128), Image.BILINEAR))
    assert np.corrcoef(frame.image.ravel(), ref.ravel())[0, 1] > 0.5


def test_png_and_tiff_tiles(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((40, 60)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", img.astype(np.float32))
    (png,) = load_real_tiles(tmp_path / "a.png", fov=6e-6)
    (tif,) = load_real_tiles(tmp_path / "b.tif", fov=6e-6)
    for tile in (png, tif):
        assert tile.image.shape == (40, 60) and tile.pixel == pytest.approx(1e-7)
        np.testing.assert_allclose(tile.image, img)
    specimen = specimen_with_real_tiles([tmp_path / "a.png", tmp_path / "b.tif"], fov=6e-6)
    assert [r.label for r in specimen.regions[-2:]] == ["real:a", "real:b"]
    region = specimen.regions[-1]
    assert region.x1 - region.x0 == pytest.approx(6e-6)
    assert specimen.label_at((region.x0 + region.x1) / 2, (region.y0 + region.y1) / 2) == \
        "real:b"


def test_unusable_files_raise_a_typed_error(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat.png")
    for name in ("x.txt", "bad.h5", "flat.png", "missing.h5"):
        with pytest.raises(RealTileError):
            load_real_tiles(tmp_path / name)


def test_an_image_larger_than_its_cell_is_cropped_around_its_centre():
    ramp = np.tile(np.linspace(0.0, 1.0, 400, dtype=np.float32), (400, 1))  # 400 um wide
    specimen = Specimen(seed=0, tile=256)
    region = specimen.place_real_tile(ramp, "real:ramp", pixel=1e-6, cell=0)
    assert region.x1 - region.x0 < 250e-6
    centre = ((region.x0 + region.x1) / 2, (region.y0 + region.y1) / 2)
    signal, _ = specimen.render(centre, 4e-6, 32)
    assert signal.mean() == pytest.approx(0.5, abs=0.02)  # the ramp's middle, scaled to 0.1-0.9


def test_the_served_twin_shows_the_tiles_it_is_given(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(
        tmp_path / "mine.png")
    twin = make_twin(3, FaultSpec(), tiles=[str(tmp_path / "mine.png")])
    region = twin.specimen.regions[-1]
    twin.move_stage(StagePosition((region.x0 + region.x1) / 2, (region.y0 + region.y1) / 2))
    twin.set_imaging(ImagingSettings(fov=2e-6, pixels=64, dwell=20e-6))
    assert twin.acquire().evaluation["label"] == "real:mine"


def test_twin_serve_refuses_an_unusable_tile_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = CliRunner().invoke(app, ["twin", "serve", "--protocol", "tem", "--port", "0",
                                      "--tile", str(tmp_path / "notes.txt")])
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert errors[0].startswith("error: cannot serve the twin") and "notes.txt" in errors[0]
