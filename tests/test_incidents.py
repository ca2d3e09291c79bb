"""Every instrument fault reaches the session file's incident log with its kind, including the
ones the agent recovers from (a bad frame retried, a stage that stayed put)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from plumbing_model import untrained
from rich.console import Console
from twin_process import served_twin

from agent.config import RunConfig
from instruments.devices.errors import BadFrame
from instruments.devices.frame import ImagingSettings, StagePosition
from instruments.devices.frame_checks import check_image
from instruments.devices.safety import GuardedMicroscope
from instruments.session_file.reader import SessionReader
from instruments.session_file.writer import SessionWriter
from twins.faults import FaultSpec
from twins.microscope import TwinMicroscope


def test_the_guard_reports_each_fault_and_holds_them_until_a_receiver_is_set() -> None:
    twin = TwinMicroscope(seed=1, faults=FaultSpec.parse("nan@1,inf@2,shape@3,stuck"))
    guard = GuardedMicroscope(twin)
    guard.set_imaging(ImagingSettings(pixels=32, fov=10e-6, dwell=1e-7))
    for _ in range(3):
        with pytest.raises(BadFrame):
            guard.acquire()
    guard.move_stage(StagePosition(x=5e-6, y=0.0))
    seen: list[tuple[str, str, dict]] = []
    guard.on_incident = lambda kind, message, **extra: seen.append((kind, message, extra))
    assert [k for k, _, _ in seen] == ["nan_frame", "inf_frame", "wrong_shape",
                                       "stage_not_reached"]
    assert seen[-1][2]["reached"]["x"] == 0.0
    guard.acquire()                                             # a good frame: nothing new
    assert len(seen) == 4


@pytest.mark.parametrize("image,fault", [
    (np.full((4, 4), np.nan), "nan_frame"), (np.full((4, 4), np.inf), "inf_frame"),
    (np.zeros((4, 5)), "wrong_shape"), (np.ones((4, 4)), "empty_frame"),
])
def test_bad_frames_name_their_fault(image, fault) -> None:
    with pytest.raises(BadFrame) as caught:
        check_image(image, expected_pixels=4)
    assert caught.value.fault == fault


def test_a_session_over_a_faulty_server_logs_the_faults_it_recovered_from(tmp_path) -> None:
    from twins.classes import SEM_CLASSES
    from workflows.session_assembly import run_session

    classifier = untrained(SEM_CLASSES)
    with served_twin("tem", faults="nan@2,shape@4") as server:
        config = RunConfig(session_id=str(uuid.uuid4()), instrument=server.uri,
                           out=str(tmp_path / "s.h5"), state_dir=str(tmp_path / "state"),
                           bank="none", frames=3, confidence=0.0, max_set_size=10,
                           imaging={"fov": 20e-6, "pixels": 32, "dwell": 1e-7})
        final = run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
    assert final["status"] == "completed"
    with SessionReader(config.out) as reader:
        kinds = [i["kind"] for i in reader.incidents()]
        summary = reader.summary()
        frames = len(reader)
    assert frames == 3                                  # both bad frames were retried
    assert kinds.count("nan_frame") == 1 and kinds.count("wrong_shape") == 1
    assert summary["incidents"]["nan_frame"] == 1


def test_a_failed_start_is_an_incident(tmp_path: Path) -> None:
    from agent.session import record_failed_start

    config = RunConfig(session_id="s", out=str(tmp_path / "s.h5"),
                       state_dir=str(tmp_path / "state"))
    record_failed_start(config, "cannot open instrument tem://x: connection refused")
    with SessionReader(config.out) as reader:
        assert [i["kind"] for i in reader.incidents()] == ["start_failed"]
    with SessionWriter(tmp_path / "t.h5", {}) as writer:
        writer.record_incident("timeout", "no reply within 1 s", call="acquire")
    with SessionReader(tmp_path / "t.h5") as reader:
        assert reader.incidents()[0]["call"] == "acquire"
