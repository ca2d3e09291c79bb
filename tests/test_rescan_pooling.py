"""A rescan is another look at the same field: the rescanned frame's reading is pooled with the
readings of the attempts before it, every frame weighing the same, and the record says how many
frames its prediction averages."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from agent.config import RunConfig
from agent.session import Session, SessionParts
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.decision_record import RECORD_VERSION, DecisionRecord
from instruments.session_file.reader import SessionReader
from twins.microscope import TwinMicroscope

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier(untrained_classifier):
    return untrained_classifier


def test_pooling_weighs_every_frame_the_same_and_keeps_the_new_frames_own_verdicts(classifier):
    rng = np.random.default_rng(0)
    first, second, third = (classifier.classify([rng.random((64, 64)).astype(np.float32)])[0]
                            for _ in range(3))
    two = classifier.pooled(second, first.probabilities, frames=1)
    three = classifier.pooled(third, two.probabilities, frames=two.frames)
    expected = np.mean([first.probabilities, second.probabilities, third.probabilities], axis=0)
    assert np.allclose(three.probabilities, expected)
    assert (two.frames, three.frames) == (2, 3)
    assert three.as_taken == third.label                       # this frame, taken alone
    assert np.array_equal(three.embedding, third.embedding) and three.ood == third.ood
    assert three.conformal_set[0] == three.label               # taken again on the pool
    assert three.as_record()["frames"] == 3


def test_a_frame_read_once_says_one_frame(classifier):
    plain = classifier.classify([np.zeros((64, 64), np.float32)])[0]
    assert plain.frames == 1 and plain.as_record()["frames"] == 1


def test_a_rescanned_frame_is_recorded_with_its_attempts_pooled(tmp_path, classifier):
    """Every frame poor (SNR threshold out of reach) and unsure: each is rescanned twice, and
    its stored prediction averages the three frames of its field."""
    twin = TwinMicroscope(seed=0)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i}
                 for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:2])]
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"), frames=2,
                       state_dir=str(tmp_path / "state"), confidence=1.01, unsure_views=1,
                       imaging={"fov": 20e-6, "pixels": 64, "dwell": 2e-6}, max_rescans=2,
                       thresholds={"min_sharpness": 0.0, "min_snr": 1e9, "max_drift_px": 1e9},
                       budgets={"rescans": 4, "adjudications": 0})
    session = Session(config, SessionParts(GuardedMicroscope(twin, SafetyEnvelope()),
                                           classifier, survey_positions=positions))
    session.run()
    session.close()
    with SessionReader(config.out) as reader:
        records = reader.records()
    for record in records:
        attempts = [a.prediction for a in record.escalations]
        assert [p.frames for p in attempts] == [1, 2]          # each pooled what came before
        assert record.prediction.frames == 3
        probabilities = np.array(list(record.prediction.probabilities.values()))
        assert probabilities.sum() == pytest.approx(1.0)
        assert record.prediction.label == max(record.prediction.probabilities,
                                              key=record.prediction.probabilities.get)
        assert record.classifier_label == record.prediction.as_taken


def test_records_written_before_pooling_read_as_one_frame():
    stored = {"version": 6, "frame_id": "f", "prediction": {"label": "Tips", "views": 1}}
    record = DecisionRecord.from_stored(stored)
    assert record.prediction.frames == 1 and record.version == RECORD_VERSION
