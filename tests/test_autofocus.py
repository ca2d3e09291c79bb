"""Autofocus as an instrument feature: on the twin a focus search at a new position brings a
frame 3 um out of focus back into focus within its frame budget, every trial frame through
the acquirer and the envelope's ledger, recorded in the session; a session SIGKILLed in the
middle of a search resumes to the same outcome as one never killed. (Nion's simulator, where
defocus changes nothing: tests/test_nion_session.py.)"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest
import torch
from plumbing_model import untrained

from agent.autofocus import AutofocusSettings
from agent.config import RunConfig
from agent.session import Session, SessionParts
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.decision_record import AUTOFOCUS
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope

torch.set_num_threads(1)
FOV, PIXELS, TILE = 1e-6, 128, 20
BUDGET = AutofocusSettings().frames


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


class KillAt(TwinMicroscope):
    """The twin, its process SIGKILLed when asked for acquisition `at` (0: never)."""

    def __init__(self, at: int = 0) -> None:
        super().__init__(seed=0)
        self.at = at

    def acquire(self):
        if self.at and self._acquisitions + 1 == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().acquire()


def session_for(tmp_path: Path, classifier, session_id: str, offset: float,
                twin: TwinMicroscope, frames: int = 1) -> Session:
    """A survey of `frames` tiles of one micrometre, the first imaged `offset` from focus,
    with a focus search at every new position."""
    centres = twin.specimen.survey_centres(20e-6)[TILE:TILE + frames]
    focus = twin.specimen.focus_height(centres[0].x, centres[0].y)
    config = RunConfig(session_id=session_id, out=str(tmp_path / "s.h5"), frames=frames,
                       state_dir=str(tmp_path / "state"), confidence=0.0, max_set_size=10,
                       imaging={"fov": FOV, "pixels": PIXELS, "dwell": 2e-6,
                                "defocus": focus + offset},
                       thresholds={"min_sharpness": 0.0, "min_snr": 0.0, "max_drift_px": 1e9},
                       autofocus=True, autofocus_every=1, pipeline=False)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i} for i, p in enumerate(centres)]
    return Session(config, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                                        survey_positions=positions))


def run(session: Session) -> dict:
    try:
        return session.run()
    finally:
        session.close()


@pytest.mark.parametrize("offset", [-3e-6, 3e-6])
def test_a_focus_search_on_the_twin_converges_from_3_um_within_its_budget(
        tmp_path, classifier, offset):
    twin = TwinMicroscope(seed=0)
    session = session_for(tmp_path, classifier, str(uuid.uuid4()), offset, twin)
    final = run(session)
    assert final["status"] == "completed"
    with SessionReader(tmp_path / "s.h5") as reader:
        (frame, record), = list(reader.frames())
    search, = record.rescans
    probes = search.adaptation["focus_search"]
    assert search.reason == AUTOFOCUS and search.effect == "improved"
    assert 1 < len(probes) <= BUDGET
    assert abs(frame.evaluation["focus_error_m"]) < 1e-6 < abs(offset) / 2
    assert record.route.value == "confident"           # a focus search is no escalation
    assert final["defocus"] == pytest.approx(frame.settings.defocus)
    # every trial frame went through the guard: the first frame, the trials, the refocused one
    assert final["envelope"]["frames"] == 1 + len(probes) + 1
    assert final["focus"]["frames"] == len(probes) and final["focus"]["searches"] == 1


def outcome(path: Path) -> dict:
    """What a session file says about its frames and focus searches (not the labels: the
    untrained classifier's top class follows the shot noise of a resumed twin's frames)."""
    with SessionReader(path) as reader:
        records, provenance = reader.records(), reader.provenance
    searches = [a for r in records for a in r.rescans if a.reason == AUTOFOCUS]
    return {"status": provenance["status"], "frames": [r.sequence for r in records],
            "searches": len(searches),
            "trials": [len(a.adaptation["focus_search"]) for a in searches],
            "in_focus": [abs(r.settings.defocus - a.new_settings.defocus) < 1e-12
                         for r, a in zip(records, searches, strict=True)],
            "recorded": provenance["outcome"]["counts"]["recorded"],
            "routes": provenance["outcome"]["counts"]["routes"]}


def test_sigkill_in_the_middle_of_a_focus_search_then_resume_is_exact(tmp_path, classifier):
    reference = tmp_path / "reference"
    reference.mkdir()
    final = run(session_for(reference, classifier, str(uuid.uuid4()), 3e-6, KillAt(),
                            frames=2))
    expected = outcome(reference / "s.h5")
    assert expected["searches"] == 2 and final["envelope"]["frames"] == \
        sum(expected["trials"]) + 4
    session_id = str(uuid.uuid4())
    pid = os.fork()
    if pid == 0:                      # the child dies at the search's fourth trial frame
        try:
            run(session_for(tmp_path, classifier, session_id, 3e-6, KillAt(at=5), frames=2))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    resumed = run(session_for(tmp_path, classifier, session_id, 3e-6, KillAt(), frames=2))
    assert outcome(tmp_path / "s.h5") == expected
    # the killed search's trials are not in the ledger: it ran again in full, counted once
    assert resumed["envelope"]["frames"] == sum(outcome(tmp_path / "s.h5")["trials"]) + 4
    # and the resumed process moved the stage back to the tile it was focusing on
    assert resumed["envelope"]["moves"] == final["envelope"]["moves"] + 1
