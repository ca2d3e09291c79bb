"""The checkpoint database stays small however long a session runs: it keeps the latest
checkpoint only (pruned in one transaction), the survey plan lives in a file beside the session
rather than in every checkpoint, and a resume on a plan that is not the checkpointed one stops
with a clear error instead of imaging other positions."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from cli_in_process import explain, micagent_in_process
from crash_points import Crash, crash_at
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from plumbing_model import untrained

from agent.checkpoint_store import PRUNE_EVERY, BoundedSqliteSaver, steps_written
from agent.config import RunConfig, checkpoint_path, work_dir
from agent.driver import thread_config
from agent.graph import open_checkpointer
from agent.session import Session, SessionParts
from agent.survey_plan import PlanError
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope

pytestmark = pytest.mark.slow

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


def survey(tmp_path: Path, classifier, frames: int, session_id: str | None = None) -> Session:
    twin = TwinMicroscope(seed=0)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i}
                 for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:frames])]
    config = RunConfig(session_id=session_id or str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                       frames=frames, state_dir=str(tmp_path / "state"), confidence=0.0,
                       bank="none", imaging={"fov": 20e-6, "pixels": 64, "dwell": 1e-6})
    return Session(config, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                                        survey_positions=positions))


def rows(path: Path) -> tuple[int, int, int]:
    """Checkpoints, stored writes and the size of the latest checkpoint (bytes; 0: none)."""
    with sqlite3.connect(path) as conn:
        checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        writes = conn.execute("SELECT count(*) FROM writes").fetchone()[0]
        latest = conn.execute("SELECT length(checkpoint) FROM checkpoints "
                              "ORDER BY checkpoint_id DESC LIMIT 1").fetchone()
    return checkpoints, writes, latest[0] if latest else 0


def test_a_long_session_keeps_only_recent_checkpoints_and_no_plan_in_them(tmp_path, classifier):
    steps: list[str] = []
    session = survey(tmp_path, classifier, frames=16)
    final = session.run(on_step=lambda node, _: steps.append(node))
    session.close()
    path = checkpoint_path(tmp_path / "s.h5")
    checkpoints, _, latest = rows(path)
    assert final["status"] == "completed" and len(steps) + 2 > PRUNE_EVERY
    assert checkpoints <= PRUNE_EVERY                      # pruned at least once
    assert steps_written(path) == len(steps) + 2           # progress survives pruning
    assert final["plan"]["size"] == 16 and set(final["plan"]) == {"size", "sha256"}
    plan = json.loads((work_dir(tmp_path / "s.h5") / "plan.json").read_text())
    stored = open_checkpointer(path).get_tuple(thread_config(session.config.session_id))
    values = stored.checkpoint["channel_values"]
    assert len(plan) == 16 and values["plan"] == final["plan"]   # the positions are not in it
    assert "positions" not in values and latest < 10_000
    again = survey(tmp_path, classifier, frames=16, session_id=session.config.session_id)
    assert again.run()["status"] == "completed"            # nothing left to do, state intact
    again.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        assert reader.summary()["frames"] == 16


def test_keep_latest_leaves_the_latest_checkpoint_and_its_pending_writes(tmp_path):
    saver = BoundedSqliteSaver(sqlite3.connect(tmp_path / "c.sqlite", check_same_thread=False),
                               serde=JsonPlusSerializer(), prune_every=1000)
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    for step in range(5):
        checkpoint = {"v": 1, "id": f"1ef4f797-8335-6428-8001-00000000000{step}",
                      "ts": "2026-11-30T00:00:00+00:00", "channel_values": {"n": step},
                      "channel_versions": {}, "versions_seen": {}}
        config = saver.put(config, checkpoint, {"step": step - 1}, {})
        saver.put_writes(config, [("n", step + 1)], task_id=f"task-{step}")
    assert rows(tmp_path / "c.sqlite")[:2] == (5, 5)
    saver.prune(["t"])
    assert rows(tmp_path / "c.sqlite")[:2] == (1, 1)
    latest = saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
    assert latest.checkpoint["channel_values"] == {"n": 4}
    assert [w[1:] for w in latest.pending_writes] == [("n", 5)]
    assert steps_written(tmp_path / "c.sqlite") == 5
    saver.prune(["t"], strategy="delete")
    assert rows(tmp_path / "c.sqlite") == (0, 0, 0)
    with pytest.raises(ValueError, match="unknown prune strategy"):
        saver.prune(["t"], strategy="keep_some")
    with pytest.raises(ValueError, match="at least 1"):
        BoundedSqliteSaver(saver.conn, prune_every=0)


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_resume_on_another_plan_stops_with_a_clear_error(tmp_path, classifier, damage):
    first = survey(tmp_path, classifier, frames=6)
    with pytest.raises(Crash):
        first.run(on_step=crash_at("record", 3))
    first.close()
    plan_file = work_dir(tmp_path / "s.h5") / "plan.json"
    if damage == "changed":
        positions = json.loads(plan_file.read_text())
        plan_file.write_text(json.dumps(positions[::-1]))
    else:
        plan_file.unlink()
    second = survey(tmp_path, classifier, frames=6, session_id=first.config.session_id)
    with pytest.raises(PlanError, match="not the plan this session checkpointed"
                       if damage == "changed" else "cannot be read"):
        second.run()
    second.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        assert reader.summary()["frames"] == 3                 # nothing lost, nothing added
        assert "PlanError" in reader.provenance["reason"]


def test_the_cli_says_in_one_line_why_a_session_cannot_go_on(tmp_path, plumbing_checkpoint):
    """`micagent run` SIGKILLed mid-survey, its plan file replaced, then `--resume` (in this
    process): exit 1 with one error line naming the plan, and the frames recorded before the
    kill kept."""
    state, out = tmp_path / "state", tmp_path / "s.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "workflows", "run"]
    proc = subprocess.Popen([*base, "--frames", "12", "--pixels", "64", "--bank", "none",
                             "--model", str(plumbing_checkpoint), "--out", str(out),
                             "--state-dir", str(state), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while steps_written(checkpoint_path(out)) < 20:          # a few frames in
        assert proc.poll() is None and time.monotonic() < deadline, "the session did not run"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate(timeout=30)[0]
    session_id = next(line.split()[1] for line in output.splitlines()
                      if line.startswith("session "))
    (work_dir(out) / "plan.json").write_text("[]")
    resumed = micagent_in_process("run", "--resume", session_id, "--state-dir", str(state),
                                  "--quiet")
    errors = resumed.stderr.strip().splitlines()
    assert resumed.exit_code == 1 and len(errors) == 1, explain(resumed)
    assert isinstance(resumed.exception, SystemExit)          # no traceback
    assert errors[0].startswith(f"error: session {session_id} cannot go on: survey plan")
    with SessionReader(out) as reader:
        assert reader.summary()["frames"] >= 1 and reader.provenance["status"] == "failed"


def test_a_record_checkpointed_by_version_2_resumes_as_a_current_record(tmp_path: Path):
    """A checkpoint written before the record was closed holds the record as version 2 with
    the working-only `started` and an undeclared rescan `effect`: the deserialiser rebuilds
    it as a typed record of the current version (not a partly built one)."""
    import ormsgpack
    from langgraph.checkpoint.serde.jsonplus import EXT_PYDANTIC_V2

    from agent.graph import LEGACY_RECORD_MODULE
    from instruments.session_file.decision_record import (
        RECORD_VERSION,
        DecisionRecord,
        RescanRecord,
    )

    serde = open_checkpointer(tmp_path / "c.sqlite").serde
    old = {"version": 2, "frame_id": "f-1", "sequence": 4, "started": 1795464000.0,
           "timings": {"acquire_s": 0.2, "classify_s": None, "total_s": None},
           "rescans": [{"reason": "noise", "effect": "none", "settings": None}]}
    for module in ("instruments.session_file.decision_record", LEGACY_RECORD_MODULE):
        blob = ormsgpack.packb({"current": ormsgpack.Ext(EXT_PYDANTIC_V2, ormsgpack.packb(
            (module, "DecisionRecord", old, "model_validate_json")))})
        record = serde.loads_typed(("msgpack", blob))["current"]
        assert isinstance(record, DecisionRecord) and record.version == RECORD_VERSION
        assert isinstance(record.rescans[0], RescanRecord) and record.rescans[0].effect == "none"
        assert record.sequence == 4 and "started" not in record.model_dump()
