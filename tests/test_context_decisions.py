"""Decisions with context: the relooks (the same field with its centre shifted), the zoom-out
(a wider field at the same centre) and the neighbourhood (the sure frames of the same region)
fix a region the classifier reads as another class at the survey's scale, and never change a
region it reads right and surely; every look goes through the safety envelope.

The classifier here is scripted as the bundled model fails on twin surveys: a Films region read
as Porous_Sponge at the survey's 20 um field, and read right in a wider one. It knows which
region and field a frame shows from the twin's record of what it rendered (by the frame's
pixels), and gives one embedding per region (so frames of a region are alike)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from rendering_twin import TILE_FOV, RenderingTwin, digest, region_tiles

from agent import context_evidence
from agent.config import RunConfig
from agent.policy import RoutePolicy, Ruling, rule_in_context
from agent.session import Session, SessionParts
from instruments.devices.dose_ledger import DoseLedger
from instruments.devices.errors import InstrumentUnreachable
from instruments.devices.frame import ImagingSettings
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope, dose_per_nm2
from instruments.session_file.decision_record import (
    ContextRecord,
    DecisionRecord,
    LookRecord,
    NeighbourRecord,
    OodVerdict,
    PredictionRecord,
    QualityRecord,
    ZoomOutRecord,
)
from instruments.session_file.reader import SessionReader
from models.prediction import Prediction
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope

FILMS, POROUS = "Films_Coated_Surface", "Porous_Sponge"


Script = Callable[[dict[str, Any]], tuple[str, float]]


class ScriptedClassifier:
    """`script(shown)` -> (label, probability) for a frame; the rest of the probability goes
    to the true class when the label is another, else is spread over the other classes."""

    class_names = list(SEM_CLASSES)

    def __init__(self, twin: RenderingTwin, script: Script) -> None:
        self.twin, self.script = twin, script

    def classify(self, images, lmm_labels=None, imaging=None) -> list[Prediction]:
        out = []
        for image in images:
            shown = self.twin.shown[digest(image)]
            label, p = self.script(shown)
            probabilities = np.full(len(SEM_CLASSES), 0.0)
            if label != shown["label"]:
                probabilities[SEM_CLASSES.index(shown["label"])] = 1.0 - p - 0.01
                probabilities += 0.01 / len(SEM_CLASSES)
            else:
                probabilities += (1.0 - p) / (len(SEM_CLASSES) - 1)
            probabilities[SEM_CLASSES.index(label)] = p
            region_rng = np.random.default_rng(shown["region"])
            out.append(Prediction(
                class_names=self.class_names, probabilities=probabilities,
                conformal_set=[label] if p >= 0.9 else [label, shown["label"]],
                embedding=region_rng.normal(size=32).astype(np.float32)))
        return out


def run(tmp_path, script: Script, positions: list[dict[str, Any]],
        envelope: SafetyEnvelope | None = None, twin: RenderingTwin | None = None,
        **config: Any) -> tuple[list[DecisionRecord], dict[str, Any], RenderingTwin]:
    twin = twin or RenderingTwin(seed=0)
    cfg = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                    state_dir=str(tmp_path / "state"), frames=len(positions),
                    imaging={"fov": TILE_FOV, "pixels": 64, "dwell": 2e-6}, max_rescans=0,
                    budgets={"adjudications": 0},
                    unsure_views=1,    # the script reads frames as taken (by their pixels)
                    **{"relook": False, **config})   # context levers: those a test turns on
    guarded = GuardedMicroscope(twin, envelope or SafetyEnvelope())
    session = Session(cfg, SessionParts(guarded, ScriptedClassifier(twin, script),
                                        survey_positions=positions))
    final = session.run()
    session.close()
    with SessionReader(cfg.out) as reader:
        records = reader.records()
    return records, {**final, "guard": guarded.counters()}, twin


def swapped_at_survey_scale(p: float) -> Script:
    """Films read as Porous (probability `p`) at the survey's field, right when wider;
    every other region read right and surely."""
    def script(shown: dict[str, Any]) -> tuple[str, float]:
        if shown["label"] == FILMS and shown["fov"] <= TILE_FOV:
            return POROUS, p
        return shown["label"], 0.97
    return script


@pytest.fixture(scope="module")
def films_tiles() -> list[dict[str, Any]]:
    return region_tiles(TwinMicroscope(seed=0), FILMS, 3)


def test_a_zoom_out_fixes_a_region_read_as_another_class_at_the_survey_scale(
        tmp_path, films_tiles):
    records, final, twin = run(tmp_path, swapped_at_survey_scale(0.6), films_tiles,
                               zoom_out=True, pipeline=False)
    assert [r.classifier_label for r in records] == [POROUS] * 3
    assert [(r.label, r.route) for r in records] == [(FILMS, "zoomed_out")] * 3
    for record in records:
        zoom = record.context.zoom_out
        assert zoom.settings.fov == pytest.approx(2 * TILE_FOV)   # a wider field, same centre
        assert zoom.prediction.label == FILMS and zoom.error is None
        assert record.context.fused.confidence >= 0.9
    assert final["used"]["zoom_outs"] == 3
    assert final["guard"]["frames"] == 6                           # the guard booked them
    wide = [s for s in twin.shown.values() if s["fov"] > TILE_FOV]
    assert len(wide) == 3 and {s["label"] for s in wide} == {FILMS}


def test_without_the_zoom_out_the_swapped_region_stays_wrong(tmp_path, films_tiles):
    records, final, _ = run(tmp_path, swapped_at_survey_scale(0.6), films_tiles)
    assert [(r.label, r.route) for r in records] == [(POROUS, "unresolved")] * 3
    assert all(r.context is None for r in records) and "zoom_outs" not in final["used"]


def test_the_neighbourhood_fixes_the_tiles_of_a_region_read_surely_once(tmp_path, films_tiles):
    first = films_tiles[0]

    def script(shown: dict[str, Any]) -> tuple[str, float]:   # the first tile is read right
        if (shown["x"], shown["y"]) == (first["x"], first["y"]):
            return FILMS, 0.97
        return swapped_at_survey_scale(0.6)(shown)

    records, _, _ = run(tmp_path, script, films_tiles, neighbourhood=True)
    assert [r.classifier_label for r in records] == [FILMS, POROUS, POROUS]
    assert [(r.label, r.route) for r in records] == [
        (FILMS, "confident"), (FILMS, "neighbourhood"), (FILMS, "neighbourhood")]
    assert [n.frame_id for n in records[1].context.neighbours] == [records[0].frame_id]
    assert all(r.context.zoom_out is None for r in records[1:])


def test_context_never_changes_a_region_read_right_and_surely(tmp_path, films_tiles):
    """Films read right and surely at the survey's field, as Porous in a wider one, next to
    a Porous region read surely: no zoom-out is taken, no neighbour of the other region is
    pooled, every tile keeps its label."""
    porous = region_tiles(TwinMicroscope(seed=0), POROUS, 2)

    def script(shown: dict[str, Any]) -> tuple[str, float]:
        if shown["label"] == FILMS and shown["fov"] > TILE_FOV:
            return POROUS, 0.99
        return shown["label"], 0.97

    records, final, twin = run(tmp_path, script, [*porous, *films_tiles], zoom_out=True,
                               neighbourhood=True)
    assert [(r.label, r.route) for r in records] == [(POROUS, "confident")] * 2 + [
        (FILMS, "confident")] * 3
    assert final["used"].get("zoom_outs", 0) == 0
    assert all(s["fov"] == TILE_FOV for s in twin.shown.values())
    assert all(r.context is None or all(n.label == FILMS for n in r.context.neighbours)
               for r in records[2:])


UNSURE = PredictionRecord(label=POROUS, confidence=0.6, conformal_set=[POROUS, FILMS],
                          probabilities={POROUS: 0.6, FILMS: 0.4})
SURE = UNSURE.model_copy(update={"label": FILMS, "confidence": 0.97, "conformal_set": [FILMS],
                                 "probabilities": {POROUS: 0.03, FILMS: 0.97}})
GOOD = QualityRecord(ok=True)
STANDING = Ruling(step="adjudicate", label=POROUS, source="classifier", route="unresolved")


def _record(prediction: PredictionRecord, zoom: PredictionRecord | None = None,
            quality: QualityRecord = GOOD) -> DecisionRecord:
    record = DecisionRecord(prediction=prediction, quality=quality)
    if zoom is None:
        return record
    record = record.model_copy(update={"context": ContextRecord(
        zoom_out=ZoomOutRecord(prediction=zoom))})
    return record.model_copy(update={"context": record.context.model_copy(
        update={"fused": context_evidence.fused(record, [])})})


@pytest.mark.parametrize("policy,record,used,step,label,route", [
    (RoutePolicy(zoom_out=True), _record(UNSURE), {}, "zoom_out", POROUS, None),
    (RoutePolicy(zoom_out=True), _record(UNSURE), {"zoom_outs": 5}, "adjudicate", POROUS,
     "unresolved"),                                               # no budget left
    (RoutePolicy(), _record(UNSURE), {}, "adjudicate", POROUS, "unresolved"),   # off
    (RoutePolicy(zoom_out=True), _record(UNSURE, quality=QualityRecord(ok=False)), {},
     "adjudicate", POROUS, "unresolved"),                         # poor frames rescan first
    (RoutePolicy(zoom_out=True), _record(UNSURE, zoom=SURE), {}, "record", FILMS,
     "zoomed_out"),
    (RoutePolicy(zoom_out=True), _record(UNSURE, zoom=UNSURE.model_copy(update={
        "probabilities": {POROUS: 0.3, FILMS: 0.7}})), {}, "adjudicate", FILMS, "unresolved"),
    (RoutePolicy(zoom_out=True, approve="all"), _record(UNSURE), {}, "adjudicate", POROUS,
     "unresolved"),
])
def test_the_policy_rules_on_the_pooled_context(policy, record, used, step, label, route):
    ruling = rule_in_context(policy, record, STANDING, {"zoom_outs": 5}, used)
    assert (ruling["step"], ruling["label"], ruling["route"]) == (step, label, route)


def test_a_sure_frame_is_never_ruled_on_its_context():
    record = _record(SURE, zoom=UNSURE.model_copy(update={"probabilities": {POROUS: 0.999,
                                                                             FILMS: 0.001}}))
    standing = Ruling(step="record", label=FILMS, source="classifier", route="confident")
    assert rule_in_context(RoutePolicy(zoom_out=True, neighbourhood=True), record, standing,
                           {"zoom_outs": 5}, {}) == standing


# --- a learning session: the frames a human named inform their region (rule_on_taught)

LEARNING = RoutePolicy(approve="uncertain", learn_min=3, neighbourhood=True)
HEAD_SAYS_POROUS = Ruling(step="record", label=POROUS, source="classifier", route="confident")
SURE_POROUS = SURE.model_copy(update={"label": POROUS, "conformal_set": [POROUS]})


def _taught(*labels: str, prediction: PredictionRecord = SURE_POROUS,
            quality: QualityRecord = GOOD) -> DecisionRecord:
    near = [NeighbourRecord(frame_id=f"f{i}", label=label, distance_m=40e-6, similarity=0.8)
            for i, label in enumerate(labels)]
    return DecisionRecord(prediction=prediction, quality=quality,
                          context=ContextRecord(neighbours=near) if near else None)


@pytest.mark.parametrize("record,ruling,expected", [
    (_taught(FILMS, FILMS), HEAD_SAYS_POROUS, ("record", FILMS, "neighbourhood", "context")),
    (_taught(FILMS, POROUS), HEAD_SAYS_POROUS,
     ("approve", POROUS, None, "neighbours")),                  # disagree: the human is told
    (_taught(), HEAD_SAYS_POROUS, ("record", POROUS, "confident", "classifier")),  # none near
    (_taught(FILMS, prediction=UNSURE.model_copy(update={"ood": OodVerdict(
        score=9.0, threshold=1.0, unknown=True)})),
     Ruling(step="approve", label="unknown", source="ood", route="unknown"),
     ("approve", "unknown", "unknown", "ood")),                 # nothing overrides unknown
    (_taught(FILMS), Ruling(step="approve", label=POROUS, source="learning", route=None),
     ("record", FILMS, "neighbourhood", "context")),           # still learning: the region's
                                                               # answer decides, not the head
    (_taught(), Ruling(step="approve", label=POROUS, source="learning", route=None),
     ("approve", POROUS, None, "learning")),                   # still learning, none near
    (_taught(FILMS, quality=QualityRecord(ok=False)), HEAD_SAYS_POROUS,
     ("record", POROUS, "confident", "classifier")),
])
def test_a_learning_session_records_a_frame_under_the_label_its_region_was_taught(
        record, ruling, expected):
    out = rule_in_context(LEARNING, record, ruling, {}, {})
    assert (out["step"], out["label"], out["route"], out["source"]) == expected


def test_taught_neighbours_are_compared_in_the_space_the_learner_gives():
    """Two frames 3 fields apart whose raw features are alike (cosine 0.99) but differ where
    the learned head's standardisation looks: neighbours in raw space, not in the head's."""
    first = DecisionRecord(frame_id="a", position={"x": 0.0, "y": 0.0},
                           settings={"fov": TILE_FOV}, prediction=SURE, quality=GOOD,
                           label=FILMS, route="human")
    memory = context_evidence.remembered([], first, [10.0, 10.0, 1.0], True,
                                         context_evidence.TAUGHT_FRAMES)
    here = first.model_copy(update={"frame_id": "b", "position": first.position.model_copy(
        update={"x": 3 * TILE_FOV})})
    embedding = [10.0, 10.0, -1.0]
    assert [n.label for _, n in context_evidence.neighbours(
        memory, here, embedding, context_evidence.TAUGHT_FRAMES)] == [FILMS]
    def centred(vectors: np.ndarray) -> np.ndarray:
        return vectors - np.array([10.0, 10.0, 0.0])

    assert context_evidence.neighbours(memory, here, embedding,
                                       context_evidence.TAUGHT_FRAMES, centred) == []
    far = here.model_copy(update={"position": first.position.model_copy(
        update={"x": 8 * TILE_FOV})})
    assert context_evidence.neighbours(memory, far, embedding,
                                       context_evidence.TAUGHT_FRAMES) == []


# --- relooks: the same field again, its centre shifted a quarter field along each diagonal

def read_wrong_at_the_tile_centres(tiles: list[dict[str, Any]], p: float = 0.6) -> Script:
    """Films read as Porous (probability `p`) at the tiles' own centres, right and surely
    anywhere else; every other region read right and surely."""
    centres = {(t["x"], t["y"]) for t in tiles}

    def script(shown: dict[str, Any]) -> tuple[str, float]:
        if shown["label"] == FILMS and (shown["x"], shown["y"]) in centres:
            return POROUS, p
        return shown["label"], 0.97
    return script


def test_relooks_fix_a_region_read_as_another_class_where_the_tiles_fell(tmp_path, films_tiles):
    records, final, twin = run(tmp_path, read_wrong_at_the_tile_centres(films_tiles),
                               films_tiles, relook=True)          # pipelined, as by default
    assert [r.classifier_label for r in records] == [POROUS] * 3
    assert [r.label for r in records] == [FILMS] * 3
    step = context_evidence.RELOOK_SHIFT * TILE_FOV
    for record, tile in zip(records, films_tiles, strict=True):
        looks = record.context.looks
        assert sorted((round((k.x - tile["x"]) / step), round((k.y - tile["y"]) / step))
                      for k in looks) == [(-1, -1), (-1, 1), (1, -1), (1, 1)]
        assert all(k.prediction.label == FILMS and k.error is None for k in looks)
        assert record.context.fused.label == FILMS and record.context.zoom_out is None
    assert final["used"]["relooks"] == 3
    assert final["guard"]["frames"] == 3 + 12                      # the guard booked them
    looked = [s for s in twin.shown.values()
              if (s["x"], s["y"]) not in {(t["x"], t["y"]) for t in films_tiles}]
    assert len(looked) == 12 and all(s["fov"] == TILE_FOV for s in looked)


def test_relooks_are_never_taken_of_a_frame_read_surely(tmp_path, films_tiles):
    records, final, twin = run(tmp_path, read_wrong_at_the_tile_centres(films_tiles, p=0.97),
                               films_tiles, relook=True)
    assert [(r.label, r.route) for r in records] == [(POROUS, "confident")] * 3
    assert "relooks" not in final["used"] and len(twin.shown) == 3


def test_a_look_outside_the_envelope_never_reaches_the_stage(tmp_path, films_tiles):
    """The stage's x range ends between the tile's centre and the looks to its right: those
    two are refused by the guard and recorded with why; the other two are taken."""
    tile = films_tiles[0]
    margin = context_evidence.RELOOK_SHIFT * TILE_FOV / 2
    envelope = SafetyEnvelope(stage_x=(-1e-3, tile["x"] + margin))
    records, final, twin = run(tmp_path, read_wrong_at_the_tile_centres([tile]), [tile],
                               envelope=envelope, relook=True)
    looks = records[0].context.looks
    refused = [k for k in looks if k.error is not None]
    assert len(refused) == 2 and all(k.x > tile["x"] and "SafetyRefused" in k.error
                                     and k.prediction is None for k in refused)
    assert all(s["x"] <= tile["x"] + margin for s in twin.shown.values())
    assert final["guard"]["frames"] == 1 + 2 and records[0].label == FILMS


def test_relooks_stop_at_the_sessions_dose_limit(tmp_path, films_tiles):
    """A total dose that allows the tile and two looks over it: the later looks are refused
    and nothing past the limit is exposed."""
    tile = films_tiles[0]
    per_frame = dose_per_nm2(ImagingSettings(fov=TILE_FOV, pixels=64, dwell=2e-6))
    envelope = SafetyEnvelope(max_dose_per_nm2_total=2.5 * per_frame)
    records, final, _ = run(tmp_path, read_wrong_at_the_tile_centres([tile]), [tile],
                            envelope=envelope, relook=True)
    looks = records[0].context.looks
    assert [k.error is None for k in looks].count(True) >= 1
    assert any(k.error and "dose" in k.error for k in looks)
    ledger = DoseLedger(final["guard"]["exposures"])
    assert ledger.peak(tile["x"], tile["y"], TILE_FOV) <= 2.5 * per_frame * (1 + 1e-9)


RELOOKED = UNSURE.model_copy(update={"probabilities": {POROUS: 0.05, FILMS: 0.95}})
LEANING_FILMS = UNSURE.model_copy(update={"label": FILMS, "probabilities": {POROUS: 0.3,
                                                                            FILMS: 0.7}})
PLACED = {"position": {"x": 0.0, "y": 0.0}, "settings": {"fov": TILE_FOV}}


def _relooked(prediction: PredictionRecord, look: PredictionRecord | None,
              quality: QualityRecord = GOOD) -> DecisionRecord:
    record = DecisionRecord(prediction=prediction, quality=quality, **PLACED)
    if look is None:
        return record
    record = record.model_copy(update={"context": ContextRecord(looks=[
        LookRecord(x=0.0, y=0.0, prediction=look)] * 4)})
    return record.model_copy(update={"context": record.context.model_copy(
        update={"fused": context_evidence.fused(record, [])})})


@pytest.mark.parametrize("policy,record,used,step,label,route", [
    (RoutePolicy(relook=True), _relooked(UNSURE, None), {}, "relook", POROUS, None),
    (RoutePolicy(relook=True, zoom_out=True), _relooked(UNSURE, None), {}, "relook", POROUS,
     None),                                                        # relooks come first
    (RoutePolicy(relook=True), _relooked(UNSURE, None), {"relooks": 5}, "adjudicate", POROUS,
     "unresolved"),                                                # no budget left
    (RoutePolicy(relook=True), _record(UNSURE), {}, "adjudicate", POROUS,
     "unresolved"),                                                # no stage position
    (RoutePolicy(relook=True), _relooked(UNSURE.model_copy(update={"confidence": 0.8}), None),
     {}, "adjudicate", POROUS, "unresolved"),                      # read above relook_below
    (RoutePolicy(relook=True, escalations_off=("relook",)), _relooked(UNSURE, None), {},
     "adjudicate", POROUS, "unresolved"),                          # off under a target risk
    (RoutePolicy(relook=True), _relooked(UNSURE, RELOOKED), {}, "adjudicate", FILMS,
     "unresolved"),                     # the looks' mean (0.84) names Films, not surely
    (RoutePolicy(relook=True), _relooked(LEANING_FILMS, SURE), {}, "record", FILMS,
     "relooked"),                       # frame and looks average to 0.92 Films: decided
    (RoutePolicy(relook=True, zoom_out=True), _relooked(UNSURE, RELOOKED), {}, "zoom_out",
     POROUS, None),                                                # then the zoom-out
])
def test_the_policy_rules_on_the_relooks(policy, record, used, step, label, route):
    ruling = rule_in_context(policy, record, STANDING, {"relooks": 5, "zoom_outs": 5}, used)
    assert (ruling["step"], ruling["label"], ruling["route"]) == (step, label, route)


def test_an_unsure_frame_kept_without_a_label_stays_so_after_its_context():
    """--unsure-label none: the looks' mean names a class without deciding the frame; the
    frame is still recorded with no label."""
    unlabelled = Ruling(step="record", label=None, source="classifier", route="unresolved")
    record = _relooked(UNSURE, RELOOKED)
    assert rule_in_context(RoutePolicy(relook=True, unsure_label="none"), record, unlabelled,
                           {"relooks": 5}, {}) == unlabelled


STAYED_POOR = Ruling(step="record", label=POROUS, source="classifier", route="quality_failed")


def test_a_frame_that_stayed_poor_is_not_relooked():
    """Measured on twin surveys (survey_quality.md, "Relooks in the agent"): the looks of
    featureless frames that stayed poor fixed as many as they broke."""
    record = _relooked(UNSURE, None, QualityRecord(ok=False, failures=["noise"]))
    assert rule_in_context(RoutePolicy(relook=True), record, STAYED_POOR, {"relooks": 5},
                           {}) == STAYED_POOR


class FailingTwin(RenderingTwin):
    """The twin, its link lost after `frames` frames."""

    def __init__(self, frames: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.left = frames

    def acquire(self):
        self.left -= 1
        if self.left < 0:
            raise InstrumentUnreachable("link lost", "twin")
        return super().acquire()


def test_an_instrument_lost_during_the_relooks_fails_the_session(tmp_path, films_tiles):
    tile = films_tiles[0]
    records, final, _ = run(tmp_path, read_wrong_at_the_tile_centres([tile]), [tile],
                            twin=FailingTwin(frames=2, seed=0), relook=True, pipeline=False)
    assert final["status"] == "failed" and final["reason"].startswith(
        "relook: InstrumentUnreachable")
    assert records == [] and final["guard"]["frames"] == 2


class StagelessTwin(RenderingTwin):
    """The twin, reporting no stage to move (as a stored overview's server)."""

    def capabilities(self):
        return replace(super().capabilities(), can_move_stage=False)


@pytest.mark.parametrize("twin,relooks", [(RenderingTwin, True), (StagelessTwin, False)])
def test_relooks_are_used_only_where_the_stage_can_move(tmp_path, twin, relooks):
    microscope = twin(seed=0)
    cfg = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                    state_dir=str(tmp_path / "state"), frames=1, relook=True)
    session = Session(cfg, SessionParts(GuardedMicroscope(microscope, SafetyEnvelope()),
                                        ScriptedClassifier(microscope, lambda s: (FILMS, 0.6)),
                                        survey_positions=[{"x": 0.0, "y": 0.0}]))
    try:
        assert session.context.policy.relook is relooks
    finally:
        session.close()
