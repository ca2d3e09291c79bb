"""`micagent inspect SESSION.h5 [--json]` and `micagent export SESSION.h5 OUT_DIR`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_session_file import make_frame, make_record
from typer.testing import CliRunner

from instruments.session_file.writer import SessionWriter
from workflows.cli.app import app

runner = CliRunner()


@pytest.fixture
def session(tmp_path: Path):
    path = tmp_path / "session.h5"
    frames = [make_frame(i, size=32) for i in range(3)]
    with SessionWriter(path, {"session_id": "cli"}) as writer:
        writer.write_frame(frames[0], make_record(frames[0], "Fibres"))
        writer.write_frame(frames[1], make_record(
            frames[1], "Powder", route="adjudicated",
            adjudication={"adjudicator": "offline-knn", "demonstrations": ["d1"],
                          "prompt_hash": "h", "answer": None, "error": None,
                          "reclassified": {}}))
        writer.write_frame(frames[2], make_record(frames[2], "Fibres"))
    return path, frames


def test_inspect_json_prints_one_object_with_the_agreed_keys(session) -> None:
    path, frames = session
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["session_id"] == "cli" and summary["status"] == "completed"
    assert summary["frames"] == 3
    assert summary["frame_ids"] == [f.frame_id for f in frames]
    assert summary["labels"] == ["Fibres", "Powder", "Fibres"]
    assert summary["routes"] == ["confident", "adjudicated", "confident"]
    assert summary["escalations"] == 1 and summary["approvals"] == 0
    assert summary["accuracy"] == pytest.approx(2 / 3)


def test_inspect_prints_a_readable_summary(session) -> None:
    path, _ = session
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("session cli", "completed", "Fibres: 2", "adjudicated: 1", "0.667"):
        assert text in result.stdout


def test_inspect_of_a_foreign_nsid_file_fails_clearly(shared_nsid_file: Path) -> None:
    result = runner.invoke(app, ["inspect", str(shared_nsid_file), "--json"])
    assert result.exit_code == 2
    assert "no micagent session records" in result.stderr


def test_export_png_and_tiff(session, tmp_path: Path) -> None:
    path, frames = session
    result = runner.invoke(app, ["export", str(path), str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "png").glob("*.png"))
    labels = ["Fibres", "Powder", "Fibres"]
    assert [p.name for p in pngs] == [f"{i:06d}_{label}_{f.frame_id}.png" for i, (f, label)
                                      in enumerate(zip(frames, labels, strict=True))]
    with Image.open(pngs[0]) as img:
        assert (img.mode, img.size) == ("L", (32, 32))
        assert json.loads(img.text["frame_id"]) == frames[0].frame_id
        assert json.loads(img.text["label"]) == "Fibres"
        assert json.loads(img.text["route"]) == "confident"
        pixels = np.asarray(img)
    assert pixels.min() == 0 and pixels.max() == 255

    result = runner.invoke(app, ["export", str(path), str(tmp_path / "tif"), "--format", "tiff"])
    assert result.exit_code == 0, result.output
    tifs = sorted((tmp_path / "tif").glob("*.tif"))
    assert len(tifs) == 3
    with tifffile.TiffFile(tifs[1]) as tif:
        np.testing.assert_array_equal(tif.asarray(), frames[1].image)
        assert tif.pages[0].dtype == np.float32
        described = json.loads(tif.pages[0].description)
        assert (described["frame_id"], described["label"], described["route"]) == (
            frames[1].frame_id, "Powder", "adjudicated")
        assert tifs[1].name == f"000001_Powder_{frames[1].frame_id}.tif"


def test_png_scaling_handles_constant_and_non_finite_pixels() -> None:
    from instruments.utils.image8 import MIN_MAX, to_uint8

    assert to_uint8(np.full((4, 4), 3.0)).max() == 0 == to_uint8(np.full(3, np.nan)).max()
    img = np.array([[0.0, 1.0], [np.nan, np.inf]])
    np.testing.assert_array_equal(to_uint8(img, MIN_MAX), [[0, 255], [0, 0]])
    ramp = to_uint8(np.arange(1001.0))          # auto contrast: 0.5th..99.5th percentile
    assert (ramp[0], ramp[5], ramp[500], ramp[995], ramp[1000]) == (0, 0, 128, 255, 255)


def test_export_of_a_real_nsid_file_and_to_an_unwritable_folder(shared_nsid_file: Path,
                                                                tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(shared_nsid_file), str(tmp_path / "pto")])
    assert result.exit_code == 0, result.output
    exported = sorted((tmp_path / "pto").glob("*.png"))
    assert len(exported) == 4 and all("_unlabelled_" in p.name for p in exported)

    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["export", str(shared_nsid_file), str(blocker / "out")])
    assert result.exit_code == 2
    assert "cannot create output folder" in result.stderr
