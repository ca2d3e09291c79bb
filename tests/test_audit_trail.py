"""Every human act on a frame is stored in the session file: approve, relabel, "reject and
rescan" (with the change the operator picked) and skip, each with its operator, time, note
and what it changed, and each is a line of the report's human acts; a rescan a human asked
for makes the change they picked."""

from __future__ import annotations

import re
import threading
import uuid

import pytest
import torch
from plumbing_model import untrained

from agent.approval_broker import ApprovalBroker
from agent.approval_request import HumanDecision
from agent.config import RunConfig
from agent.session import Session, SessionParts
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope
from workflows.report.session_report import build_report

torch.set_num_threads(1)

# frame 0: two rescans (longer dwell, then zoom), then a relabel; frame 1: approved;
# frame 2: a rescan with the agent's choice, then skipped
ANSWERS = [
    {"decision": "rescan", "rescan_change": "dwell", "operator": "ana", "note": "too noisy"},
    {"decision": "rescan", "rescan_change": "zoom", "operator": "ana", "note": "closer"},
    {"decision": "relabel", "label": "Tips", "operator": "ana", "note": "a tip"},
    {"decision": "approve", "operator": "ben", "note": ""},
    {"decision": "rescan", "operator": "ben", "note": "once more"},
    {"decision": "skip", "operator": "ben", "note": "charging"},
]


@pytest.fixture(scope="module")
def session_file(tmp_path_factory) -> str:
    classifier = untrained(SEM_CLASSES)
    tmp = tmp_path_factory.mktemp("audit")
    twin = TwinMicroscope(seed=0)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i}
                 for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:3])]
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp / "s.h5"),
                       state_dir=str(tmp / "state"), frames=3, approve="all",
                       imaging={"fov": 20e-6, "pixels": 64, "dwell": 2e-6})
    session = Session(config, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()),
                                           classifier, survey_positions=positions))
    broker, stop = ApprovalBroker(), threading.Event()
    answers = iter(ANSWERS)

    def answer() -> None:
        while not stop.is_set():
            for request in broker.pending():
                broker.decide(request.request_id, next(answers))
            stop.wait(0.02)
    threading.Thread(target=answer, daemon=True).start()
    try:
        assert session.run(broker=broker)["status"] == "completed"
    finally:
        stop.set()
    return config.out


def test_every_human_act_is_in_the_file_with_operator_time_note_and_change(session_file):
    with SessionReader(session_file) as reader:
        records = reader.records()
        summary = reader.summary()
    assert summary["human_acts"] == {"rescan": 3, "relabel": 1, "approve": 1, "skip": 1}
    acts = [act for record in records for act in record.human_acts]
    assert [(a.decision, a.operator, a.note) for a in acts] == [
        (answer["decision"], answer["operator"], answer["note"]) for answer in ANSWERS]
    assert all(isinstance(a.time, float) and a.effect for a in acts)
    first, second, third = records
    dwell, zoom, relabel = first.human_acts
    assert dwell.rescan_change == "dwell" and zoom.rescan_change == "zoom"
    assert dwell.effect == "dwell 2e-06 s -> 8e-06 s"
    assert zoom.effect == "fov 2e-05 m -> 1.4e-05 m"
    assert first.rescans[0].reason == "operator ana asked (dwell)"
    assert first.settings.dwell == 8e-6 and first.settings.fov == pytest.approx(14e-6)
    assert relabel.label == first.label == "Tips"
    assert relabel.effect == (f"label {relabel.proposal} -> Tips" if relabel.changed
                              else "recorded as proposed (Tips)")
    assert second.human_acts[0].effect.startswith("recorded as proposed")
    again, skip = third.human_acts
    assert again.rescan_change == "auto" and third.rescans[0].human == again
    assert skip.effect == "frame left without a label" and third.label is None


def test_every_human_act_in_the_file_is_a_line_of_the_report(session_file, tmp_path):
    page = build_report(session_file, tmp_path / "report").read_text(encoding="utf-8")
    table = page.split("<h2>Human acts</h2>")[1].split("</table>")[0]
    lines = [re.findall(r"<td>([^<]*)</td>", line) for line in table.split("<tr>")[2:]]
    acts = {"rescan": "reject and rescan", "relabel": "relabel", "approve": "approve",
            "skip": "skip"}
    assert [(act, operator, note) for _, act, operator, _, note, _ in lines] == [
        (acts[answer["decision"]], answer["operator"], answer["note"]) for answer in ANSWERS]
    assert [changed for *_, changed in lines][:2] == [
        "rescanned: dwell 2 µs → 8 µs (dwell asked)",
        "rescanned: fov 20 µm → 14 µm (zoom asked)"]


def test_a_rescan_change_is_only_for_a_rescan() -> None:
    with pytest.raises(ValueError, match="only for a rescan"):
        HumanDecision(decision="approve", rescan_change="zoom", operator="ana")
    with pytest.raises(ValueError):
        HumanDecision(decision="rescan", rescan_change="brighter", operator="ana")
