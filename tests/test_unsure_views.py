"""Test-time augmentation of unsure frames: the classifier averages a frame's dihedral views,
the agent asks for them only where the policy is unsure, and the record says so."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch

from agent.config import RunConfig, RunConfigError
from agent.policy import RoutePolicy
from agent.session import Session, SessionParts
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.decision_record import (
    RECORD_VERSION,
    DecisionRecord,
    PredictionRecord,
)
from instruments.session_file.reader import SessionReader
from models.errors import ModelInputError
from models.preprocess import dihedral_views
from twins.microscope import TwinMicroscope

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier(untrained_classifier):
    return untrained_classifier


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((64, 64)).astype(np.float32)


def test_eight_views_average_the_single_view_probabilities(classifier, image):
    views = [classifier.classify([v])[0] for v in dihedral_views(image, 8)]
    averaged = classifier.classify([image], views=8)[0]
    assert np.allclose(averaged.probabilities, np.mean([p.probabilities for p in views], axis=0))
    assert averaged.views == 8 and averaged.as_taken == views[0].label
    assert np.allclose(averaged.embedding, views[0].embedding)      # the frame as taken


def test_eight_views_do_not_depend_on_the_frame_orientation(classifier, image):
    upright = classifier.classify([image], views=8)[0]
    turned = classifier.classify([np.rot90(image).copy()], views=8)[0]
    assert np.allclose(upright.probabilities, turned.probabilities, atol=1e-6)


def test_one_view_is_the_frame_as_taken(classifier, image):
    plain = classifier.classify([image])[0]
    assert plain.views == 1 and plain.as_taken is None
    assert plain.as_record()["views"] == 1


@pytest.mark.parametrize("views", [0, 9])
def test_view_counts_outside_one_to_eight_are_refused(classifier, image, views):
    with pytest.raises(ModelInputError, match="views must lie in 1..8"):
        classifier.classify([image, image], views=views)


def run(tmp_path, classifier, **config):
    twin = TwinMicroscope(seed=0)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i}
                 for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:3])]
    cfg = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                    state_dir=str(tmp_path / "state"), frames=3, max_rescans=0,
                    imaging={"fov": 20e-6, "pixels": 64, "dwell": 2e-6}, **config)
    session = Session(cfg, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                                        survey_positions=positions))
    session.run()
    session.close()
    with SessionReader(cfg.out) as reader:
        return reader.records()


def test_unsure_frames_are_decided_on_their_eight_views(tmp_path, classifier):
    records = run(tmp_path, classifier, confidence=0.99)   # random weights: every frame unsure
    assert [r.prediction.views for r in records] == [8, 8, 8]
    assert all(r.classifier_label == r.prediction.as_taken for r in records)


def test_confident_frames_keep_their_single_view(tmp_path, classifier):
    records = run(tmp_path, classifier, confidence=0.0, max_set_size=10)
    assert [r.prediction.views for r in records] == [1, 1, 1]
    assert all(r.classifier_label == r.prediction.label for r in records)


def test_one_unsure_view_turns_augmentation_off(tmp_path, classifier):
    records = run(tmp_path, classifier, confidence=0.99, unsure_views=1)
    assert [r.prediction.views for r in records] == [1, 1, 1]


def test_unsure_views_outside_one_to_eight_are_a_config_error(tmp_path):
    with pytest.raises(RunConfigError, match="--unsure-views"):
        RunConfig(session_id="s", out=str(tmp_path / "s.h5"), unsure_views=0)


def test_a_learning_session_classifies_the_frame_as_taken(tmp_path):
    config = RunConfig(session_id="s", out=str(tmp_path / "s.h5"), learn=True, approve="uncertain")
    assert config.policy().unsure_views == 1


def test_a_version_5_record_reads_as_one_view(tmp_path, classifier):
    current = run(tmp_path, classifier, confidence=0.0, max_set_size=10)[0]
    stored = json.loads(current.to_json())
    stored["version"] = 5
    for key in ("views", "as_taken"):
        stored["prediction"].pop(key)
    record = DecisionRecord.from_json(json.dumps(stored))
    assert record.version == RECORD_VERSION
    assert record.prediction.views == 1 and record.prediction.as_taken is None


def test_a_prediction_averaged_over_views_is_never_confident():
    sure = {"label": "Tips", "confidence": 0.99, "conformal_set": ["Tips"]}
    policy = RoutePolicy(confidence=0.9)
    assert policy.is_confident(PredictionRecord(**sure))
    assert not policy.is_confident(PredictionRecord(**sure, views=8, as_taken="Tips"))
