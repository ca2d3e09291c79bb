"""The agent over the wire: surveys through the dtm (Pyro5) and tem (netstring JSON-RPC) twin
servers in their own processes. (DTMicroscope's stage-less STEM mode, where the agent windows
the served overview into tiles, is tested on both STEM servers in test_dtm_servers.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from plumbing_model import untrained
from rich.console import Console
from twin_process import served_twin

from agent.config import RunConfig
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from workflows.session_assembly import run_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


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
