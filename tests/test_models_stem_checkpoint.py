"""Checkpoints of stem models and the out-of-distribution score: what they store, what loading
checks, and what it refuses."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import CONFIG_FILE, OOD_FILE, WEIGHTS_FILE, file_sha256
from models.classifier import Classifier
from models.config import FusionConfig
from models.errors import CheckpointError, StemMismatchError
from models.ood import MahalanobisOOD
from models.stem import STEM_PACKAGE, STEM_SHA256

torch.set_num_threads(1)
NAMES = ["Fibres", "Particles", "Powder"]


def _fitted(config: FusionConfig) -> Classifier:
    torch.manual_seed(0)
    clf = Classifier.create(config, NAMES)
    rng = np.random.default_rng(0)
    clf.calibrate(torch.randn(40, 3) * 3, torch.randint(0, 3, (40,)))
    e = clf.model.embed(torch.zeros(1, 1, 224, 224)).shape[1]
    clf.fit_ood(rng.normal(size=(60, e)), np.arange(60) % 3, rng.normal(size=(20, e)))
    return clf


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(1).normal(500, 80, size=(2, 180, 240)).astype(np.float32)


@pytest.mark.parametrize("stem", ["efficientnet_lite0", "none"])
def test_round_trip_with_and_without_a_stem_gives_identical_predictions(tmp_path, frames, stem):
    clf = _fitted(FusionConfig.ablation("no_text", stem=stem))
    path = clf.save(tmp_path / "model")
    loaded = Classifier.load(path, NAMES)
    assert (loaded.model.stem is None) == (stem == "none")
    for a, b in zip(clf.classify(frames), loaded.classify(frames), strict=True):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        assert a.ood == b.ood and set(a.ood) == {"score", "threshold", "unknown", "method"}


def test_a_frozen_stem_is_recorded_by_identity_not_stored(tmp_path):
    path = _fitted(FusionConfig.ablation("vit_only")).save(tmp_path / "model")
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["stem"]["package"] == STEM_PACKAGE and meta["stem"]["sha256"] == STEM_SHA256
    assert meta["stem"]["trained_blocks"] == 0
    assert not any(k.startswith("stem.") for k in load_file(str(path / WEIGHTS_FILE)))
    assert (path / WEIGHTS_FILE).stat().st_size < 2_000_000  # not the 13 MB of stem weights


def test_fine_tuned_stem_stages_are_stored_with_the_model(tmp_path, frames):
    clf = _fitted(FusionConfig.ablation("vit_only", stem_train_blocks=2))
    with torch.no_grad():
        for p in clf.model.stem.net.blocks[6].parameters():
            p.add_(0.01)
    path = clf.save(tmp_path / "model")
    stored = load_file(str(path / WEIGHTS_FILE))
    assert any(k.startswith("stem.net.blocks.6.") for k in stored)
    assert not any(k.startswith("stem.net.blocks.4.") for k in stored)
    loaded = Classifier.load(path, NAMES)
    np.testing.assert_array_equal(clf.classify(frames)[0].probabilities,
                                  loaded.classify(frames)[0].probabilities)


def test_a_checkpoint_made_on_other_stem_weights_is_refused(tmp_path):
    path = _fitted(FusionConfig.ablation("gnn_only")).save(tmp_path / "model")
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["stem"]["sha256"] = "0" * 64
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(StemMismatchError, match=STEM_PACKAGE):
        Classifier.load(path, NAMES)


def test_a_checkpoint_from_before_the_stem_loads_as_the_raw_pixel_model(tmp_path, frames):
    path = _fitted(FusionConfig.ablation("gnn_only", stem="none")).save(tmp_path / "model")
    meta = json.loads((path / CONFIG_FILE).read_text())
    del meta["fusion_config"]["stem"], meta["fusion_config"]["stem_train_blocks"], meta["stem"]
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    assert Classifier.load(path, NAMES).model.stem is None


def test_a_tampered_ood_fit_is_refused(tmp_path):
    path = _fitted(FusionConfig.ablation("gnn_only")).save(tmp_path / "model")
    assert json.loads((path / CONFIG_FILE).read_text())["ood"]["sha256"] == \
        file_sha256(path / OOD_FILE)
    (path / OOD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=OOD_FILE):
        Classifier.load(path, NAMES)


def test_mahalanobis_ood_flags_embeddings_far_from_every_class():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 10
    labels = np.arange(300) % 3
    train = centres[labels] + rng.normal(size=(300, 8))
    held_out = centres[np.arange(100) % 3] + rng.normal(size=(100, 8))
    ood = MahalanobisOOD.fit(train, labels, 3, held_out, quantile=0.99)
    inside = ood.score(centres + rng.normal(size=(3, 8)) * 0.5)
    outside = ood.score(np.full((2, 8), 30.0))
    assert (inside < ood.threshold).all() and (outside > ood.threshold).all()
    assert np.mean(ood.score(held_out) > ood.threshold) <= 0.02
    assert ood.record(float(outside[0]))["unknown"] is True


def test_the_ood_fit_needs_every_class_in_the_training_split():
    with pytest.raises(ValueError, match="all 3 classes"):
        MahalanobisOOD.fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]), 3, np.zeros((3, 2)))


def test_stem_features_are_refused_by_a_model_without_a_stem_and_checked_for_shape():
    from models.errors import ModelInputError
    from models.fusion import FusionClassifier

    raw = FusionClassifier(FusionConfig.ablation("gnn_only", stem="none", n_classes=3))
    with pytest.raises(ModelInputError, match="no stem"):
        raw.forward_features([torch.zeros(1, 40, 28, 28)])
    stem = FusionClassifier(FusionConfig.ablation("gnn_only", n_classes=3))
    with pytest.raises(ModelInputError, match="stem features must have shapes"):
        stem.forward_features([torch.zeros(1, 40, 28, 28), torch.zeros(1, 112, 7, 7),
                               torch.zeros(1, 320, 7, 7)])


def test_16_bit_and_sub_patch_frames_are_resized_and_rescaled_for_the_stem():
    clf = _fitted(FusionConfig.ablation("gnn_only"))
    rng = np.random.default_rng(2)
    sixteen_bit = rng.integers(0, 65535, size=(300, 400), dtype=np.uint16)
    tiny = rng.random((8, 8))  # smaller than one 16 px patch: resized to 224 like any frame
    preds = clf.classify([sixteen_bit, tiny])
    assert all(np.isclose(p.probabilities.sum(), 1.0) for p in preds)
    assert all(np.isfinite(p.ood["score"]) for p in preds)
