"""Crash safety: a session killed at any point resumes from its SQLite checkpoint with no
frame lost and none recorded twice, budgets and counts carried over."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from agent.config import RunConfig, checkpoint_path, registry_path
from agent.session import Session, SessionParts
from instruments.decision_record import DecisionRecord
from instruments.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_reader import SessionReader
from models.classifier import Classifier
from models.config import FusionConfig
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


class Crash(Exception):
    """Stands for the process dying right after a graph step."""


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return Classifier.create(FusionConfig.ablation("vit_only"), SEM_CLASSES)


def session_for(tmp_path: Path, classifier, session_id: str, rescans: bool = True) -> Session:
    twin = TwinMicroscope(seed=0)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i}
                 for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:6])]
    config = RunConfig(session_id=session_id, out=str(tmp_path / "s.h5"), frames=6,
                       state_dir=str(tmp_path / "state"), confidence=1.01,
                       imaging={"fov": 20e-6, "pixels": 128, "dwell": 2e-6},
                       thresholds={"min_sharpness": 0.0, "min_snr": 1e9 if rescans else 0.0,
                                   "max_drift_px": 1e9},
                       budgets={"rescans": 4 if rescans else 0, "adjudications": 4},
                       max_rescans=1)
    return Session(config, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                                        survey_positions=positions))


def crash_at(node: str, nth: int):
    seen = {"n": 0}

    def on_step(name: str, _update: dict) -> None:
        if name == node:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Crash(f"killed after {node} #{nth}")
    return on_step


@pytest.mark.parametrize("node,nth,rescans", [
    ("acquire", 3, True), ("classify", 2, True), ("rescan", 2, True), ("record", 4, True),
    ("acquire", 2, False), ("classify", 3, False), ("route", 5, False)])
def test_a_session_stopped_after_any_step_resumes_without_losing_or_repeating(
        tmp_path, classifier, node, nth, rescans):
    session_id = str(uuid.uuid4())
    first = session_for(tmp_path, classifier, session_id, rescans)
    with pytest.raises(Crash):
        first.run(on_step=crash_at(node, nth))
    in_flight = (first.saved_state()[0].get("current") or {}).get("frame_id")
    used_before = first.saved_state()[0]["used"]
    first.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        assert reader.provenance["status"] == "failed"        # closed saying why
    second = session_for(tmp_path, classifier, session_id, rescans)
    final = second.run()
    second.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        summary, records = reader.summary(), reader.records()
    ids = summary["frame_ids"]
    assert summary["frames"] == 6 and len(set(ids)) == 6 and summary["status"] == "completed"
    assert [r.sequence for r in records] == list(range(6))
    if in_flight is not None:
        # recorded exactly once, unless a rescan legitimately superseded it
        assert ids.count(in_flight) == (0 if rescans and in_flight not in ids else 1)
        assert rescans or in_flight in ids
    assert final["counts"]["recorded"] == 6
    assert final["used"]["rescans"] >= used_before["rescans"]
    assert final["used"]["rescans"] == (4 if rescans else 0)  # carried over, not reset
    assert len(summary["frame_ids"]) == sum(final["counts"]["routes"].values())


def checkpoint_steps(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("select count(*) from checkpoints").fetchone()[0]
    except sqlite3.Error:
        return 0


def start(args: list[str], env: dict) -> subprocess.Popen:
    command = [sys.executable, "-c", "from workflows.cli import app; app()", "run", *args]
    return subprocess.Popen(command, cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def kill_after_steps(proc: subprocess.Popen, ckpt: Path, steps: int, limit: float) -> bool:
    """SIGKILL `proc` once the checkpoint holds `steps` steps; False if it ended first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if checkpoint_steps(ckpt) >= steps:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return True
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the session did not progress in time")


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
    rng = random.Random(int(time.time()))
    ckpt = checkpoint_path(out)
    first_kill = rng.randint(4, 30)
    assert kill_after_steps(proc, ckpt, first_kill, 240)
    session_id = next(p.stem for p in (state / "sessions").glob("*.json"))
    assert registry_path(state, session_id).exists()
    proc = start(["--resume", session_id, "--state-dir", str(state), "--quiet"], env)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"killed at checkpoint step {first_kill}:\n{output}"
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
    from instruments.session_file import SessionWriter

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
    from agent.scratch import FrameScratch
    from instruments.session_file import SessionWriter

    frame = TwinMicroscope(seed=0).acquire()
    writer = SessionWriter(tmp_path / "s.h5", {"session_id": "s"})
    writer.write_frame(frame, DecisionRecord(frame_id=frame.frame_id, label="Tips"))
    runtime = SimpleNamespace(scratch=FrameScratch(tmp_path / "frames"), writer=writer,
                              recorder=None, tiles=None, predictions={}, reference=None,
                              on_update=None)
    current = {"frame_id": frame.frame_id, "sequence": 0, "label": "Tips", "route": "confident",
               "quality": {"ok": True}, "timings": {}, "settings": {"defocus": 0.0}}
    state = {"current": current, "objective": {"kind": "survey", "classes": []},
             "counts": {}, "sequence": 0}
    update = record_node.make(runtime)(state)
    assert update["counts"]["recorded"] == 1 and update["sequence"] == 1
    writer.close("completed")
    with SessionReader(tmp_path / "s.h5") as reader:
        assert reader.frame_ids == [frame.frame_id]
