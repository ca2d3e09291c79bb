"""Crash safety: a session killed at any point resumes from its SQLite checkpoint with no
frame lost and none recorded twice, budgets and counts carried over."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from cli_in_process import explain, micagent_in_process
from crash_points import Crash, crash_at
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from plumbing_model import untrained

from agent import graph as graph_module
from agent.checkpoint_store import BoundedSqliteSaver, steps_written
from agent.config import RunConfig, checkpoint_path, registry_path
from agent.session import Session, SessionParts
from instruments.devices.frame import ImagingSettings
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.decision_record import DecisionRecord, QualityRecord
from instruments.session_file.reader import SessionReader, read_records
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope

pytestmark = pytest.mark.slow

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


def session_for(tmp_path: Path, classifier, session_id: str, rescans: bool = True,
                frames: int = 6) -> Session:
    """A survey of `frames` tiles where every frame is rescanned once (poor SNR), then
    adjudicated (never confident) while the budgets last."""
    twin = TwinMicroscope(seed=0)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i}
                 for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:frames])]
    config = RunConfig(session_id=session_id, out=str(tmp_path / "s.h5"), frames=frames,
                       state_dir=str(tmp_path / "state"), confidence=1.01,
                       imaging={"fov": 20e-6, "pixels": 128, "dwell": 2e-6},
                       thresholds={"min_sharpness": 0.0, "min_snr": 1e9 if rescans else 0.0,
                                   "max_drift_px": 1e9},
                       budgets={"rescans": 4 if rescans else 0, "adjudications": 4},
                       max_rescans=1)
    return Session(config, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                                        survey_positions=positions))


def outcome(path: Path) -> dict:
    """What a session file says about its frames, for comparing a resumed run with an
    uninterrupted one."""
    with SessionReader(path) as reader:
        summary, records = reader.summary(), reader.records()
        used, counts = (reader.provenance["outcome"][k] for k in ("used", "counts"))
    return {"status": summary["status"], "frames": summary["frames"],
            "unique": len(set(summary["frame_ids"])),
            "sequences": [r.sequence for r in records],
            "positions": [(r.position.x, r.position.y) for r in records],
            "rescans": [len(r.rescans) for r in records],
            "adjudicated": [r.adjudication is not None for r in records],
            "used": {k: used[k] for k in ("rescans", "adjudications")},
            "recorded": counts["recorded"], "routes": sum(counts["routes"].values())}


@pytest.fixture(scope="module")
def uninterrupted(classifier, tmp_path_factory) -> dict:
    """The reference: the same session run to its end without a kill."""
    tmp = tmp_path_factory.mktemp("reference")
    session = session_for(tmp, classifier, str(uuid.uuid4()))
    session.run()
    session.close()
    return outcome(tmp / "s.h5")


@pytest.mark.parametrize("node,nth", [
    ("acquire", 3), ("classify", 2), ("rescan", 2), ("adjudicate", 1), ("record", 4),
    ("plan", 7), ("assess_quality", 5)])
def test_a_session_stopped_after_any_step_resumes_without_losing_or_repeating(
        tmp_path, classifier, uninterrupted, node, nth):
    session_id = str(uuid.uuid4())
    first = session_for(tmp_path, classifier, session_id)
    with pytest.raises(Crash):
        first.run(on_step=crash_at(node, nth))
    in_flight = (first.saved_state()[0].get("current") or DecisionRecord()).frame_id
    first.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        assert reader.provenance["status"] == "failed"        # closed saying why
    second = session_for(tmp_path, classifier, session_id)
    second.run()
    second.close()
    assert outcome(tmp_path / "s.h5") == uninterrupted
    if in_flight is not None:      # stored once: as the frame, or as an attempt a rescan replaced
        records = read_records(tmp_path / "s.h5")
        stored = [r.frame_id for r in records]
        replaced = [a.frame_id for r in records for a in r.rescans]
        assert stored.count(in_flight) + replaced.count(in_flight) == 1


class KillingSaver(BoundedSqliteSaver):
    """The session's checkpointer, SIGKILLing its own process at a chosen checkpoint: before
    checkpoint `step` is written but after the task that made it stored its writes
    ("writes_stored": LangGraph resumes by applying them, the task does not run again), or
    before that task's writes are stored ("mid_step": the task runs again). It prunes to the
    latest checkpoint after every second one, so kills fall on both sides of a prune."""

    def __init__(self, conn, serde, step: int, point: str) -> None:
        super().__init__(conn, serde=serde, prune_every=2)
        self.step, self.point, self.puts = step, point, 0
        self.stored = threading.Event()          # the step's task writes are committed

    def put_writes(self, config, writes, task_id, task_path=""):
        if self.point == "mid_step" and self.puts + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
        done = super().put_writes(config, writes, task_id, task_path)
        self.stored.set()
        return done

    def put(self, config, checkpoint, metadata, new_versions):
        self.puts += 1
        if self.point == "writes_stored" and self.puts == self.step:
            self.stored.wait(5)                  # put_writes runs on LangGraph's executor
            os.kill(os.getpid(), signal.SIGKILL)
        self.stored.clear()
        return super().put(config, checkpoint, metadata, new_versions)


def _killed_child(tmp_path: Path, classifier, session_id: str, step: int, point: str) -> int:
    """Run the session in a forked process that dies at `step`; its exit signal."""
    pid = os.fork()
    if pid == 0:                                     # the child: run until killed
        try:
            from agent import session as session_module

            def killing(path):
                saver = graph_module.open_checkpointer(path)
                return KillingSaver(saver.conn, saver.serde, step, point)

            session_module.open_checkpointer = killing
            session_for(tmp_path, classifier, session_id, frames=KILL_FRAMES).run()
        finally:
            os._exit(0)                               # not killed: the session ended first
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


KILL_FRAMES = 2
# connect, check_instrument, 2 x (plan, acquire, assess, classify, rescan, acquire, assess,
# classify, adjudicate, record), plan, finish; plus the checkpoints of the input and of START
KILL_STEPS = 2 + 2 + KILL_FRAMES * 10 + 2


def test_the_kill_campaign_session_has_the_steps_the_campaign_counts(tmp_path, classifier):
    saver_steps = []
    session = session_for(tmp_path, classifier, str(uuid.uuid4()), frames=KILL_FRAMES)
    session.run(on_step=lambda node, _: saver_steps.append(node))
    session.close()
    assert steps_written(checkpoint_path(tmp_path / "s.h5")) == KILL_STEPS == len(saver_steps) + 2


@pytest.fixture(scope="module")
def uninterrupted_two(classifier, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("reference2")
    session = session_for(tmp, classifier, str(uuid.uuid4()), frames=KILL_FRAMES)
    session.run()
    session.close()
    return outcome(tmp / "s.h5")


@pytest.mark.parametrize("step,point", [
    *((step, "writes_stored") for step in range(1, KILL_STEPS + 1)),
    # the first checkpoint (the input) follows no task
    *((step, "mid_step") for step in range(2, KILL_STEPS + 1))])
def test_sigkill_at_every_checkpoint_step_then_resume_is_exact(
        tmp_path, classifier, uninterrupted_two, step, point):
    """A real SIGKILL (forked process) at each checkpoint step, at both sides of the step's
    stored writes; the resumed session equals one that was never killed."""
    session_id = str(uuid.uuid4())
    assert _killed_child(tmp_path, classifier, session_id, step, point) == signal.SIGKILL
    resumed = session_for(tmp_path, classifier, session_id, frames=KILL_FRAMES)
    final = resumed.run()
    resumed.close()
    assert outcome(tmp_path / "s.h5") == uninterrupted_two, f"killed at step {step} ({point})"
    assert final["status"] == "completed" and final["sequence"] == KILL_FRAMES


def start(args: list[str], env: dict) -> subprocess.Popen:
    command = [sys.executable, "-c", "from workflows.cli.app import app; app()", "run", *args]
    return subprocess.Popen(command, cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def kill_after_steps(proc: subprocess.Popen, ckpt: Path, steps: int, limit: float) -> bool:
    """SIGKILL `proc` once the checkpoint holds `steps` steps; False if it ended first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if steps_written(ckpt) >= steps:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return True
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the session did not progress in time")


KILL_SEED = int(os.environ.get("MICAGENT_KILL_SEED", "20261130"))


def test_sigkill_at_a_random_point_then_resume_gives_exact_frame_accounting(
        tmp_path, classifier):
    ckpt_dir = tmp_path / "ckpt"
    classifier.save(ckpt_dir)
    out, state = tmp_path / "killed.h5", tmp_path / "state"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    frames = 8
    proc = start(["--model", str(ckpt_dir), "--bank", "none", "--frames", str(frames),
                  "--out", str(out), "--state-dir", str(state), "--pixels", "128",
                  "--confidence", "0", "--quiet"], env)
    rng = random.Random(KILL_SEED)
    ckpt = checkpoint_path(out)
    first_kill = rng.randint(4, 2 + 2 + frames * 5 + 2)
    assert kill_after_steps(proc, ckpt, first_kill, 240)
    session_id = next(p.stem for p in (state / "sessions").glob("*.json"))
    assert registry_path(state, session_id).exists()
    resumed = micagent_in_process("run", "--resume", session_id, "--state-dir", str(state),
                                  "--quiet")
    assert resumed.exit_code == 0, (f"seed {KILL_SEED}, killed at checkpoint step "
                                    f"{first_kill}:\n{explain(resumed)}")
    with SessionReader(out) as reader:
        summary, records = reader.summary(), reader.records()
    assert summary["status"] == "completed" and summary["session_id"] == session_id
    assert summary["frames"] == frames and len(set(summary["frame_ids"])) == frames
    assert sorted(r.sequence for r in records) == list(range(frames))
    outcome = reader.provenance["outcome"]
    assert outcome["counts"]["recorded"] == frames
    assert len(reader.provenance["resumed"]) == 1


def test_frames_recorded_but_not_yet_stored_when_killed_are_stored_once_on_resume(tmp_path):
    from agent.recorder import Recorder
    from agent.scratch import FrameScratch
    from instruments.session_file.writer import SessionWriter

    twin = TwinMicroscope(seed=0)
    scratch = FrameScratch(tmp_path / "frames")
    frames = []
    for sequence in range(3):
        frame = twin.acquire()
        frame.sequence = sequence
        scratch.put(frame)
        scratch.put_record(frame.frame_id, DecisionRecord(
            frame_id=frame.frame_id, label="Tips", sequence=sequence).to_json())
        frames.append(frame)
    writer = SessionWriter(tmp_path / "s.h5", {"session_id": "s"})
    writer.write_frame(frames[0], DecisionRecord(frame_id=frames[0].frame_id))  # before the kill
    restarted = Recorder(writer, FrameScratch(tmp_path / "frames"))     # a fresh process
    assert restarted.recover() == [frames[1].frame_id, frames[2].frame_id]
    assert restarted.recover() == []
    restarted.close()
    writer.close("completed")
    with SessionReader(tmp_path / "s.h5") as reader:
        assert reader.frame_ids == [f.frame_id for f in frames]
    assert not list((tmp_path / "frames").iterdir())                   # scratch emptied


def test_record_step_rerun_after_its_frame_was_stored_counts_it_once(tmp_path):
    """Killed after the session file got the frame but before the record step's checkpoint:
    LangGraph re-runs the step, which must neither fail nor store the frame again."""
    from types import SimpleNamespace

    from agent.nodes import record as record_node
    from agent.policy import RoutePolicy
    from agent.scratch import FrameScratch
    from instruments.session_file.writer import SessionWriter

    frame = TwinMicroscope(seed=0).acquire()
    writer = SessionWriter(tmp_path / "s.h5", {"session_id": "s"})
    writer.write_frame(frame, DecisionRecord(frame_id=frame.frame_id, label="Tips"))
    ctx = SimpleNamespace(scratch=FrameScratch(tmp_path / "frames"), writer=writer,
                          recorder=None, acquirer=SimpleNamespace(tiles=None), stream=None,
                          autofocus=None, policy=RoutePolicy())
    current = DecisionRecord(frame_id=frame.frame_id, sequence=0, label="Tips",
                             route="confident", quality=QualityRecord(ok=True),
                             settings=frame.settings)
    state = {"current": current, "objective": {"kind": "survey", "classes": []},
             "counts": {}, "used": {}, "budgets": {}, "sequence": 0}
    update = record_node.make(ctx)(state)
    assert update["counts"]["recorded"] == 1 and update["sequence"] == 1
    writer.close("completed")
    with SessionReader(tmp_path / "s.h5") as reader:
        assert reader.frame_ids == [frame.frame_id]


def test_a_kill_between_forgetting_a_stored_frame_and_its_record_leaves_nothing_to_store(
        tmp_path):
    """The recorder forgets a stored frame's record before its pixels: a kill in between
    leaves pixels without a record, which recovery ignores."""
    from agent.recorder import Recorder
    from agent.scratch import FrameScratch
    from instruments.session_file.writer import SessionWriter

    frame = TwinMicroscope(seed=0).acquire()
    scratch = FrameScratch(tmp_path / "frames")
    scratch.put(frame)
    scratch.put_record(frame.frame_id, DecisionRecord(frame_id=frame.frame_id).to_json())
    scratch._record_path(frame.frame_id).unlink()        # where a kill inside drop() stops
    writer = SessionWriter(tmp_path / "s.h5", {"session_id": "s"})
    assert Recorder(writer, FrameScratch(tmp_path / "frames")).recover() == []
    writer.close("completed")


def test_the_checkpoint_reads_the_typed_record_back_without_blocking_anything(caplog):
    """The checkpointer revives the decision record and its enums (and nothing else that is
    not a plain value) without a warning."""
    from agent.graph import CHECKPOINT_TYPES
    from instruments.session_file.decision_record import HumanRecord, Route

    serde = JsonPlusSerializer(allowed_msgpack_modules=CHECKPOINT_TYPES)
    record = DecisionRecord(frame_id="f", route=Route.HUMAN, settings=ImagingSettings(),
                            human=HumanRecord(decision="relabel", label="Tips"))
    with caplog.at_level(logging.WARNING):
        back = serde.loads_typed(serde.dumps_typed({"current": record}))
    assert back["current"] == record and back["current"].route is Route.HUMAN
    assert not caplog.records
