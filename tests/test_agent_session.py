"""The agent's graph on the in-process twin: decision records, routes, budgets, approvals
(interrupt/resume through the ApprovalBroker), envelope refusals and closing statuses.

The classifier here has random weights (Classifier.create): these tests are about control
flow, so thresholds are set to force each route; accuracy lives in benchmarks/.
"""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
import torch
from plumbing_model import untrained

from agent.adjudication.demonstrations import DemonstrationBank
from agent.approval_broker import ApprovalBroker
from agent.approval_request import DecisionRefused, LabelRequest
from agent.config import RunConfig
from agent.driver import ApprovalUnavailable
from agent.session import Session, SessionParts
from instruments.devices.frame import StagePosition
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.decision_record import RECORD_VERSION
from instruments.session_file.reader import SessionReader
from models.classifier import Classifier
from twins.classes import SEM_CLASSES
from twins.faults import FaultSpec
from twins.microscope import TwinMicroscope
from workflows.web.approval import view_of

torch.set_num_threads(1)
RECORD_KEYS = {"frame_id", "sequence", "position", "tile", "prediction", "label", "route",
               "rescans", "quality", "adjudication", "human", "timings"}


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


@pytest.fixture(scope="module")
def bank(classifier):
    """Twin frames of three class regions, labelled by the twin's ground truth."""
    twin = TwinMicroscope(seed=5)
    centres = twin.specimen.survey_centres(20e-6)
    images, labels, seen = [], [], set()
    for centre in centres:
        label = twin.specimen.label_at(centre.x, centre.y)
        if label in seen:
            continue
        seen.add(label)
        twin.move_stage(centre)
        for offset in (0.0, 20e-6, 40e-6, 60e-6):
            twin.move_stage(StagePosition(x=centre.x + offset, y=centre.y))
            frame = twin.acquire()
            images.append(frame.image)
            labels.append(frame.evaluation["label"])
        if len(seen) == 3:
            break
    return DemonstrationBank(np.stack(images), labels, classifier.embed(images))


def twin_positions(twin: TwinMicroscope, fov: float, count: int = 12) -> list[dict]:
    """The first `count` survey tiles (neighbours, so the twin renders few regions)."""
    return [{"x": p.x, "y": p.y, "row": 0, "col": i}
            for i, p in enumerate(twin.specimen.survey_centres(fov)[:count])]


def make_session(tmp_path, classifier, bank=None, envelope=None, faults=None, positions=None,
                 **config) -> Session:
    twin = TwinMicroscope(seed=0, faults=faults)
    config.setdefault("imaging", {"fov": 20e-6, "pixels": 128, "dwell": 2e-6})
    cfg = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                    state_dir=str(tmp_path / "state"), **config)
    parts = SessionParts(GuardedMicroscope(twin, envelope or SafetyEnvelope()), classifier,
                         bank=bank, survey_positions=positions or twin_positions(twin, 20e-6))
    return Session(cfg, parts)


def read(path):
    with SessionReader(path) as reader:
        return reader.summary(), reader.records(), reader.evaluations(), reader.provenance


def test_confident_survey_records_every_tile_with_its_decision(tmp_path, classifier):
    session = make_session(tmp_path, classifier, frames=5, confidence=0.0, max_set_size=10)
    final = session.run()
    session.close()
    summary, records, truths, prov = read(tmp_path / "s.h5")
    assert final["status"] == summary["status"] == "completed"
    assert summary["frames"] == 5 and summary["session_id"] == session.config.session_id
    assert [r.sequence for r in records] == list(range(5))
    assert all(r.route == "confident" for r in records)
    for record, truth in zip(records, truths, strict=True):
        stored = record.model_dump()
        assert RECORD_KEYS <= set(stored) and record.version == RECORD_VERSION
        assert record.frame_id and record.timings.acquire_s > 0 and record.position.x is not None
        assert record.label == record.prediction.label
        assert None not in (record.quality.sharpness, record.quality.snr,
                           record.quality.drift_px, record.quality.ok)
        assert truth["label"] in SEM_CLASSES and "evaluation" not in stored
    assert prov["outcome"]["counts"]["recorded"] == 5
    assert prov["policy"]["confidence"] == 0.0 and "run_config" in prov


def test_unsure_frames_go_to_the_adjudicator_until_its_budget_is_spent(tmp_path, classifier,
                                                                         bank):
    session = make_session(tmp_path, classifier, bank, frames=5, confidence=1.01,
                           max_rescans=0, thresholds={"min_sharpness": 0.0, "min_snr": 0.0,
                                                      "max_drift_px": 1e9},
                           budgets={"adjudications": 3}, demo_k=4)
    final = session.run()
    _, records, _, _ = read(tmp_path / "s.h5")
    assert final["used"]["adjudications"] == 3
    judged = [r for r in records if r.adjudication]
    assert len(judged) == 3
    for record in judged:
        adjudication = record.adjudication
        assert adjudication.adjudicator == "offline-knn" and len(
            adjudication.demonstrations) == 4
        assert adjudication.reclassified.lmm_label == adjudication.answer.label
        answer, again = adjudication.answer.label, adjudication.reclassified.label
        if answer in (again, record.prediction.label):   # two sources agree
            assert (record.route, record.label) == ("adjudicated", answer)
        else:
            assert (record.route, record.label) == ("contested", again)
    assert all(r.route == "unresolved" for r in records if not r.adjudication)


def test_poor_frames_are_rescanned_with_adapted_settings_at_most_r_times(tmp_path, classifier):
    session = make_session(tmp_path, classifier, frames=3, confidence=1.01, max_rescans=2,
                           imaging={"fov": 20e-6, "pixels": 128, "dwell": 3e-7},
                           thresholds={"min_sharpness": 0.0, "min_snr": 1e9,
                                       "max_drift_px": 1e9},
                           budgets={"rescans": 5, "adjudications": 0})
    final = session.run()
    _, records, _, _ = read(tmp_path / "s.h5")
    assert final["used"]["rescans"] == 5
    assert [len(r.rescans) for r in records] == [2, 2, 1]
    # each rescan raised the SNR (the twin's noise falls with dwell), so rescanning went on
    assert all(a.effect == "improved" for r in records for a in r.rescans)
    first = records[0].rescans[0]
    assert first.reason == "noise" and first.new_settings.dwell == pytest.approx(1.2e-6)
    # the attempt a rescan replaced stays viewable (the approval page shows it beside the new one)
    assert open(first.thumbnail, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert records[0].settings.dwell > records[0].rescans[0].settings.dwell
    assert records[0].rescans[1].new_settings.fov == pytest.approx(0.7 * 20e-6)
    assert records[0].quality.drift_px == 0.0     # not measured against another field
    assert all(r.route == "quality_failed" for r in records)


def test_focus_sweep_keeps_the_sharpest_defocus(tmp_path, classifier):
    session = make_session(tmp_path, classifier, frames=1, confidence=1.01, max_rescans=1,
                           imaging={"fov": 4e-6, "pixels": 128, "dwell": 2e-6,
                                    "defocus": 30e-6},
                           thresholds={"min_sharpness": 1e9, "min_snr": 0.0,
                                       "max_drift_px": 1e9},
                           budgets={"rescans": 1, "adjudications": 0})
    session.context.focus_step = 15e-6
    session.run()
    _, records, truths, _ = read(tmp_path / "s.h5")
    sweep = records[0].rescans[0].adaptation["focus_sweep"]
    best = max(sweep, key=lambda pair: pair[1])[0]
    assert records[0].settings.defocus == best
    assert abs(truths[0]["focus_error_m"]) < 30e-6       # closer to focus than it started


def answer_with(broker: ApprovalBroker, decisions: list[dict], seen: list,
                stop: threading.Event, refused: list[str] | None = None) -> threading.Thread:
    """Answers each pending request with the next decision; a decision the broker refuses
    goes to `refused` (the request stays pending and gets the next one)."""
    def loop():
        while not stop.is_set():
            for request in broker.pending():
                seen.append(request)
                try:
                    broker.decide(request.request_id, decisions[min(len(seen) - 1,
                                                                    len(decisions) - 1)])
                except DecisionRefused as exc:
                    (refused if refused is not None else []).append(str(exc))
            stop.wait(0.02)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_approve_all_interrupts_and_resumes_with_the_human_decision(tmp_path, classifier):
    broker, seen, stop, refused = ApprovalBroker(), [], threading.Event(), []
    decisions = [{"decision": "relabel", "label": "Tips", "operator": "ana", "note": "tip"},
                 {"decision": "bogus"},
                 {"decision": "approve", "operator": "ana", "note": ""},
                 {"decision": "skip", "operator": "ben", "note": "out of focus"}]
    answer_with(broker, decisions, seen, stop, refused)
    session = make_session(tmp_path, classifier, frames=3, approve="all")
    final = session.run(broker=broker)
    stop.set()
    _, records, _, _ = read(tmp_path / "s.h5")
    assert final["status"] == "completed" and len(records) == 3
    assert [r.route for r in records] == ["human"] * 3
    first, second, third = (r.human for r in records)
    assert first.decision == "relabel" and records[0].label == "Tips"
    assert first.changed == (first.proposal != "Tips") and first.operator == "ana"
    assert len(refused) == 1 and "decision" in refused[0]          # bogus decision refused,
    assert seen[1].request_id == seen[2].request_id and second.decision == "approve"  # re-asked
    assert records[1].label == second.proposal and not second.changed
    assert third.decision == "skip" and records[2].label is None
    assert seen[0].thumbnail.endswith(".png") and seen[0].record.prediction.top_k
    view = view_of(seen[0], list(SEM_CLASSES))       # the web page reads the same payload
    assert view["proposal"] == first.proposal and view["has_image"]
    assert view["top_k"] and view["reason"] and view["on_approve"]


def free_zone_envelope(position: dict) -> SafetyEnvelope:
    x, y = position["x"], position["y"]
    return SafetyEnvelope(free_zone=((x - 1e-6, x + 1e-6), (y - 1e-6, y + 1e-6)))


def test_move_outside_the_free_zone_waits_for_approval(tmp_path, classifier):
    twin_positions_ = twin_positions(TwinMicroscope(seed=0), 20e-6)[:2]
    broker, seen, stop = ApprovalBroker(), [], threading.Event()
    answer_with(broker, [{"decision": "approve", "operator": "ana", "note": "ok"}], seen, stop)
    session = make_session(tmp_path, classifier, envelope=free_zone_envelope(
        twin_positions_[0]), positions=twin_positions_, frames=2, approve="uncertain",
        confidence=0.0, max_set_size=10)
    session.run(broker=broker)
    stop.set()
    summary, records, _, _ = read(tmp_path / "s.h5")
    assert summary["frames"] == 2 and [s.kind for s in seen] == ["move"]
    assert seen[0].target["x"] == twin_positions_[1]["x"]
    approval = records[1].position.approval
    assert approval.operator == "ana" and approval.decision == "approve" and approval.note == "ok"
    used = session.parts.microscope.approvals_used
    assert len(used) == 1 and used[0].operator == "ana"
    assert used[0].target == StagePosition(x=twin_positions_[1]["x"], y=twin_positions_[1]["y"])


def test_unattended_session_skips_moves_outside_the_free_zone(tmp_path, classifier):
    positions = twin_positions(TwinMicroscope(seed=0), 20e-6)[:3]
    session = make_session(tmp_path, classifier, envelope=free_zone_envelope(positions[0]),
                           positions=positions, frames=3, confidence=0.0, max_set_size=10)
    final = session.run()
    summary, _, _, _ = read(tmp_path / "s.h5")
    assert summary["frames"] == 1 and final["counts"]["refused"] == 2
    assert sum(e["kind"] == "refused" for e in final["events"]) == 2


def test_hunt_ends_when_the_move_budget_is_spent(tmp_path, classifier):
    session = make_session(tmp_path, classifier, objective="hunt:Tips:50", frames=100,
                           strategy="spiral", confidence=0.0, max_set_size=10, budgets={"moves": 4})
    final = session.run()
    summary, _, _, prov = read(tmp_path / "s.h5")
    assert final["used"]["moves"] == 4
    assert summary["frames"] == 5          # the first position is where the stage already is
    assert summary["status"] == "completed" and "4 stage moves" in summary["reason"]
    assert prov["outcome"]["used"]["moves"] == 4


def test_wall_time_budget_ends_the_session_before_any_frame(tmp_path, classifier):
    session = make_session(tmp_path, classifier, frames=3, budgets={"wall_s": 0.0})
    session.run()
    summary, _, _, _ = read(tmp_path / "s.h5")
    assert summary["frames"] == 0 and "wall time" in summary["reason"]


def test_repeated_bad_frames_fail_the_session_with_the_reason_recorded(tmp_path, classifier):
    faults = FaultSpec.parse(",".join(f"nan@{i}" for i in range(1, 9)))
    session = make_session(tmp_path, classifier, frames=4, faults=faults)
    final = session.run()
    summary, _, _, _ = read(tmp_path / "s.h5")
    assert final["status"] == summary["status"] == "failed"
    assert "bad frames in a row" in summary["reason"] and "non-finite" in summary["reason"]
    assert final["counts"]["errors"] == 3


def test_one_bad_frame_is_retried_and_the_survey_goes_on(tmp_path, classifier):
    session = make_session(tmp_path, classifier, frames=3, confidence=0.0, max_set_size=10,
                           faults=FaultSpec.parse("nan@2"))
    session.run()
    summary, records, _, _ = read(tmp_path / "s.h5")
    assert summary["frames"] == 3 and summary["status"] == "completed"
    assert np.all([r.route == "confident" for r in records])


def test_hunt_spirals_out_until_n_good_frames_of_the_target_are_recorded(tmp_path,
                                                                          classifier):
    broker, seen, stop = ApprovalBroker(), [], threading.Event()
    decisions = [{"decision": "skip", "operator": "ana", "note": ""},
                 {"decision": "relabel", "label": "Tips", "operator": "ana", "note": ""}]
    answer_with(broker, decisions, seen, stop)
    session = make_session(tmp_path, classifier, objective="hunt:Tips:2", frames=20,
                           strategy="spiral",
                           approve="all", thresholds={"min_sharpness": 0.0, "min_snr": 0.0,
                                                      "max_drift_px": 1e9})
    final = session.run(broker=broker)
    stop.set()
    summary, records, _, _ = read(tmp_path / "s.h5")
    assert final["counts"]["hits"] == 2 and summary["frames"] == 3
    assert "hunt complete" in summary["reason"]
    xy = [(r.position.x, r.position.y) for r in records]
    start = xy[0]
    assert xy[1] == pytest.approx((start[0] + 20e-6, start[1]))      # first spiral step
    assert xy[2] == pytest.approx((start[0] + 20e-6, start[1] + 20e-6))


def test_terminal_front_end_answers_the_broker_from_the_prompt(tmp_path, classifier):
    import io

    from rich.console import Console

    from agent.terminal_approval import TerminalApprover

    broker = ApprovalBroker()
    screen = io.StringIO()
    answers = io.StringIO("relabel\nPowder\nfine grains\n" + "approve\n\n" * 5)
    approver = TerminalApprover(broker, Console(file=screen, width=120), operator="cli-user",
                                stream=answers).start()
    session = make_session(tmp_path, classifier, frames=2, approve="all")
    session.run(broker=broker)
    approver.stop()
    _, records, _, _ = read(tmp_path / "s.h5")
    assert records[0].label == "Powder" and records[0].human.note == "fine grains"
    assert records[0].human.operator == "cli-user"
    assert records[1].human.decision == "approve"
    assert "approve will record this frame as" in screen.getvalue()


OOD = {"score": 12.5, "threshold": 7.0, "unknown": True, "method": "mahalanobis"}


class OodFlaggingClassifier:
    """The test classifier with an out-of-distribution test that flags the calls `flagged`
    picks (by call index), as a checkpoint with an OOD fit would flag unfamiliar frames."""

    def __init__(self, inner: Classifier, flagged) -> None:
        self.inner, self.flagged, self.calls = inner, flagged, 0
        self.class_names = inner.class_names

    def classify(self, images, lmm_labels=None, imaging=None):
        predictions = self.inner.classify(images, lmm_labels=lmm_labels, imaging=imaging)
        for prediction in predictions:
            prediction.ood = dict(OOD) if self.flagged(self.calls) else None
            self.calls += 1
        return predictions


def test_frames_flagged_unknown_are_recorded_as_unknown_and_reported(tmp_path, classifier):
    import io

    from rich.console import Console
    from typer.testing import CliRunner

    from workflows.cli.app import app
    from workflows.cli.cmd_run import _summary_table
    from workflows.report.session_report import build_report

    flagging = OodFlaggingClassifier(classifier, flagged=lambda call: call % 2 == 0)
    session = make_session(tmp_path, flagging, frames=4, confidence=0.0, max_set_size=10,
                           thresholds={"min_sharpness": 0.0, "min_snr": 0.0,
                                       "max_drift_px": 1e9})
    session.run()
    session.close()
    summary, records, truths, prov = read(tmp_path / "s.h5")
    assert [(r.route, r.label) for r in records[::2]] == [("unknown", "unknown")] * 2
    assert [r.route for r in records[1::2]] == ["confident"] * 2
    assert all(r.prediction.ood.model_dump() == OOD for r in records[::2])
    assert all(r.prediction.label in SEM_CLASSES for r in records)
    assert summary["route_counts"]["unknown"] == summary["label_counts"]["unknown"] == 2
    # unknown is never right where the truth is one of the model's classes
    assert all(t["label"] in SEM_CLASSES for t in truths[::2])
    right = sum(r.label == t["label"] for r, t in zip(records, truths, strict=True))
    assert summary["accuracy"] == pytest.approx(right / 4) and right <= 2
    assert prov["policy"]["reject_unknown"] is True

    inspected = CliRunner().invoke(app, ["inspect", str(tmp_path / "s.h5")])
    assert inspected.exit_code == 0, inspected.output
    assert "unknown: 2" in inspected.stdout
    screen = io.StringIO()
    Console(file=screen, width=200).print(_summary_table(str(tmp_path / "s.h5")))
    assert "unknown: 2" in screen.getvalue()
    page = build_report(tmp_path / "s.h5", tmp_path / "report")
    assert "<td>unknown</td><td>2</td>" in page.read_text(encoding="utf-8")
    assert (page.parent / "funnel.png").exists() and 'class="mosaic"' in page.read_text()


def test_an_unknown_frame_is_proposed_as_unknown_and_a_human_accepts_or_relabels_it(
        tmp_path, classifier):
    broker, seen, stop = ApprovalBroker(), [], threading.Event()
    decisions = [{"decision": "approve", "operator": "ana", "note": ""},
                 {"decision": "relabel", "label": "Tips", "operator": "ana", "note": ""}]
    answer_with(broker, decisions, seen, stop)
    flagging = OodFlaggingClassifier(classifier, flagged=lambda call: True)
    session = make_session(tmp_path, flagging, frames=2, approve="uncertain",
                           thresholds={"min_sharpness": 0.0, "min_snr": 0.0,
                                       "max_drift_px": 1e9})
    session.run(broker=broker)
    stop.set()
    _, records, _, _ = read(tmp_path / "s.h5")
    assert [s.proposal for s in seen] == ["unknown"] * 2
    assert seen[0].proposal_source == "ood" and "out-of-distribution" in seen[0].reason
    assert [(r.route, r.label) for r in records] == [("human", "unknown"),
                                                           ("human", "Tips")]
    assert records[0].human.proposal == "unknown" and not records[0].human.changed
    view = view_of(seen[0], list(SEM_CLASSES))       # the web page offers unknown and classes
    assert view["proposal"] == "unknown" and view["class_names"] == [*SEM_CLASSES, "unknown"]


def test_a_session_stopped_while_a_human_was_asked_asks_again_when_resumed(tmp_path,
                                                                           classifier):
    """The pending request goes through the checkpoint typed; the decision that answers it
    after the restart is the one recorded, once."""
    first = make_session(tmp_path, classifier, frames=2, approve="all")
    with pytest.raises(ApprovalUnavailable, match="waits for a human decision"):
        first.run()                                       # nobody to ask: stops, asked
    first.close()
    broker, seen, stop = ApprovalBroker(), [], threading.Event()
    answer_with(broker, [{"decision": "relabel", "label": "Tips", "operator": "ana"},
                         {"decision": "skip", "operator": "ben"}], seen, stop)
    again = Session(first.config, SessionParts(
        GuardedMicroscope(TwinMicroscope(seed=0), SafetyEnvelope()), classifier,
        survey_positions=first.parts.survey_positions))
    final = again.run(broker=broker)
    stop.set()
    again.close()
    summary, records, _, _ = read(tmp_path / "s.h5")
    assert final["status"] == "completed" and summary["frames"] == 2
    assert all(isinstance(request, LabelRequest) for request in seen) and len(seen) == 2
    assert seen[0].record.frame_id == records[0].frame_id
    assert [(r.human.decision, r.human.operator, r.label) for r in records] == [
        ("relabel", "ana", "Tips"), ("skip", "ben", None)]
