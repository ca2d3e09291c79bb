"""The terminal's approval prompt: the frame drawn in the terminal, decisions, labels and
rescan changes completed case-insensitively and by a unique prefix, the operator asked once,
and no Python object (dict, None, True) in what it prints."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from agent.approval_broker import ApprovalBroker
from agent.approval_request import LabelRequest
from agent.terminal_approval import TerminalApprover, ask, complete
from instruments.session_file.decision_record import DecisionRecord

CLASSES = ("Fibres", "Nanowires", "Particles", "Porous", "Powder", "unknown")
PYTHON_OBJECTS = re.compile(r"\bNone\b|\bTrue\b|\bFalse\b|\{'|\[\(|\(\[")


@pytest.fixture
def request_with_frame(tmp_path: Path) -> LabelRequest:
    thumb = tmp_path / "frame.png"
    Image.fromarray((np.indices((48, 48)).sum(0) * 2).astype(np.uint8)).save(thumb)
    record = DecisionRecord.model_validate({
        "frame_id": "0f3c2a9e-1111-2222-3333-444455556666", "sequence": 3,
        "prediction": {"label": "Porous", "confidence": 0.5,
                       "top_k": [["Porous", 0.5], ["Powder", 0.3]]}})
    return LabelRequest(reason="the classifier was unsure", record=record, proposal="Porous",
                        on_approve="record this frame as Porous", labels=CLASSES,
                        thumbnail=str(thumb))


def test_names_complete_in_any_case_and_by_a_unique_prefix() -> None:
    assert complete("porous", CLASSES) == "Porous"
    assert complete("NANO", CLASSES) == "Nanowires"
    assert complete("Por", CLASSES) == "Porous"
    assert complete("unknown", CLASSES) == "unknown"
    with pytest.raises(ValueError, match="could be Porous, Powder"):
        complete("po", CLASSES)
    with pytest.raises(ValueError, match="is not one of"):
        complete("Banana", CLASSES)


def test_a_prompt_takes_prefixes_shows_the_frame_and_prints_no_python_objects(
        request_with_frame: LabelRequest) -> None:
    screen = io.StringIO()
    console = Console(file=screen, width=100)
    answers = io.StringIO("r\nrel\npo\nporous\nfine pores\n")
    decision = ask(console, request_with_frame, "ana", answers)
    assert (decision.decision, decision.label, decision.note) == ("relabel", "Porous",
                                                                  "fine pores")
    shown = screen.getvalue()
    assert "could be relabel, rescan" in shown and "could be Porous, Powder" in shown
    assert "▀" in shown                          # the frame, as a block-character preview
    assert "frame image: " in shown
    assert not PYTHON_OBJECTS.search(shown), shown

    rescan = ask(console, request_with_frame, "ana", io.StringIO("resc\nDW\ntoo noisy\n"))
    assert (rescan.decision, rescan.rescan_change, rescan.note) == ("rescan", "dwell",
                                                                    "too noisy")


def test_the_operator_is_asked_once_per_session(request_with_frame: LabelRequest) -> None:
    broker, screen = ApprovalBroker(), io.StringIO()
    answers = io.StringIO("\nAda Lovelace\napprove\n\nskip\n\n")
    approver = TerminalApprover(broker, Console(file=screen, width=100), stream=answers).start()
    try:
        decided = [broker.wait(broker.submit(request_with_frame), timeout=30)
                   for _ in range(2)]
    finally:
        approver.stop()
    assert [(d.decision, d.operator) for d in decided] == [("approve", "Ada Lovelace"),
                                                           ("skip", "Ada Lovelace")]
    shown = screen.getvalue()
    assert shown.count("operator name") == 2      # once refused (blank), once answered
    assert "operator must not be blank" in shown
