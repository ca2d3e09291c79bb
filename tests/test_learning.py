"""Learning during the session (`micagent run --learn`): a scripted operator answering from the
twin's truth, through the web page's API and through the terminal prompt; each answer teaches
the session's head (the next frame is classified by it, its record names the head version);
a class named mid-session is learned; a frame beside frames the human named is recorded under
their label without a question; a SIGKILLed learning session resumes with exactly what it had
learned (support set, head, the frames it was taught), and saves the head as a checkpoint
usable with --model."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rendering_twin import RenderingTwin, digest, region_tiles
from rich.console import Console
from typer.testing import CliRunner

from agent.approval_broker import ApprovalBroker
from agent.config import RunConfig, checkpoint_path
from agent.graph import open_checkpointer
from agent.learning import SessionLearner, stage_block
from agent.session import Session, SessionParts
from agent.terminal_approval import TerminalApprover
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.reader import SessionReader
from models.classifier import Classifier
from models.fewshot_head import StemFeatures, SupportSet
from twins.microscope import TwinMicroscope
from twins.scripted_operator import TwinOperator, WebOperator
from workflows.cli.app import app
from workflows.web.approval import start_web_ui

pytestmark = pytest.mark.slow

torch.set_num_threads(1)
FOV = 20e-6
URL = re.compile(r"approval page: (http://127\.0\.0\.1:\d+/\?token=[\w-]{32,})")


@pytest.fixture(scope="module")
def features() -> StemFeatures:
    return StemFeatures()


def positions(pattern: str) -> list[dict]:
    """Survey tiles of the twin (seed 0) in the order of `pattern`: A = Biological,
    B = Patterned_surface, C = Fibres (the first tiles of the first survey rows)."""
    centres = TwinMicroscope(seed=0).specimen.survey_centres(FOV)
    start = {"A": 0, "B": 10, "C": 20}
    used = {key: 0 for key in start}
    out = []
    for i, key in enumerate(pattern):
        p = centres[start[key] + used[key]]
        used[key] += 1
        out.append({"x": p.x, "y": p.y, "row": 0, "col": i})
    return out


def learning_session(tmp_path: Path, features: StemFeatures, pattern: str,
                     learn_min: int = 2) -> Session:
    return session_over(tmp_path, TwinMicroscope(seed=0), SessionLearner(features=features),
                        positions(pattern), learn_min)


def session_over(tmp_path: Path, twin: TwinMicroscope, learner: SessionLearner,
                 tiles: list[dict], learn_min: int = 2,
                 neighbourhood: bool | None = None) -> Session:
    """A learning session (approvals on) over `tiles` of `twin`, 64 px frames."""
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                       state_dir=str(tmp_path / "state"), approve="uncertain", learn=True,
                       learn_min=learn_min, frames=len(tiles), neighbourhood=neighbourhood,
                       imaging={"fov": FOV, "pixels": 64, "dwell": 2e-6})
    parts = SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), learner,
                         survey_positions=tiles)
    return Session(config, parts)


def records_of(path: Path):
    with SessionReader(path) as reader:
        return reader.records(), [e["label"] for e in reader.evaluations()]


def assert_learned_from_each_answer(records, truths, learn_min: int) -> None:
    """Every human answer is the truth and teaches the head: the next frame's record names a
    head one version on; until each class had `learn_min` examples every frame was asked."""
    taught = 0
    for record, truth in zip(records, truths, strict=True):
        assert record.head_version == taught
        if record.human is not None:
            assert record.label == truth and record.route == "human"
            taught += 1
    first = records[:2 * learn_min]
    assert all(r.human is not None and r.human.proposal is not None for r in first)


def test_a_scripted_operator_on_the_web_page_teaches_a_class_named_mid_session(
        tmp_path, features):
    session = learning_session(tmp_path, features, "ABABABCCCAB")
    assert run_on_the_web(session).errors == []
    records, truths = records_of(tmp_path / "s.h5")
    assert_learned_from_each_answer(records, truths, learn_min=2)
    first_c = records[6]
    assert first_c.human.decision == "relabel" and first_c.label == "Fibres"
    assert "Fibres" not in first_c.prediction.probabilities       # a class it did not know
    assert "Fibres" in records[7].prediction.probabilities        # the next frame's head does
    learner = session.context.learner
    assert learner.counts()["Fibres"] == learner.support.labels.count("Fibres") >= 1
    assert learner.version == sum(r.human is not None for r in records)
    # each answer is calibrated as one frame of its stage block (in fields of the survey)
    assert learner.support.groups == tuple(stage_block(r.position.x, r.position.y, FOV)
                                           for r in records if r.human is not None)


def run_on_the_web(session: Session) -> WebOperator:
    """The session run to its end with a scripted operator answering on its web page."""
    broker = ApprovalBroker()
    web = start_web_ui(broker)
    operator = WebOperator(web.url, TwinOperator(seed=0), FOV).start()
    try:
        session.run(broker=broker)
    finally:
        operator.stop()
        web.stop()
        session.close()
    return operator


class RegionFeatures:
    """Stem features as a stem gives them for alike tiles: one vector per region of the twin,
    drifting a little along the stage's x (the frame's region and position from the twin's
    record, by its pixels)."""

    def __init__(self, twin: RenderingTwin) -> None:
        self.twin = twin

    def __call__(self, images) -> np.ndarray:
        rows = []
        for image in images:
            shown = self.twin.shown[digest(image)]
            region = np.random.default_rng(shown["region"]).random(472)
            drift = np.random.default_rng(1000 + shown["region"]).normal(size=472)
            rows.append(region + 0.01 * shown["x"] / FOV * drift)
        return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("neighbourhood", [None, False])
def test_a_frame_beside_those_the_human_named_is_recorded_under_their_label_unasked(
        tmp_path, neighbourhood):
    """Films then Porous named by the human (one example each: the head exists, but the
    session is still learning its classes, learn_min 2), then the Films tile beside the
    first: by default (on with --learn) it is recorded under the label the human gave its
    region, without a question; --no-neighbourhood asks the human."""
    twin = RenderingTwin(seed=0)
    films = region_tiles(twin, "Films_Coated_Surface", 2)
    porous = region_tiles(twin, "Porous_Sponge", 1)
    tiles = [films[0], porous[0], films[1]]
    session = session_over(tmp_path, twin, SessionLearner(features=RegionFeatures(twin)), tiles,
                           neighbourhood=neighbourhood)
    assert run_on_the_web(session).errors == []
    records, truths = records_of(tmp_path / "s.h5")
    assert [r.route for r in records[:2]] == ["human"] * 2
    assert [r.label for r in records[:2]] == truths[:2]
    last = records[2]
    if neighbourhood is None:
        assert (last.label, last.route, last.human) == (truths[2], "neighbourhood", None)
        assert [(n.frame_id, n.label) for n in last.context.neighbours] == [
            (records[0].frame_id, truths[2])]
        assert last.head_version == 2
    else:
        assert (last.route, last.context) == ("human", None)


def test_no_frame_is_recorded_under_taught_neighbours_before_two_classes_are_taught(tmp_path):
    """With one class named there is no head, so no space to compare frames in: the next
    Films tile beside the named one is asked about, not recorded under its label."""
    twin = RenderingTwin(seed=0)
    films = region_tiles(twin, "Films_Coated_Surface", 2)
    session = session_over(tmp_path, twin, SessionLearner(features=RegionFeatures(twin)), films)
    assert run_on_the_web(session).errors == []
    records, _ = records_of(tmp_path / "s.h5")
    assert [(r.route, r.context) for r in records] == [("human", None)] * 2


class PromptAnswers(io.TextIOBase):
    """What an operator types at the terminal prompt: for each pending label request, the
    twin operator's answer, line by line (decision, label of a relabel, note)."""

    def __init__(self, broker: ApprovalBroker, operator: TwinOperator) -> None:
        self.broker, self.operator, self.lines = broker, operator, []

    def readline(self, size: int = -1) -> str:
        if not self.lines:
            request = self.broker.pending()[0]
            position = request.record.position
            self.lines = self.operator.answer_lines(position.x, position.y, FOV,
                                                    request.proposal)
        return self.lines.pop(0) + "\n"


def test_a_scripted_operator_at_the_terminal_prompt_teaches_new_class_names(
        tmp_path, features):
    broker = ApprovalBroker()
    screen = io.StringIO()
    answers = PromptAnswers(broker, TwinOperator(seed=0))
    approver = TerminalApprover(broker, Console(file=screen, width=200), operator="cli",
                                stream=answers).start()
    session = learning_session(tmp_path, features, "ABCA", learn_min=1)
    try:
        session.run(broker=broker)
    finally:
        approver.stop()
        session.close()
    records, truths = records_of(tmp_path / "s.h5")
    assert_learned_from_each_answer(records, truths, learn_min=1)
    assert records[0].human.decision == "relabel" and records[0].label == "Biological"
    assert records[0].prediction.label == "unknown"           # it knew nothing yet
    assert "known or a new class name" in screen.getvalue()
    assert records[2].label == "Fibres" and "Fibres" in records[3].prediction.probabilities
    assert session.context.learner.class_names == ["Biological", "Patterned_surface",
                                                   "Fibres"]


def test_learn_needs_approvals_and_model_none_needs_learn(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--learn", "--model", "none", "--state-dir",
                                 str(tmp_path)])
    assert result.exit_code == 2
    assert "error: --learn learns from a human's answers: add --approve" in result.output


def _start_cli(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", "from workflows.cli.app import app; app()", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    with open(log, "w") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                cwd=cwd)


def _operate(proc: subprocess.Popen, log: Path, until) -> WebOperator:
    """A scripted operator on the page the CLI announces, once it does; waits for `until()`
    (or the process's end)."""
    while not (found := URL.search(log.read_text(errors="replace"))):
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    operator = WebOperator(found.group(1), TwinOperator(seed=0), FOV).start()
    while proc.poll() is None and not until():
        time.sleep(0.1)
    return operator


def _checkpointed(out: Path, session_id: str, channel: str = "learning") -> Any:
    """The value of a state channel in the session's latest checkpoint (None: none yet)."""
    saver = open_checkpointer(checkpoint_path(out))
    try:
        found = saver.get_tuple({"configurable": {"thread_id": session_id}})
    except sqlite3.OperationalError:            # the database is being created
        return None
    finally:
        saver.conn.close()
    return None if found is None else found.checkpoint["channel_values"].get(channel)


def test_a_sigkilled_learning_session_resumes_with_what_it_learned_and_saves_its_head(
        tmp_path, features):
    out, state = tmp_path / "learn.h5", tmp_path / "state"
    log = tmp_path / "err.log"
    proc = _start_cli(["run", "--learn", "--model", "none", "--approve", "uncertain", "--ui",
                       "web", "--frames", "8", "--pixels", "64", "--learn-min", "2",
                       "--out", str(out),
                       "--state-dir", str(state), "--quiet"], log, tmp_path)
    session_id: str | None = None

    def three_answers() -> bool:
        nonlocal session_id
        if session_id is None:
            found = list(state.glob("sessions/*.json"))
            session_id = found[0].stem if found else None
        value = _checkpointed(out, session_id) if session_id else None
        return bool(value) and value["version"] >= 3

    operator = _operate(proc, log, three_answers)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    operator.stop()
    killed = _checkpointed(out, session_id)
    assert killed["version"] >= 3
    taught = _checkpointed(out, session_id, "neighbourhood")  # named and recorded so far
    assert len(taught) >= 2          # the third answer's frame may not be recorded yet

    log2 = tmp_path / "err2.log"
    resumed = _start_cli(["run", "--resume", session_id, "--ui", "web", "--state-dir",
                          str(state), "--quiet"], log2, tmp_path)
    operator = _operate(resumed, log2, lambda: False)
    assert resumed.wait(300) == 0, log2.read_text()
    operator.stop()

    records, _ = records_of(out)
    assert _checkpointed(out, session_id, "neighbourhood")[:len(taught)] == taught
    after_kill = [r for r in records if r.head_version is not None
                  and r.head_version >= killed["version"]]
    assert after_kill[0].head_version == killed["version"]        # the same head went on
    support = SupportSet.load(f"{out}.model")
    before = SupportSet.from_state(killed["support"])
    assert support.labels[:len(before)] == before.labels
    assert support.groups[:len(before)] == before.groups and all(support.groups)
    assert np.array_equal(support.features[:len(before)], before.features)
    model = Classifier.load(f"{out}.model")
    assert model.class_names == support.class_names
    assert model.head["version"] == len(support) == sum(r.human is not None for r in records)
    frame = TwinMicroscope(seed=0).acquire()
    probabilities = model.classify([frame.image])[0].probabilities
    head = support.fit()                     # the session's last refit, made again
    assert np.allclose(probabilities, head.predict(features([frame.image]))[0], atol=1e-4)
