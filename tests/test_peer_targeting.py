"""Overview targeting on the real peers: DTMicroscope's own STEM server (its served overview
image is the search's overview, its full-resolution windows the high-magnification frames),
and a wide-FOV overview taken through the acquirer and the guard on a tem:// server (our twin)
and on Nion's simulator behind the bridge. Every visited position lies inside the stage range
and the envelope; the overview and its score map are stored as NSID that SciFiReaders reads."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from nion_bridge import needs_nion, running_bridge
from peers import served_dtm_stem
from rich.console import Console
from twin_process import served_twin

from agent.config import RunConfig
from instruments.devices.frame import StagePosition
from instruments.devices.tem_client import TemClient
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.stem_nsid import write_stem_nsid
from workflows.report.session_report import build_report
from workflows.session_assembly import run_session

pytestmark = pytest.mark.slow

torch.set_num_threads(1)
TARGET = SEM_CLASSES[0]
SERVED_PX, PIXEL_M, TILE_PX, BIN = 512, 4e-11, 64, 2     # 512 px served: binned 2x to 256


@pytest.fixture(scope="module")
def classifier(untrained_classifier):
    return untrained_classifier


@pytest.fixture(scope="module")
def dtm(tmp_path_factory):
    """DTMicroscope's own server and an NSID HAADF image (pyNSID) it registers."""
    path = tmp_path_factory.mktemp("dtm") / "haadf.h5"
    image = write_stem_nsid(path, side=SERVED_PX, pixel_m=PIXEL_M)
    with served_dtm_stem() as served:
        yield f"dtm://{served.host}:{served.port}?data={path}", image


def hunt(tmp_path: Path, uri: str, classifier, frames: int, strategy: str = "overview",
         **kw) -> tuple[dict, Path]:
    config = RunConfig(session_id=str(uuid.uuid4()), instrument=uri, out=str(tmp_path / "s.h5"),
                       state_dir=str(tmp_path / "state"), bank="none", confidence=0.0,
                       max_set_size=10, objective=f"hunt:{TARGET}:{frames + 5}",
                       frames=frames, strategy=strategy, **kw)
    return run_session(config, Console(quiet=True), quiet=True,
                       classifier=classifier), Path(config.out)


def read_map(scifi_read, path: Path) -> dict:
    datasets = scifi_read(path)
    return {str(d.title).rsplit("/", 1)[-1]: d for d in datasets.values()}


def test_dtm_overview_hunt_scores_the_served_image_and_spends_windows_best_first(
        tmp_path, classifier, dtm, scifi_read):
    """No --strategy: a hunt's default where the overview is served, the overview."""
    uri, served = dtm
    final, out = hunt(tmp_path, uri, classifier, frames=4, strategy="")
    assert final["status"] == "completed"
    low = served.reshape(SERVED_PX // BIN, BIN, SERVED_PX // BIN, BIN).mean(axis=(1, 3))
    side = TILE_PX // BIN
    with SessionReader(out) as reader:
        stored = reader.overview()
        visits = list(reader.frames())
    assert stored.metadata["overview_source"] == "served"
    np.testing.assert_allclose(stored.image, low, rtol=1e-5)     # DTMicroscope's image, binned
    assert stored.pixel == pytest.approx(BIN * PIXEL_M)
    assert stored.tile == pytest.approx(TILE_PX * PIXEL_M) and stored.scores.shape == (8, 8)
    ranked = [tuple(rc) for rc in stored.metadata["ranked"]]
    assert [(r.tile.row, r.tile.col) for _, r in visits] == ranked[:4]
    names = list(classifier.class_names)
    for frame, record in visits:          # the high-magnification frame: the full window
        r, c = record.tile.row, record.tile.col
        np.testing.assert_allclose(frame.image, served[r * TILE_PX:(r + 1) * TILE_PX,
                                                       c * TILE_PX:(c + 1) * TILE_PX])
        crop = low[r * side:(r + 1) * side, c * side:(c + 1) * side]
        prediction = classifier.classify([crop])[0]
        unknown = bool(prediction.ood and prediction.ood.get("unknown"))
        expected = 0.0 if unknown else prediction.probabilities[names.index(TARGET)]
        assert stored.scores[r, c] == pytest.approx(expected, abs=1e-5)
    assert stored.scores[ranked[0]] == pytest.approx(np.nanmax(stored.scores))
    maps = read_map(scifi_read, out)
    assert maps["Score_map"].x.units == "m"
    assert np.diff(maps["Score_map"].x.values) == pytest.approx([TILE_PX * PIXEL_M] * 7)
    assert np.diff(maps["Overview"].y.values)[0] == pytest.approx(BIN * PIXEL_M)
    page = build_report(out, tmp_path / "report").read_text("utf-8")
    assert "Where the search looked" in page


def test_dtm_windows_outside_the_envelope_are_never_candidates(tmp_path, classifier, dtm):
    """The envelope's lower x limit lies half a window left of the image's centre: only the
    right half's windows lie wholly inside it, and the left half is never scored nor visited
    though the hunt's budget would reach it."""
    uri, _ = dtm
    final, out = hunt(tmp_path, uri, classifier, frames=40,
                      envelope={"stage_x": [-TILE_PX * PIXEL_M / 2, 1e-3]})
    with SessionReader(out) as reader:
        stored = reader.overview()
        visited = [(r.tile.row, r.tile.col) for r in reader.records()]
    assert final["reason"].startswith("hunt ended: search area of 32 tiles covered")
    assert sorted(visited) == [(r, c) for r in range(8) for c in range(4, 8)]
    assert np.isnan(stored.scores[:, :4]).all() and not np.isnan(stored.scores[:, 4:]).any()


@pytest.fixture(params=["tem", pytest.param("nion", marks=needs_nion)])
def stage_peer(request):
    """A stage-moving peer, its tile FOV, and where the hunt starts: one tile inside the
    upper x limit (the instrument's stage range on Nion, an envelope on the tem twin), so
    the search area's right column lies beyond it."""
    if request.param == "tem":
        fov, start = 20e-6, 4e-5
        envelope = {"fov": [1e-6, 2 * fov], "stage_x": [-1e-3, start + fov]}
        with served_twin("tem", seed=5) as served:
            yield served.uri, served.host, served.port, fov, start, envelope
    else:
        fov, start = 100e-9, 4e-7          # the simulator's stage reaches +-0.5 um
        envelope = {"fov": [1e-9, 2 * fov], "stage_x": [-5e-7, 5e-7], "stage_y": [-5e-7, 5e-7]}
        with running_bridge("--sample", "2") as bridge:
            yield bridge.uri, bridge.host, bridge.port, fov, start, envelope


def test_wide_fov_overview_on_a_stage_peer_stays_inside_the_limits(tmp_path, classifier,
                                                                   stage_peer, scifi_read):
    """A 3 x 3 search area whose right column lies beyond the limit: six candidates. The
    overview spans their 3 x 2 tiles, wider than the envelope's widest FOV (2 tiles), so it
    is 2 x 2 frames of 1.5 tiles, taken through the guard; each candidate is visited once
    and nothing beyond the limit is asked for."""
    uri, host, port, fov, start, envelope = stage_peer
    TemClient(host, port).move_stage(StagePosition(x=start, y=0.0))
    final, out = hunt(tmp_path, uri, classifier, frames=9, envelope=envelope,
                      imaging={"fov": fov, "pixels": 64, "dwell": 1e-6, "detector": None})
    with SessionReader(out) as reader:
        stored = reader.overview()
        stages = [(f.stage.x, f.stage.y) for f in reader.iter_frames()]
        refused = [i for i in reader.incidents() if i.get("kind") == "safety_refused"]
    assert final["reason"].startswith("hunt ended: search area of 6 tiles covered")
    expected = {(round(start / fov) + dx, dy) for dx in (-1, 0) for dy in (-1, 0, 1)}
    assert {(round(x / fov), round(y / fov)) for x, y in stages} == expected
    assert len(stages) == 6 and refused == []
    assert len(stored.metadata["overview_frames"]) == 4
    assert stored.pixel * stored.image.shape[0] == pytest.approx(3 * fov)   # 2 frames a side
    assert stored.scores.shape == (3, 2) and not np.isnan(stored.scores).any()
    maps = read_map(scifi_read, out)
    assert maps["Overview"].x.units == "m"
    assert maps["Overview"].x.values[0] == pytest.approx(start - 1.5 * fov)
