"""The agent over the wire: surveys through the dtm (Pyro5) and tem (netstring JSON-RPC) twin
servers in their own processes, and DTMicroscope's stage-less STEM mode, where the agent
windows the served overview into tiles and samples the spectrum image at recorded tiles."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from twin_process import REPO, served_twin

from agent.config import RunConfig
from instruments.session_reader import SessionReader
from models.classifier import Classifier
from models.config import FusionConfig
from twins.classes import SEM_CLASSES
from workflows.cmd_run import run_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return Classifier.create(FusionConfig.ablation("vit_only"), SEM_CLASSES)


def config_for(tmp_path: Path, instrument: str, **kw) -> RunConfig:
    return RunConfig(session_id=str(uuid.uuid4()), instrument=instrument,
                     out=str(tmp_path / "s.h5"), state_dir=str(tmp_path / "state"),
                     bank="none", imaging={"fov": 20e-6, "pixels": 128, "dwell": 2e-6}, **kw)


@pytest.mark.parametrize("protocol", ["dtm", "tem"])
def test_survey_over_a_twin_server(tmp_path, classifier, protocol):
    with served_twin(protocol) as server:
        config = config_for(tmp_path, server.uri, frames=3, confidence=0.0, max_set_size=10)
        final = run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
    assert final["status"] == "completed"
    with SessionReader(config.out) as reader:
        summary, records = reader.summary(), reader.records()
        frames = [f for f, _ in reader.frames()]
    assert summary["frames"] == 3 and summary["instrument"]["uri"] == server.uri
    assert [r.route for r in records] == ["confident"] * 3
    xs = [f.stage.x for f in frames]
    assert len(set(xs)) == 3                                # the stage really moved
    assert all(f.evaluation.get("label") for f in frames)   # twin truth came over the wire


def write_spectral_nsid(path: Path) -> np.ndarray:
    """An NSID file with an IMAGE overview (Channel_000) and a SPECTRAL_IMAGE (Channel_001)."""
    import h5py
    import pyNSID
    import sidpy

    rng = np.random.default_rng(0)
    side = 128
    spectra = rng.random((side, side, 16)).astype(np.float32)
    datasets = []
    for name, array, kind in (("HAADF", rng.random((side, side)).astype(np.float32), "IMAGE"),
                              ("EELS", spectra, "SPECTRAL_IMAGE")):
        data = sidpy.Dataset.from_array(array, title=name)
        data.data_type, data.quantity, data.units = kind, "intensity", "counts"
        for axis, label in enumerate("xy"):
            data.set_dimension(axis, sidpy.Dimension(np.arange(side) * 1e-9, label, units="m",
                                                     quantity="distance",
                                                     dimension_type="spatial"))
        if kind == "SPECTRAL_IMAGE":
            data.set_dimension(2, sidpy.Dimension(np.linspace(0, 100, 16), "energy",
                                                  units="eV", quantity="energy loss",
                                                  dimension_type="spectral"))
        datasets.append((name, data))
    with h5py.File(path, "w") as f:
        group = f.create_group("Measurement_000")
        for i, (name, data) in enumerate(datasets):
            pyNSID.hdf_io.write_nsid_dataset(data, group.create_group(f"Channel_{i:03}"),
                                             main_data_name=name)
    return spectra


STEM_ONLY_SERVER = ("from twins.dtm_server import DTMServer\n"
                    "server = DTMServer(None, host='127.0.0.1', port=0)\n"
                    "print('READY', server.address, flush=True)\n"
                    "server.serve_forever()\n")


def test_stage_less_stem_server_overview_is_windowed_into_tiles_with_point_spectra(
        tmp_path, classifier):
    data = tmp_path / "eels.h5"
    spectra = write_spectral_nsid(data)
    process = subprocess.Popen([sys.executable, "-c", STEM_ONLY_SERVER], cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("READY"), line
        port = int(line.split()[1].rsplit(":", 1)[1])
        config = config_for(tmp_path, f"dtm://127.0.0.1:{port}?data={data}", frames=4,
                            confidence=0.0, max_set_size=10)
        final = run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
    finally:
        process.kill()
        process.wait(10)
    assert final["status"] == "completed" and final["used"]["moves"] == 0
    with SessionReader(config.out) as reader:
        frames_records = list(reader.frames())
    assert len(frames_records) == 4                       # 4 of the 2x2 grid of 64 px tiles
    for frame, record in frames_records:
        assert frame.shape == (64, 64) and record.tile is not None
        point = record.point_data
        assert point["channel"] == "Channel_001"
        centre = (record.tile.row * 64 + 32, record.tile.col * 64 + 32)
        assert np.allclose(point["values"], spectra[centre], atol=1e-6)  # the tile's centre


def test_a_server_dropping_the_connection_fails_the_session_and_keeps_its_frames(
        tmp_path, classifier):
    with served_twin("dtm", faults="drop@12") as server:
        config = config_for(tmp_path, server.uri, frames=6, confidence=0.0, max_set_size=10)
        final = run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
    assert final["status"] == "failed"
    with SessionReader(config.out) as reader:
        summary = reader.summary()
    assert summary["status"] == "failed" and "InstrumentUnreachable" in summary["reason"]
    assert 0 < summary["frames"] < 6                  # what was recorded before is intact


def test_a_failed_session_resumes_when_the_instrument_is_back(tmp_path, classifier):
    with served_twin("dtm", faults="drop@12") as server:
        config = config_for(tmp_path, server.uri, frames=6, confidence=0.0, max_set_size=10)
        run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
    with SessionReader(config.out) as reader:
        before = reader.summary()
    assert before["status"] == "failed"
    with served_twin("dtm") as server:
        config.instrument = server.uri                   # the instrument is back
        final = run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
    with SessionReader(config.out) as reader:
        after = reader.summary()
    assert final["status"] == after["status"] == "completed"
    assert after["frames"] == 6 and after["frame_ids"][:before["frames"]] == before["frame_ids"]
    assert any(e["kind"] == "resumed" for e in final["events"])
