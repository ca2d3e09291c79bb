"""What happens in a session is one stream of Bluesky event-model documents (start, descriptors,
one event per recorded frame, incidents, human decisions, stop), each valid by event_model's
schemas; the session file's incident log, the session log, the progress view and the report
read it; the checkpoint keeps only the latest events and counts the rest."""

from __future__ import annotations

import io
import json
import threading
import uuid
from pathlib import Path

import event_model
import pytest
import torch
from crash_points import Crash, crash_at
from plumbing_model import untrained
from rich.console import Console
from rich.progress import Progress

from agent import state as agent_state
from agent.approval_broker import ApprovalBroker
from agent.config import RunConfig
from agent.event_stream import EventStream, StreamReader
from agent.session import Session, SessionParts
from agent.state import DROPPED, EVENTS_KEPT, keep_recent
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.faults import FaultSpec
from twins.microscope import TwinMicroscope
from workflows.report.session_report import build_report
from workflows.session_assembly import ProgressView

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


class Documents(StreamReader):
    """Every document, checked against event_model's schema as it arrives, by stream."""

    def __init__(self) -> None:
        super().__init__()
        self.docs: list[tuple[str, dict]] = []
        self.frames: list[dict] = []
        self.incidents: list[dict] = []

    def __call__(self, name: str, doc: dict) -> tuple[str, dict]:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
        self.docs.append((name, doc))
        return super().__call__(name, doc)

    def frame(self, data: dict) -> None:
        self.frames.append(data)

    def incident(self, data: dict) -> None:
        self.incidents.append(data)

    def names(self) -> list[str]:
        return [name for name, _ in self.docs]


def test_faults_before_the_start_are_held_and_a_token_unsubscribes():
    stream, first, second = EventStream(), Documents(), Documents()
    stream.incident("timeout", "no reply within 1 s", call="status")
    stream.subscribe(first)
    token = stream.subscribe(second)
    stream.start({"session_id": "s"})
    stream.unsubscribe(token)
    stream.incident("nan_frame", "frame has NaN pixels")
    stream.stop("interrupted", "stopped by the operator")
    assert first.names() == ["start", "descriptor", "event", "event", "stop"]
    assert [i["kind"] for i in first.incidents] == ["timeout", "nan_frame"]
    assert json.loads(first.incidents[0]["details"]) == {"call": "status"}
    assert first.docs[-1][1]["exit_status"] == "abort"
    assert second.names() == ["start", "descriptor", "event"]


def session_for(tmp_path: Path, classifier, session_id: str, faults: str = "",
                envelope: SafetyEnvelope | None = None, positions: int = 8,
                **config) -> Session:
    twin = TwinMicroscope(seed=0, faults=FaultSpec.parse(faults))
    cfg = RunConfig(session_id=session_id, out=str(tmp_path / "s.h5"),
                    state_dir=str(tmp_path / "state"), confidence=0.0, max_set_size=10,
                    imaging={"fov": 20e-6, "pixels": 64, "dwell": 2e-6}, **config)
    tiles = [{"x": p.x, "y": p.y, "row": 0, "col": i}
             for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:positions])]
    parts = SessionParts(GuardedMicroscope(twin, envelope or SafetyEnvelope()), classifier,
                         survey_positions=tiles)
    return Session(cfg, parts)


@pytest.fixture(scope="module")
def faulty_session(classifier, tmp_path_factory):
    """A four-frame survey over a twin that returns two NaN frames in a row (the retry fails
    too: the position is abandoned) and a wrong-shaped one (retried), watched by a
    schema-checking subscriber and the terminal/web progress view."""
    tmp = tmp_path_factory.mktemp("faulty")
    session = session_for(tmp, classifier, str(uuid.uuid4()), faults="nan@2,nan@3,shape@4",
                          frames=4)
    docs, broker, console = Documents(), ApprovalBroker(), Console(file=io.StringIO())
    progress = Progress(console=console, disable=True)
    view = ProgressView(progress, console, broker, total=4)
    session.stream.subscribe(docs)
    session.stream.subscribe(view)
    final = session.run()
    session.close()
    return {"tmp": tmp, "docs": docs, "final": final, "broker": broker, "view": view,
            "console": console.file.getvalue(), "config": session.config}


def test_a_session_is_one_run_of_valid_documents(faulty_session):
    docs, final = faulty_session["docs"], faulty_session["final"]
    names = docs.names()
    assert names[0] == "start" and names[-1] == "stop"
    assert names.count("start") == 1 and names.count("stop") == 1
    start, stop = docs.docs[0][1], docs.docs[-1][1]
    assert start["session_id"] == faulty_session["config"].session_id
    assert start["resumed"] is False and start["recorded"] == 0
    assert stop["run_start"] == start["uid"] and stop["exit_status"] == "success"
    descriptors = [doc for name, doc in docs.docs if name == "descriptor"]
    assert sorted(d["name"] for d in descriptors) == ["incidents", "primary"]
    seen = set()                                # every event after its stream's descriptor
    for name, doc in docs.docs:
        if name == "descriptor":
            seen.add(doc["uid"])
        elif name == "event":
            assert doc["descriptor"] in seen
    assert stop["num_events"] == {"primary": final["counts"]["recorded"],
                                  "incidents": len(docs.incidents)}
    assert final["status"] == "completed"


def test_one_event_per_recorded_frame_in_the_order_of_the_file(faulty_session):
    frames = faulty_session["docs"].frames
    with SessionReader(faulty_session["config"].out) as reader:
        records = reader.records()
    assert [f["frame_id"] for f in frames] == [r.frame_id for r in records]
    assert [f["recorded"] for f in frames] == list(range(1, len(records) + 1))
    assert len(records) == 3                   # four positions, one abandoned
    assert [f["label"] for f in frames] == [r.label for r in records]
    assert [f["route"] for f in frames] == [r.route.value for r in records]


def test_instrument_faults_and_the_agents_handling_of_them_are_incidents(faulty_session):
    incidents = faulty_session["docs"].incidents
    by_source = {(i["source"], i["kind"]) for i in incidents}
    assert {("instrument", "nan_frame"), ("instrument", "wrong_shape"),
            ("agent", "bad_frame"), ("agent", "connected")} <= by_source
    bad = [json.loads(i["details"]) for i in incidents if i["kind"] == "bad_frame"]
    assert len(bad) == 1 and set(bad[0]["position"]) >= {"x", "y"}


def test_the_session_file_holds_the_streams_incidents(faulty_session):
    streamed = [(i["kind"], i["message"]) for i in faulty_session["docs"].incidents]
    with SessionReader(faulty_session["config"].out) as reader:
        stored = [(i["kind"], i["message"]) for i in reader.incidents()]
        sources = {i["kind"]: i["source"] for i in reader.incidents()}
        runs = reader.provenance["event_runs"]
    # the file closes inside the last step: what that step reports follows the file's close
    assert stored == streamed[:len(stored)]
    assert {"nan_frame", "wrong_shape", "bad_frame"} <= {kind for kind, _ in stored}
    assert sources["nan_frame"] == "instrument" and sources["bad_frame"] == "agent"
    assert runs == [faulty_session["docs"].docs[0][1]["uid"]]   # the file names its runs


def test_the_session_log_has_a_line_per_document(faulty_session):
    config = faulty_session["config"]
    lines = (Path(config.state_dir) / "logs" / f"{config.session_id}.log").read_text(
        ).splitlines()
    docs = faulty_session["docs"]
    assert lines[0].startswith("start run ") and lines[-1].startswith("stop run ")
    assert sum(line.startswith("frame ") for line in lines) == len(docs.frames)
    assert sum(line.startswith("incident ") for line in lines) == len(docs.incidents)
    assert any("nan_frame" in line for line in lines)


def test_progress_bar_web_progress_and_terminal_read_the_frames(faulty_session):
    final, broker, view = faulty_session["final"], faulty_session["broker"], \
        faulty_session["view"]
    assert view.progress.tasks[0].completed == final["counts"]["recorded"] == 3
    assert broker.progress["recorded"] == 3 and broker.progress["total"] == 4
    assert broker.progress["routes"] == final["counts"]["routes"]
    assert set(broker.progress) == {"recorded", "total", "routes"}    # no internal budget
    for frame in faulty_session["docs"].frames:
        assert f"recorded {frame['frame_id'][:8]}: {frame['label']}" in \
            faulty_session["console"]


def test_the_report_lists_the_incidents(faulty_session):
    page = build_report(faulty_session["config"].out, faulty_session["tmp"] / "report")
    text = page.read_text()
    assert "<h2>Incidents</h2>" in text and "nan_frame" in text and "wrong_shape" in text


def test_a_human_decision_is_an_event_of_its_own(tmp_path, classifier):
    session = session_for(tmp_path, classifier, str(uuid.uuid4()), frames=1, approve="all")
    docs, broker, stop = Documents(), ApprovalBroker(), threading.Event()
    session.stream.subscribe(docs)

    def operator() -> None:
        while not stop.is_set():
            for request in broker.pending():
                broker.decide(request.request_id, {"decision": "approve", "label": None,
                                                   "operator": "ada", "note": ""})
            stop.wait(0.02)
    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    try:
        session.run(broker=broker)
    finally:
        stop.set()
        thread.join()
        session.close()
    decisions = [doc for name, doc in docs.docs
                 if name == "descriptor" and doc["name"] == "decisions"]
    assert len(decisions) == 1
    events = [doc["data"] for name, doc in docs.docs
              if name == "event" and doc["descriptor"] == decisions[0]["uid"]]
    assert events and all(e["decision"] == "approve" and e["operator"] == "ada"
                          and e["kind"] == "label" and e["frame_id"] for e in events)


def test_the_checkpoint_keeps_the_latest_events_and_counts_those_it_dropped():
    events: list[dict] = []
    for n in range(1000):
        events = keep_recent(events, [{"kind": "nan_frame", "message": str(n)}])
    assert len(events) == EVENTS_KEPT + 1
    assert events[0]["kind"] == DROPPED and events[0]["count"] == 1000 - EVENTS_KEPT
    assert [e["message"] for e in events[1:]] == [str(n) for n in range(900, 1000)]
    assert keep_recent([{"kind": "connected"}], [{"kind": "bad_frame"}]) == [
        {"kind": "connected"}, {"kind": "bad_frame"}]          # short lists as they were


def test_a_session_with_many_incidents_checkpoints_a_bounded_list(tmp_path, classifier,
                                                                  monkeypatch):
    monkeypatch.setattr(agent_state, "EVENTS_KEPT", 5)
    twin = TwinMicroscope(seed=0)
    first = twin.specimen.survey_centres(20e-6)[0]
    free = SafetyEnvelope(free_zone=((first.x - 1e-6, first.x + 1e-6),
                                     (first.y - 1e-6, first.y + 1e-6)))
    session = session_for(tmp_path, classifier, str(uuid.uuid4()), envelope=free,
                          positions=24, frames=24)
    docs = Documents()
    session.stream.subscribe(docs)
    final = session.run()
    session.close()
    refused = [i for i in docs.incidents if i["kind"] == "refused"]
    assert len(refused) == 23                            # every refusal is in the stream
    assert final["events"][0]["kind"] == DROPPED
    assert len(final["events"]) == 6
    entered = sum(i["source"] == "agent" for i in docs.incidents)   # the state's events
    assert final["events"][0]["count"] == entered - 5


def test_a_resumed_session_is_a_new_run_taking_up_the_count(tmp_path, classifier):
    session_id = str(uuid.uuid4())
    first = session_for(tmp_path, classifier, session_id, frames=4)
    before = Documents()
    first.stream.subscribe(before)
    with pytest.raises(Crash):
        first.run(on_step=crash_at("record", 2))
    first.close()
    second = session_for(tmp_path, classifier, session_id, frames=4)
    after = Documents()
    second.stream.subscribe(after)
    second.run()
    second.close()
    assert before.docs[-1][1]["exit_status"] == "fail"
    start = after.docs[0][1]
    assert start["resumed"] is True and start["recorded"] == len(before.frames) == 2
    assert sum(start["routes"].values()) == 2
    assert [f["recorded"] for f in after.frames] == [3, 4]
    assert [n for n in after.names() if n in ("start", "stop")] == ["start", "stop"]
    with SessionReader(tmp_path / "s.h5") as reader:
        stored = list(reader.frame_ids)
        runs = reader.provenance["event_runs"]
    assert runs == [before.docs[0][1]["uid"], start["uid"]]
    assert [f["frame_id"] for f in before.frames + after.frames] == stored
