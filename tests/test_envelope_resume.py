"""The envelope's budgets survive a kill: `micagent run --limit max_moves=N`, SIGKILLed after
some frames and resumed with `--resume`, makes no more stage moves in all than N."""

from __future__ import annotations

import os

import pytest
import torch
from cli_in_process import explain, micagent_in_process
from plumbing_model import untrained
from test_agent_resume import kill_after_steps, start

from agent.checkpoint_store import BoundedSqliteSaver
from agent.config import checkpoint_path
from agent.graph import open_checkpointer
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES

pytestmark = pytest.mark.slow

MAX_MOVES = 3
FRAMES = 6
# input, START, connect, check_instrument, then plan, acquire, assess, classify, record per
# frame (confidence 0: every frame is recorded at once): killed once two frames are recorded.
# No pipeline: a frame acquired ahead by the killed process would have spent a move of its own
TWO_FRAMES_STEPS = 2 + 2 + 2 * 5


def saved_values(path) -> dict:
    saver: BoundedSqliteSaver = open_checkpointer(path)
    try:
        checkpoint = saver.get_tuple({"configurable": {"thread_id": saver_thread(saver)}})
        return checkpoint.checkpoint["channel_values"]
    finally:
        saver.conn.close()


def saver_thread(saver: BoundedSqliteSaver) -> str:
    return saver.conn.execute("SELECT thread_id FROM checkpoints LIMIT 1").fetchone()[0]


def test_max_moves_holds_across_a_sigkill_and_resume(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "model"
    untrained(SEM_CLASSES).save(model)
    out, state = tmp_path / "s.h5", tmp_path / "state"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = start(["--model", str(model), "--bank", "none", "--frames", str(FRAMES),
                  "--out", str(out), "--state-dir", str(state), "--pixels", "128",
                  "--confidence", "0", "--limit", f"max_moves={MAX_MOVES}", "--no-pipeline",
                  "--quiet"], env)
    assert kill_after_steps(proc, checkpoint_path(out), TWO_FRAMES_STEPS, 240)
    before = saved_values(checkpoint_path(out))
    assert 2 <= before["envelope"]["moves"] <= MAX_MOVES      # the guard's count, checkpointed
    session_id = next(p.stem for p in (state / "sessions").glob("*.json"))
    resumed = micagent_in_process("run", "--resume", session_id, "--state-dir", str(state),
                                  "--quiet")
    assert resumed.exit_code == 0, explain(resumed)
    with SessionReader(out) as reader:
        records = reader.records()
        outcome = reader.provenance["outcome"]
        assert len(reader.provenance["resumed"]) == 1
    places = {(r.position.x, r.position.y) for r in records}
    assert len(records) == len(places) == MAX_MOVES            # one move per place, no more
    assert outcome["counts"]["refused"] == FRAMES - MAX_MOVES  # the rest: budget used up
    after = saved_values(checkpoint_path(out))
    assert after["envelope"]["moves"] == MAX_MOVES
    assert after["envelope"]["frames"] >= len(records)
    assert after["used"]["wall_s"] > before["used"]["wall_s"]  # the clock went on too
