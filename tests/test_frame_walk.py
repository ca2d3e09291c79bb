"""One frame's walk through the agent is short, and one module acquires.

The walk of a frame: every product file whose code runs, on any thread, from the acquire
node's entry to the record node's return (the frame handed to the recorder), for a frame in
the middle of a pipelined twin survey routed confident: the acquire node and the acquirer
(with its worker taking the next tile ahead), quality, classification, the policy's ruling
and the routers that follow it, the state's reducers, the scratch store and the recorder.
Counted: the agent layer (`agent/`) except the checkpointer's storage
(`agent/checkpoint_store.py`, `agent/checkpoint_serde.py`), which LangGraph calls after every
step of every node, not for a frame. Not counted, as the boundaries the walk calls into: the
classifier's internals (`models/`), the microscope (`twins/`, and `instruments/devices/`
behind the acquirer), and the stored formats (`instruments/session_file/`,
`instruments/utils/`) behind the recorder, the scratch store and the record's JSON.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from plumbing_model import untrained

from agent.config import RunConfig
from agent.nodes.rescan import SWEEP_STEPS
from agent.session import Session, SessionParts
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("agent/", "instruments/", "models/", "workflows/", "twins/")
CHECKPOINTER = {"agent/checkpoint_store.py", "agent/checkpoint_serde.py"}
MICROSCOPE_CALLS = {"acquire", "move_stage", "set_imaging", "status", "capabilities", "grant",
                    "counters"}
GUARD = "instruments/devices/safety.py"


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


def _product(filename: str) -> str | None:
    """The file's path in the repository when it is product code, else None."""
    path = Path(filename)
    if not path.is_absolute() or not path.is_relative_to(ROOT):
        return None
    relative = path.relative_to(ROOT).as_posix()
    return relative if relative.startswith(PRODUCT) else None


class Walks:
    """A profiler (every thread) noting the product files of each frame's walk, and which
    product files call the guarded microscope, over a whole session."""

    def __init__(self) -> None:
        self.frames: list[set[str]] = []
        self.callers: dict[str, set[str]] = {}
        self._walking = False

    def __call__(self, frame, event: str, arg) -> None:
        if event != "call":
            if event == "return" and frame.f_code.co_name == "record" and \
                    _product(frame.f_code.co_filename) == "agent/nodes/record.py":
                self._walking = False
            return
        where = _product(frame.f_code.co_filename)
        if where is None:
            return
        name = frame.f_code.co_name
        if where == "agent/nodes/acquire.py" and name == "acquire":
            self.frames.append(set())
            self._walking = True
        if self._walking:
            self.frames[-1].add(where)
        if where == GUARD and name in MICROSCOPE_CALLS and frame.f_back is not None:
            caller = _product(frame.f_back.f_code.co_filename)
            if caller is not None and caller != GUARD:
                self.callers.setdefault(name, set()).add(caller)

    def run(self, action: Callable[[], object]) -> None:
        threading.setprofile(self)
        sys.setprofile(self)
        try:
            action()
        finally:
            sys.setprofile(None)
            threading.setprofile(None)


def twin_session(tmp_path: Path, classifier, frames: int, **config) -> Session:
    twin = TwinMicroscope(seed=0)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i}
                 for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:frames])]
    cfg = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                    state_dir=str(tmp_path / "state"), frames=frames,
                    imaging={"fov": 20e-6, "pixels": 64, "dwell": 2e-6}, **config)
    return Session(cfg, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                                     survey_positions=positions))


def test_a_frame_walks_through_at_most_twelve_agent_files_and_one_module_acquires(
        tmp_path, classifier):
    session = twin_session(tmp_path, classifier, frames=3, confidence=0.0, max_set_size=10)
    walks = Walks()
    walks.run(session.run)
    session.close()
    assert len(walks.frames) == 3
    walk = walks.frames[1]                    # a frame taken ahead, the next one prefetched
    agent = sorted(f for f in walk if f.startswith("agent/") and f not in CHECKPOINTER)
    below = sorted(f for f in walk if f.startswith("instruments/"))
    print(f"\nframe walk: {len(agent)} agent files {agent}\n"
          f"  + checkpointer {sorted(walk & CHECKPOINTER)}\n  + below: {below}")
    assert len(agent) <= 12
    assert {"agent/acquirer.py", "agent/nodes/acquire.py", "agent/policy.py",
            "agent/nodes/record.py"} <= set(agent)
    assert walks.callers["acquire"] == {"agent/acquirer.py"}
    assert set().union(*walks.callers.values()) == {"agent/acquirer.py"}


def test_a_focus_sweep_and_the_instrument_checks_go_through_the_acquirer(tmp_path,
                                                                          classifier):
    """Every frame blurred beyond the threshold: the first is rescanned with a focus sweep
    (several frames at trial defoci) while the next tile waits ahead."""
    session = twin_session(tmp_path, classifier, frames=2, confidence=1.01, max_rescans=1,
                           thresholds={"min_sharpness": 1e9, "min_snr": 0.0,
                                       "max_drift_px": 1e9},
                           budgets={"rescans": 2, "adjudications": 0})
    walks = Walks()
    walks.run(session.run)
    session.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        first = reader.records()[0]
    assert len(first.rescans[0].adaptation["focus_sweep"]) == len(SWEEP_STEPS)
    assert {"acquire", "set_imaging", "status", "capabilities"} <= walks.callers.keys()
    assert set().union(*walks.callers.values()) == {"agent/acquirer.py"}
