"""Temperature scaling and split-conformal prediction sets."""

import numpy as np
import pytest
import torch

from models.calibration import conformal_threshold, fit_temperature, nll, prediction_set
from models.classifier import Classifier
from models.config import FusionConfig
from models.errors import ModelInputError

torch.set_num_threads(1)


def sample_task(n: int, classes: int = 5, seed: int = 0):
    """True logits z; labels drawn from softmax(z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    logits, labels = sample_task(2000)
    overconfident = logits * 4.0
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    assert nll(overconfident, labels, temperature) < nll(overconfident, labels) - 0.5


def test_conformal_sets_reach_their_coverage():
    alpha = 0.1
    cal_logits, cal_labels = sample_task(1000, seed=1)
    test_logits, test_labels = sample_task(4000, seed=2)
    softmax = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    qhat = conformal_threshold(softmax(cal_logits), cal_labels, alpha)
    sets = [prediction_set(p, qhat) for p in softmax(test_logits)]
    coverage = np.mean([y in s for y, s in zip(test_labels, sets, strict=True)])
    assert coverage >= 1 - alpha - 0.02
    assert np.mean([len(s) for s in sets]) < 5  # informative, not every class
    assert all(len(s) >= 1 for s in sets)


def test_tiny_calibration_sets_give_the_trivial_threshold():
    probs = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert conformal_threshold(probs, np.array([0, 1]), alpha=0.1) == 1.0
    assert sorted(prediction_set(np.array([0.9, 0.1]), 1.0)) == [0, 1]


def test_bad_calibration_input_is_refused():
    with pytest.raises(ModelInputError, match="alpha"):
        conformal_threshold(np.ones((3, 2)) / 2, np.zeros(3, dtype=int), alpha=1.5)
    with pytest.raises(ModelInputError, match="class indices"):
        fit_temperature(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(ModelInputError, match="non-finite"):
        nll(np.array([[np.nan, 0.0]]), np.array([0]))


def test_classifier_calibration_feeds_its_predictions():
    clf = Classifier.create(FusionConfig.ablation("vit_only"), ["a", "b", "c"])
    frames = np.random.default_rng(0).random((2, 64, 64))
    assert clf.classify(frames)[0].extra["conformal"] == "uncalibrated"
    logits, labels = sample_task(400, classes=3)
    clf.calibrate(logits * 3, labels, alpha=0.2)
    assert clf.temperature > 1.5 and 0 < clf.conformal_qhat <= 1
    prediction = clf.classify(frames)[0]
    assert prediction.extra["conformal"] == "LAC"
    assert prediction.label in prediction.conformal_set
    assert prediction.probabilities.sum() == pytest.approx(1.0)
