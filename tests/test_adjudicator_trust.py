"""Refusal that nothing overrides, and an adjudicator trusted only where it is right.

- The offline adjudicator votes among the model's training reference and abstains where the
  vote is split or the frame is far from every training image.
- The VLM prompt offers "none of these / unsure"; the real openai client's abstention is kept
  (a local OpenAI-compatible server, twins/vlm_server.py).
- An adjudicator whose measured accuracy on unsure frames is below the classifier's cannot
  overrule it: the frame goes to a human, or is recorded with no label.
- A frame the OOD test flags is never sent to an adjudicator; with approvals it goes to the
  human as unknown.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import numpy as np
import pytest
import torch

from agent.adjudication.base import ABSTAIN
from agent.adjudication.cache import AnswerCache
from agent.adjudication.offline import OfflineKnnAdjudicator
from agent.adjudication.openai_vlm import OpenAIAdjudicator, VlmConfig
from agent.adjudication.reference import TrainingReference, VoteRule
from agent.adjudication.trust import TRUST_FILE, AdjudicatorTrust
from agent.config import RunConfig
from agent.policy import RoutePolicy, decide, rule_adjudicated, rule_classified
from agent.session import Session, SessionParts
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.decision_record import (
    DecisionRecord,
    PredictionRecord,
    QualityRecord,
)
from instruments.session_file.reader import SessionReader
from models.classifier import Classifier
from models.config import FusionConfig
from models.ood import AgreedOOD, MahalanobisOOD, StemKnnOOD
from twins.classes import SEM_CLASSES
from twins.microscope import TwinMicroscope
from twins.vlm_server import ChatHandler, serving, url
from workflows.session_assembly import may_adjudicate

CLASSES = ["Fibres", "Particles", "Powder"]
BUDGETS = {"rescans": 10, "adjudications": 10, "tokens": 1000}
FRESH = {"rescans": 0, "adjudications": 0, "tokens": 0}
UNSURE = PredictionRecord(label="Fibres", confidence=0.5, conformal_set=["Fibres", "Powder"])
torch.set_num_threads(1)


def measured(tmp_path, accuracy: float, classifier_accuracy: float) -> AdjudicatorTrust:
    """A measurement file beside a checkpoint folder, read back as the session reads it."""
    record = {"adjudicators": {"offline-knn": {"frames": 40, "answered": 30, "abstained": 10,
                                               "accuracy": accuracy,
                                               "classifier_accuracy": classifier_accuracy}}}
    (tmp_path / TRUST_FILE).write_text(json.dumps(record))
    return AdjudicatorTrust.load(tmp_path)


@pytest.fixture()
def reference():
    """Two tight classes of training embeddings along the first two axes of 8-d space."""
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:2]
    points = np.concatenate([c + 0.05 * rng.normal(size=(20, 8)) for c in centres])
    return TrainingReference.build(points, np.repeat([0, 1], 20), ["Fibres", "Particles"],
                                   VoteRule(k=10, min_share=0.8, min_similarity=0.6))


def test_the_offline_adjudicator_votes_among_the_training_reference(reference):
    verdict = OfflineKnnAdjudicator(reference).adjudicate(np.zeros((8, 8)), [], CLASSES,
                                                          np.eye(8)[1])
    assert verdict.answer.label == "Particles" and not verdict.answer.abstained
    assert len(verdict.demonstrations) == 10 and verdict.demonstrations[0].startswith("train-")


def test_the_offline_adjudicator_abstains_when_the_vote_is_split_or_the_frame_is_foreign(
        reference):
    adjudicator = OfflineKnnAdjudicator(reference)
    between = adjudicator.adjudicate(np.zeros((8, 8)), [], CLASSES, np.eye(8)[0] + np.eye(8)[1])
    assert between.answer.abstained and between.answer.rationale.startswith("unsure")
    foreign = adjudicator.adjudicate(np.zeros((8, 8)), [], CLASSES, np.eye(8)[5])
    assert foreign.answer.label == ABSTAIN
    assert foreign.answer.rationale.startswith("none of these")


def test_the_reference_is_stored_beside_the_checkpoint_with_its_rule(reference, tmp_path):
    assert TrainingReference.load(tmp_path) is None             # never measured
    reference.save(tmp_path)
    again = TrainingReference.load(tmp_path)
    assert again.rule == reference.rule and again.class_names == reference.class_names
    np.testing.assert_array_equal(again.labels, reference.labels)
    np.testing.assert_allclose(again.embeddings, reference.embeddings, atol=1e-3)


class UnsureVlm(ChatHandler):
    """Answers every chat completion with "none of these", keeping the requests."""

    def do_POST(self):  # noqa: N802
        self.server.requests.append(self.read_json())
        self.send_chat('{"label": "none of these", "confidence": 0.6, '
                       '"rationale": "an atomic lattice, not an SEM morphology"}')


@pytest.fixture()
def unsure_vlm():
    with serving(UnsureVlm, requests=[]) as server:
        yield server


def test_the_vlm_prompt_offers_none_of_these_and_its_abstention_is_kept(unsure_vlm,
                                                                         tmp_path):
    vlm = OpenAIAdjudicator(VlmConfig(base_url=url(unsure_vlm), model="test-vlm"),
                            AnswerCache(tmp_path / "cache"), api_key="sk-test")
    frame = np.random.default_rng(0).random((32, 32))
    first = vlm.adjudicate(frame, [], CLASSES, embedding=np.ones(4))
    again = vlm.adjudicate(frame, [], CLASSES, embedding=np.ones(4))
    prompt = unsure_vlm.requests[0]["messages"][1]["content"][0]["text"]
    assert "none of these" in prompt and "unsure" in prompt
    assert first.adjudicator == "openai:test-vlm" and first.answer.abstained
    assert again.cached and again.answer.abstained and len(unsure_vlm.requests) == 1


def test_an_abstention_leaves_the_frame_unresolved_under_the_classifiers_label_or_none():
    record = DecisionRecord(prediction=UNSURE, quality=QualityRecord(ok=True))
    alone = rule_adjudicated(RoutePolicy(), record, ABSTAIN, None, "openai:test-vlm")
    assert (alone["step"], alone["label"], alone["source"], alone["route"]) == \
        ("record", "Fibres", "classifier", "unresolved")
    bare = rule_adjudicated(RoutePolicy(unsure_label="none"), record, ABSTAIN, None)
    assert (bare["step"], bare["label"], bare["route"]) == ("record", None, "unresolved")
    attended = rule_adjudicated(RoutePolicy(approve="uncertain"), record, ABSTAIN, None)
    assert (attended["step"], attended["label"]) == ("approve", "Fibres")


def test_an_adjudicator_measured_below_the_classifier_cannot_overrule_it(tmp_path):
    below = measured(tmp_path, accuracy=0.40, classifier_accuracy=0.60)
    assert not below.allows("offline-knn") and not below.allows("openai:never-measured")
    policy = RoutePolicy(trusted_adjudicators=below.trusted(["offline-knn"]))
    record = DecisionRecord(prediction=UNSURE, quality=QualityRecord(ok=True))
    assert decide(policy, UNSURE, record.quality, 0, BUDGETS, FRESH) == "record"
    ruling = rule_classified(policy, record, BUDGETS, FRESH)
    assert (ruling["label"], ruling["route"]) == ("Fibres", "unresolved")  # its own, unconfirmed
    bare = rule_classified(replace(policy, unsure_label="none"), record, BUDGETS, FRESH)
    assert (bare["label"], bare["route"]) == (None, "unresolved")
    attended = RoutePolicy(approve="uncertain", trusted_adjudicators=policy.trusted_adjudicators)
    assert decide(attended, UNSURE, record.quality, 0, BUDGETS, FRESH) == "approve"
    # an answer from it (e.g. a failed VLM's fallback) does not overrule the classifier either
    overruled = rule_adjudicated(policy, record, "Powder", "Powder", "offline-knn")
    assert (overruled["label"], overruled["route"]) == ("Fibres", "unresolved")


def test_an_adjudicator_measured_above_the_classifier_may_overrule_it(tmp_path):
    above = measured(tmp_path, accuracy=0.80, classifier_accuracy=0.60)
    policy = RoutePolicy(trusted_adjudicators=above.trusted(["offline-knn"]))
    record = DecisionRecord(prediction=UNSURE, quality=QualityRecord(ok=True))
    assert decide(policy, UNSURE, record.quality, 0, BUDGETS, FRESH) == "adjudicate"
    ruling = rule_adjudicated(policy, record, "Powder", "Powder", "offline-knn")
    assert (ruling["label"], ruling["route"]) == ("Powder", "adjudicated")


def test_demonstrations_are_prepared_only_where_an_adjudicator_may_be_asked(tmp_path):
    assert may_adjudicate(None)                          # no measurement: the policy routes
    assert may_adjudicate(measured(tmp_path, accuracy=0.80, classifier_accuracy=0.60))
    assert not may_adjudicate(measured(tmp_path, accuracy=0.40, classifier_accuracy=0.60))
    assert not may_adjudicate(AdjudicatorTrust())        # never measured


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return Classifier.create(FusionConfig.ablation("vit_only"), SEM_CLASSES)


def survey(tmp_path, classifier, trust, frames=2, **kw) -> tuple[dict, list[DecisionRecord]]:
    twin = TwinMicroscope(seed=0)
    centres = twin.specimen.survey_centres(20e-6)[:frames]
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                       frames=frames, state_dir=str(tmp_path / "state"), confidence=1.01,
                       max_rescans=0, imaging={"fov": 20e-6, "pixels": 64, "dwell": 2e-6},
                       **kw)
    parts = SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                         survey_positions=[{"x": c.x, "y": c.y, "row": 0, "col": i}
                                           for i, c in enumerate(centres)], trust=trust)
    session = Session(config, parts)
    final = session.run()
    session.close()
    with SessionReader(config.out) as reader:
        return final, reader.records()


def test_a_session_never_asks_an_adjudicator_measured_below_the_classifier(tmp_path,
                                                                           classifier):
    final, records = survey(tmp_path, classifier, measured(tmp_path, 0.40, 0.60),
                            unsure_label="none")
    assert final["used"]["adjudications"] == 0
    assert [(r.route, r.label, r.adjudication) for r in records] == \
        [("unresolved", None, None)] * 2


def test_a_flagged_frame_never_reaches_the_vlm_and_stays_unknown(tmp_path, classifier,
                                                                  unsure_vlm, monkeypatch):
    """Even an adjudicator measured better than the classifier never sees an unknown frame."""
    monkeypatch.setenv("MICAGENT_VLM_BASE_URL", url(unsure_vlm))
    monkeypatch.setenv("MICAGENT_VLM_MODEL", "test-vlm")
    rng = np.random.default_rng(0)
    flagging = Classifier(classifier.model, classifier.config, classifier.class_names, None)
    width = classifier.embed([np.zeros((32, 32))]).shape[1]
    fused = MahalanobisOOD(rng.normal(size=(10, width)), np.eye(width), threshold=1e9)
    stem = StemKnnOOD.fit(rng.normal(size=(8, 472)))
    stem.threshold = 1e9              # by their pixels, every frame is in distribution ...
    flagging.ood = AgreedOOD(fused, stem, 0.995, fov_range=(1e-3, 1e-2))  # ... not by scale
    trust = measured(tmp_path, 0.95, 0.50)
    trust.measured["openai:test-vlm"] = trust.measured["offline-knn"]
    final, records = survey(tmp_path, flagging, trust, adjudicator="openai")
    assert unsure_vlm.requests == [] and final["used"]["adjudications"] == 0
    assert [(r.route, r.label) for r in records] == [("unknown", "unknown")] * 2
    assert all(r.prediction.ood.method == "field_of_view" for r in records)


def test_a_frame_of_an_untaught_scale_or_detector_is_unknown_whatever_its_pixels():
    rng = np.random.default_rng(1)
    fused = MahalanobisOOD(rng.normal(size=(3, 4)), np.eye(4), threshold=1e9)
    stem = StemKnnOOD.fit(rng.normal(size=(8, 472)))
    stem.threshold = 1e9
    ood = AgreedOOD(fused, stem, 0.995, fov_range=(1e-6, 1e-4), detectors=("BSE", "SE"))
    score = float(ood.score(rng.normal(size=(1, 4)), rng.normal(size=(1, 472)))[0])
    assert not ood.record(score, {"fov": 20e-6, "detector": "SE"})["unknown"]
    assert not ood.record(score)["unknown"]                     # nothing known: pixels only
    lattice = ood.record(score, {"fov": 2.6e-9, "detector": "SE"})
    assert lattice["unknown"] and lattice["method"] == "field_of_view"
    assert lattice["score"] == pytest.approx(np.log10(0.5e-6 / 2.6e-9))
    haadf = ood.record(score, {"fov": 1e-6, "detector": "HAADF"})
    assert haadf["unknown"] and haadf["method"] == "detector"
    again = AgreedOOD.from_parts(ood.tensors(), ood.meta())
    assert again.detectors == ood.detectors and again.fov_range == ood.fov_range
    assert again.score(rng.normal(size=(2, 4)), rng.normal(size=(2, 472))).shape == (2,)


def test_a_measurement_of_another_state_of_the_checkpoint_trusts_nothing(tmp_path, reference):
    """Retrained or refitted since it was measured: neither its trust nor its reference."""
    from types import SimpleNamespace

    from workflows.session_assembly import _adjudication

    measured(tmp_path, accuracy=0.95, classifier_accuracy=0.50)
    record = json.loads((tmp_path / TRUST_FILE).read_text())
    (tmp_path / TRUST_FILE).write_text(json.dumps({**record, "checkpoint_sha256": "abc"}))
    reference.save(tmp_path)
    same, trust = _adjudication(str(tmp_path), SimpleNamespace(checkpoint_sha256="abc"))
    assert same is not None and trust.trusted(["offline-knn"]) == ("offline-knn",)
    stale, trust = _adjudication(str(tmp_path), SimpleNamespace(checkpoint_sha256="def"))
    assert stale is None and trust.trusted(["offline-knn"]) == ()
