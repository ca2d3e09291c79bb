"""Routing policy, frame-quality measures and objectives: the agent's small pure parts."""

from __future__ import annotations

import numpy as np
import pytest

from agent.objectives import (
    ObjectiveError,
    grid_positions,
    parse_objective,
    spiral_offset,
    spread,
)
from agent.policy import RoutePolicy, decide
from agent.quality import QualityThresholds, assess, drift_px, sharpness, snr
from instruments.devices.frame import ImagingSettings
from instruments.session_file.decision_record import (
    DecisionRecord,
    OodVerdict,
    PredictionRecord,
    Proposal,
    QualityRecord,
    RescanRecord,
)
from twins.microscope import TwinMicroscope

BUDGETS = {"rescans": 10, "adjudications": 10, "tokens": 1000}
FRESH = {"rescans": 0, "adjudications": 0, "tokens": 0}
GOOD = QualityRecord(ok=True)
POOR = QualityRecord(ok=False)


OOD = {"score": 9.0, "threshold": 4.0, "unknown": True, "method": "mahalanobis"}


def prediction(p: float, set_size: int = 1) -> PredictionRecord:
    return PredictionRecord(confidence=p, conformal_set=["A", "B", "C"][:set_size], label="A")


def unknown(p: float) -> PredictionRecord:
    """A prediction the classifier's out-of-distribution test flagged."""
    return prediction(p).model_copy(update={"ood": OodVerdict(**OOD)})


ROUTE_CASES = [
    (prediction(0.95), GOOD, 0, FRESH, "none", "record"),
    (prediction(0.95), POOR, 0, FRESH, "none", "record"),        # confident is enough
    (prediction(0.95, 2), GOOD, 0, FRESH, "none", "adjudicate"),  # set too large
    (prediction(0.5), POOR, 0, FRESH, "none", "rescan"),
    (prediction(0.5), POOR, 2, FRESH, "none", "adjudicate"),     # R rescans used
    (prediction(0.5), POOR, 0, {**FRESH, "rescans": 10}, "none", "adjudicate"),
    (prediction(0.5), GOOD, 0, FRESH, "none", "adjudicate"),
    (prediction(0.5), GOOD, 0, {**FRESH, "adjudications": 10}, "none", "record"),
    (prediction(0.5), GOOD, 0, {**FRESH, "tokens": 1000}, "none", "record"),
    (prediction(0.5), GOOD, 0, {**FRESH, "adjudications": 10}, "uncertain", "approve"),
    (prediction(0.99), GOOD, 0, FRESH, "all", "approve"),
]


@pytest.mark.parametrize("pred,quality,rescans_done,used,approve,expected", ROUTE_CASES)
def test_route_policy(pred, quality, rescans_done, used, approve, expected):
    policy = RoutePolicy(confidence=0.9, max_set_size=1, max_rescans=2, approve=approve)
    assert decide(policy, pred, quality, rescans_done, BUDGETS, used) == expected


@pytest.mark.parametrize("ood", [None, {**OOD, "score": 1.0, "unknown": False}])
@pytest.mark.parametrize("pred,quality,rescans_done,used,approve,expected", ROUTE_CASES)
def test_an_in_distribution_or_unscored_prediction_routes_as_before(
        pred, quality, rescans_done, used, approve, expected, ood):
    policy = RoutePolicy(confidence=0.9, max_set_size=1, max_rescans=2, approve=approve)
    scored = pred.model_copy(update={"ood": ood and OodVerdict(**ood)})  # None: no OOD fit
    assert decide(policy, scored, quality, rescans_done, BUDGETS, used) == expected


@pytest.mark.parametrize("pred,quality,rescans_done,approve,expected", [
    (unknown(0.99), GOOD, 0, "none", "record"),      # confident, yet not taken for a class
    (unknown(0.5), GOOD, 0, "none", "record"),       # never adjudicated as a class
    (unknown(0.5), GOOD, 0, "uncertain", "approve"),
    (unknown(0.99), GOOD, 0, "uncertain", "approve"),
    (unknown(0.99), GOOD, 0, "all", "approve"),
    (unknown(0.99), POOR, 0, "none", "rescan"),      # a better frame may show a known class
    (unknown(0.5), POOR, 2, "none", "record"),       # rescans spent: recorded as unknown
    (unknown(0.5), POOR, 2, "uncertain", "approve"),
])
def test_an_unknown_frame_is_recorded_or_approved_never_adjudicated(pred, quality,
                                                                      rescans_done, approve,
                                                                      expected):
    policy = RoutePolicy(confidence=0.9, max_rescans=2, approve=approve)
    assert not policy.is_confident(pred)
    assert decide(policy, pred, quality, rescans_done, BUDGETS, FRESH) == expected


def test_an_unknown_frame_of_good_quality_gets_no_closer_look():
    policy = RoutePolicy(zoom_unsure=True)
    assert decide(policy, unknown(0.5), GOOD, 0, BUDGETS, FRESH) == "record"


def test_with_reject_unknown_off_the_ood_flag_is_ignored():
    policy = RoutePolicy(reject_unknown=False)
    assert not policy.is_unknown(unknown(0.99)) and policy.is_confident(unknown(0.99))
    assert decide(policy, unknown(0.99), GOOD, 0, BUDGETS, FRESH) == "record"
    assert decide(policy, unknown(0.5), GOOD, 0, BUDGETS, FRESH) == "adjudicate"


def _classified(pred: PredictionRecord, rescans: int = 0) -> dict:
    """The state after classifying one frame of good quality."""
    current = DecisionRecord(prediction=pred, quality=GOOD, rescans=[RescanRecord()] * rescans)
    return {"current": current, "budgets": BUDGETS, "used": FRESH}


def _route_once(pred: PredictionRecord, approve: str = "none", rescans: int = 0,
                reject_unknown: bool = True) -> tuple[str, DecisionRecord]:
    """Where the graph goes after classifying one frame, and the record it stores if there."""
    from types import SimpleNamespace

    from agent.nodes.record import final_record
    from agent.policy import follow_ruling, rule_classified

    policy = RoutePolicy(approve=approve, reject_unknown=reject_unknown)
    state = _classified(pred, rescans)
    state["ruling"] = rule_classified(policy, state["current"], BUDGETS, FRESH)
    ctx = SimpleNamespace(policy=policy, acquirer=SimpleNamespace(tiles=None))
    return follow_ruling(state), final_record(ctx, {**state, "objective": {"kind": "survey"}})


def test_an_unknown_frame_is_recorded_under_route_and_label_unknown():
    step, record = _route_once(unknown(0.99))
    assert step == "record"
    assert (record.route, record.label) == ("unknown", "unknown")
    _, rescanned = _route_once(unknown(0.99), rescans=1)
    assert (rescanned.route, rescanned.label) == ("unknown", "unknown")
    _, ignored = _route_once(unknown(0.99), reject_unknown=False)
    assert (ignored.route, ignored.label) == ("confident", "A")


def test_an_unknown_frame_is_proposed_to_a_human_as_unknown_from_the_ood_test():
    from agent.policy import verdict

    for approve in ("uncertain", "all"):
        step, _ = _route_once(unknown(0.99), approve=approve)
        assert step == "approve"
        assert verdict(RoutePolicy(approve=approve), unknown(0.99)) == Proposal(
            label="unknown", source="ood")
    step, _ = _route_once(prediction(0.99), approve="all")
    assert step == "approve"
    assert verdict(RoutePolicy(approve="all"), prediction(0.99)).model_dump() == {
        "label": "A", "source": "classifier"}


def test_a_human_may_label_a_frame_unknown_or_one_of_the_classes():
    from agent.approval_request import DecisionRefused, LabelRequest, MoveRequest
    from agent.nodes.approve import human_labels

    labels = human_labels(["Films", "Tips"])
    assert labels == ["Films", "Tips", "unknown"]
    request = LabelRequest(record=DecisionRecord(), labels=tuple(labels))
    for label in labels:
        assert request.accept({"decision": "relabel", "label": label}).label == label
    with pytest.raises(DecisionRefused, match="relabel needs a label"):
        request.accept({"decision": "relabel", "label": "Dragons"})
    with pytest.raises(DecisionRefused, match="not a decision"):
        request.accept({"decision": "bogus"})
    with pytest.raises(DecisionRefused, match="one of"):   # a move is approved or skipped
        MoveRequest(target={"x": 0.0}).accept({"decision": "rescan"})


def test_zoom_unsure_takes_one_closer_look_before_adjudication():
    policy = RoutePolicy(zoom_unsure=True)
    assert decide(policy, prediction(0.5), GOOD, 0, BUDGETS, FRESH) == "rescan"
    assert decide(policy, prediction(0.5), GOOD, 1, BUDGETS, FRESH) == "adjudicate"
    assert decide(policy, prediction(0.95), GOOD, 0, BUDGETS, FRESH) == "record"


@pytest.fixture(scope="module")
def twin_tile():
    twin = TwinMicroscope(seed=0)
    twin.move_stage(twin.specimen.survey_centres(20e-6)[0])
    return twin


def frame(twin, **settings):
    twin.set_imaging(ImagingSettings(pixels=256, **settings))
    return twin.acquire().image


def test_snr_rises_with_dwell_on_the_same_tile(twin_tile):
    noisy, clean = frame(twin_tile, dwell=1e-7), frame(twin_tile, dwell=3e-5)
    assert snr(noisy) < snr(clean)
    thresholds = QualityThresholds(min_sharpness=0.0, min_snr=snr(noisy) * 1.5)
    assert assess(noisy, thresholds)["failures"] == ["noise"]
    assert assess(clean, thresholds)["ok"]


def test_sharpness_falls_with_defocus(twin_tile):
    focused = frame(twin_tile, fov=4e-6, dwell=1e-5)
    blurred = frame(twin_tile, fov=4e-6, dwell=1e-5, defocus=45e-6)
    assert sharpness(blurred) < 0.8 * sharpness(focused)


def test_drift_between_two_frames_of_the_same_place_is_measured_in_pixels(twin_tile):
    image = frame(twin_tile, dwell=1e-5)
    moved = np.roll(image, shift=(3, 4), axis=(0, 1))
    assert drift_px(image, moved) == pytest.approx(5.0, abs=0.5)
    assert drift_px(image, image) == pytest.approx(0.0, abs=0.3)
    quality = assess(moved, QualityThresholds(0.0, 0.0, max_drift_px=2.0), reference=image)
    assert quality["failures"] == ["drift"]


def test_objectives_parse():
    assert parse_objective("survey")["kind"] == "survey"
    hunt = parse_objective("hunt:Tips,Fibres:3", ["Tips", "Fibres", "Powder"])
    assert hunt == {"kind": "hunt", "classes": ["Tips", "Fibres"], "target": 3}
    assert parse_objective("hunt:Tips")["target"] == 5
    assert parse_objective("explore")["kind"] == "explore"
    for bad in ("explorer", "hunt:", "hunt:Tips:x", "hunt:Tips:0"):
        with pytest.raises(ObjectiveError):
            parse_objective(bad)
    with pytest.raises(ObjectiveError, match="unknown class Dragons; the model knows Tips$"):
        parse_objective("hunt:Dragons", ["Tips"])


def test_spiral_visits_each_cell_once_moving_one_step_at_a_time():
    cells = [spiral_offset(i) for i in range(81)]
    assert len(set(cells)) == 81 and max(max(map(abs, c)) for c in cells) == 4
    steps = [abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in zip(cells, cells[1:], strict=False)]
    assert set(steps) == {1}


def test_grid_and_spread():
    grid = grid_positions(((0.0, 100e-6), (0.0, 60e-6)), 20e-6)
    assert len(grid) == 15 and grid[0]["x"] == pytest.approx(10e-6)
    assert grid[5]["row"] == 1 and grid[5]["col"] == 0
    assert len(spread(grid, 4)) == 4 and spread(grid, 40) == grid


def _adjudicate_once(before: str, after: str, answer: str, approve: str = "none") -> dict:
    """Run the adjudicate node on one frame: the classifier says `before`, the adjudicator
    `answer`, and the classifier given that answer says `after`."""
    from types import SimpleNamespace

    from agent.adjudication.base import Answer, Verdict
    from agent.nodes import adjudicate
    from agent.policy import follow_ruling

    def classified(label: str):
        return SimpleNamespace(label=label, as_record=lambda: {"label": label})

    class Classifier:
        def classify(self, images, lmm_labels=None):
            return [classified(after if lmm_labels else before)]

    class Adjudicator:
        def adjudicate(self, image, demos, class_names, embedding=None):
            return Verdict("stub", Answer(answer, 0.9, "looks like it"), [], "hash")

    frame = SimpleNamespace(frame_id="f1", image=np.zeros((8, 8)))
    ctx = SimpleNamespace(scratch=SimpleNamespace(get=lambda _: frame),
                          classifier=Classifier(), adjudicator=Adjudicator(), bank=None,
                          class_names=["Films", "Nanowires", "Tips"],
                          policy=RoutePolicy(approve=approve))
    current = DecisionRecord(frame_id="f1", prediction=PredictionRecord(label=before))
    out = adjudicate.make(ctx)({"current": current, "embedding": [0.0, 1.0], "used": {}})
    return {**out, "next": follow_ruling(out)}


def test_an_answer_the_classifier_already_gave_is_not_overturned_by_the_reclassification():
    out = _adjudicate_once(before="Films", after="Nanowires", answer="Films")
    assert (out["ruling"]["route"], out["current"].label) == ("adjudicated", "Films")
    assert out["current"].adjudication.reclassified == PredictionRecord(label="Nanowires")
    assert out["next"] == "record"
    attended = _adjudicate_once("Films", "Nanowires", "Films", approve="uncertain")
    assert attended["next"] == "approve"
    assert (attended["ruling"]["label"], attended["ruling"]["source"]) == ("Films",
                                                                          "adjudicated")


def test_a_reclassification_following_the_answer_is_adjudicated_one_resisting_it_contested():
    follows = _adjudicate_once(before="Tips", after="Films", answer="Films")
    assert (follows["ruling"]["route"], follows["current"].label) == ("adjudicated", "Films")
    resists = _adjudicate_once(before="Tips", after="Tips", answer="Films")
    assert (resists["ruling"]["route"], resists["current"].label) == ("contested", "Tips")
    assert resists["used"]["adjudications"] == 1


def test_a_learning_session_asks_every_frame_until_two_classes_have_enough_examples():
    from agent.policy import rule_classified

    policy = RoutePolicy(approve="uncertain", learn_min=3)
    record = DecisionRecord(prediction=prediction(0.99), quality=GOOD)      # read as A
    for taught in ({}, {"A": 5}, {"A": 5, "B": 2}):
        ruling = rule_classified(policy, record, BUDGETS, FRESH, taught=taught)
        assert ruling["step"] == "approve" and ruling["source"] == "learning"
        assert ruling["label"] == ("A" if "A" in taught else "unknown")
    ready = rule_classified(policy, record, BUDGETS, FRESH, taught={"A": 3, "B": 3})
    assert (ready["step"], ready["route"]) == ("record", "confident")


@pytest.mark.parametrize("taught,step", [
    ({"A": 3, "B": 3, "C": 1}, "record"),     # C, named late, holds back none of A's frames
    ({"A": 2, "B": 3, "C": 3}, "approve"),    # ... but every frame read as its own class
])
def test_a_class_short_of_examples_holds_back_only_the_frames_read_as_it(taught, step):
    from agent.policy import rule_classified

    policy = RoutePolicy(approve="uncertain", learn_min=3)
    record = DecisionRecord(prediction=prediction(0.99), quality=GOOD)      # read as A
    ruling = rule_classified(policy, record, BUDGETS, FRESH, taught=taught)
    assert (ruling["step"], ruling["label"]) == (step, "A")


def test_a_taught_head_decides_alone_a_single_class_set_whatever_its_probability():
    policy = RoutePolicy(approve="uncertain", learn_min=3, confidence=0.9)
    assert decide(policy, prediction(0.4), GOOD, 0, BUDGETS, FRESH) == "record"
    assert decide(policy, prediction(0.99, 2), GOOD, 0, BUDGETS, FRESH) == "approve"
    assert decide(policy, unknown(0.99), GOOD, 0, BUDGETS, FRESH) == "approve"


def test_a_learning_request_takes_a_new_class_name_others_refuse_it():
    from agent.approval_request import DecisionRefused, LabelRequest

    request = LabelRequest(record=DecisionRecord(), labels=("A", "unknown"), new_labels=True)
    answer = request.accept({"decision": "relabel", "label": "Graphene"})
    assert answer.label == "Graphene"
    with pytest.raises(DecisionRefused, match="relabel needs a label"):
        request.accept({"decision": "relabel"})
    with pytest.raises(DecisionRefused, match="relabel needs a label from"):
        request.model_copy(update={"new_labels": False}).accept(
            {"decision": "relabel", "label": "Graphene"})


@pytest.mark.parametrize("beam_current, label", [
    (100e-12, "A"),      # 1250 electrons a pixel: a smooth specimen, read as the classifier does
    (1e-16, None),       # 0.001 electrons a pixel: no signal, no class
])
def test_a_frame_without_structure_loses_its_label_only_when_the_beam_starves_it(
        beam_current, label):
    from agent.policy import rule_classified

    flat = QualityRecord(ok=False, snr=0.0, failures=["noise"])
    record = DecisionRecord(prediction=prediction(0.6), quality=flat,
                            settings=ImagingSettings(pixels=128, dwell=2e-6,
                                                     beam_current=beam_current),
                            rescans=[RescanRecord()] * 2)
    spent = {**FRESH, "adjudications": 10}            # rescans done, nothing else to ask
    ruling = rule_classified(RoutePolicy(max_rescans=2), record, BUDGETS, spent)
    assert (ruling["step"], ruling["route"], ruling["label"]) == \
        ("record", "quality_failed", label)
