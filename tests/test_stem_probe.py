"""The stem probe: a second opinion on the stem's pooled features, blended with the fusion
head by a weight chosen on held-out images, stored and fingerprinted with the checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cli_in_process import micagent_in_process
from twin_process import REPO
from workflows_synth import CLASSES, write_dataset

from models.checkpoint import checkpoint_sha256
from models.classifier import Classifier
from models.config import FusionConfig
from models.errors import CheckpointError
from models.pooled import POOLED_DIM, PooledStemEncoder
from models.stem_probe import PROBE_FILE, StemProbe, fit_probe
from workflows.training.data import load_folder_dataset
from workflows.training.fit_probe import fit_stem_probe, held_out_mask

torch.set_num_threads(1)


def separable(n: int, classes: int, rng: np.random.Generator, noise: float = 0.3):
    """Pooled-feature-shaped vectors whose class is plain in them."""
    labels = np.arange(n) % classes
    centres = rng.normal(0, 1, (classes, POOLED_DIM))
    return (centres[labels] + noise * rng.normal(0, 1, (n, POOLED_DIM))).astype(np.float32), \
        labels


def test_a_probe_on_telling_features_outweighs_a_fusion_head_that_guesses():
    rng = np.random.default_rng(0)
    x, y = separable(260, 4, rng)
    x, y, held_x, held_y = x[:200], y[:200], x[200:], y[200:]
    guessing = rng.normal(0, 1, (60, 4))
    _, fit = fit_probe(x, y, held_x, held_y, guessing, 4)
    assert fit.blend >= 0.7
    assert fit.top1["blend"] > fit.top1["fusion"] + 0.3
    assert fit.log_loss[fit.blend] == min(fit.log_loss.values())


def test_a_fusion_head_that_knows_outweighs_a_probe_on_noise():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (200, POOLED_DIM)).astype(np.float32), np.arange(200) % 4
    held_x, held_y = rng.normal(0, 1, (60, POOLED_DIM)).astype(np.float32), np.arange(60) % 4
    knowing = 6.0 * np.eye(4)[held_y]
    _, fit = fit_probe(x, y, held_x, held_y, knowing, 4)
    assert fit.blend <= 0.3
    assert fit.top1["blend"] == 1.0


def test_too_few_images_are_refused():
    rng = np.random.default_rng(2)
    x, y = separable(6, 4, rng)
    with pytest.raises(ValueError, match="at least 8 fit"):
        fit_probe(x, y, x, y, np.zeros((6, 4)), 4)


def test_a_saved_probe_loads_to_the_same_scores(tmp_path):
    torch.manual_seed(0)
    probe = StemProbe(4, hidden=16, blend=0.6)
    probe.save(tmp_path)
    again = StemProbe.load(tmp_path, 4)
    pooled, fused = torch.randn(3, POOLED_DIM), torch.randn(3, 4)
    assert again.blend == 0.6
    assert torch.equal(again.pool_with(fused, pooled), probe.pool_with(fused, pooled))
    assert StemProbe.load(tmp_path / "elsewhere", 4) is None


def test_a_corrupt_or_foreign_probe_file_is_a_checkpoint_error(tmp_path):
    StemProbe(3, hidden=8).save(tmp_path)
    with pytest.raises(CheckpointError, match=PROBE_FILE):
        StemProbe.load(tmp_path, 4)                       # made for another class count
    (tmp_path / PROBE_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=PROBE_FILE):
        StemProbe.load(tmp_path, 3)


def test_a_twin_dataset_holds_out_whole_specimens(tmp_path):
    root = write_dataset(tmp_path / "data", per_class=10, size=32)
    ds = load_folder_dataset(root, size=32)
    manifest = {"images": [{"file": s, "specimen": 1000 * (i % 5)}
                           for i, s in enumerate(ds.sources)]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    held, how = held_out_mask(load_folder_dataset(root, size=32))
    specimens = np.array([r["specimen"] for r in manifest["images"]])
    assert set(specimens[held]) == {4000} and 4000 not in set(specimens[~held])
    assert "4000" in how


def test_without_specimens_a_stratified_fifth_of_the_groups_is_held_out(tmp_path):
    ds = load_folder_dataset(write_dataset(tmp_path / "data", per_class=10, size=32), size=32)
    held, _ = held_out_mask(ds)
    assert 0.1 <= held.mean() <= 0.3
    assert set(ds.labels[held]) == set(range(len(CLASSES)))
    assert not set(ds.groups[held]) & set(ds.groups[~held])


@pytest.fixture(scope="module")
def stem_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    clf = Classifier.create(FusionConfig.ablation("vit_only"), CLASSES)
    clf.calibrate(np.random.default_rng(0).normal(0, 1, (8, 4)), np.arange(8) % 4)
    clf.save(folder)
    return folder


def test_fitting_rewrites_the_checkpoint_and_classify_uses_the_blend(tmp_path,
                                                                     stem_checkpoint):
    ckpt = tmp_path / "model"
    shutil.copytree(stem_checkpoint, ckpt)
    shutil.copy(REPO / "models/bundled/sem_twin/risk_control.json", ckpt)  # made before
    before = checkpoint_sha256(ckpt)
    data = write_dataset(tmp_path / "data", per_class=12, size=48)
    fit = fit_stem_probe(ckpt, data)
    assert (ckpt / PROBE_FILE).is_file() and not (ckpt / "risk_control.json").exists()
    assert fit["removed"] == ["risk_control.json"]
    assert fit["fit_images"] + fit["held_out_images"] == 48
    record = json.loads((ckpt / "stem_probe.json").read_text())
    assert (record["blend"], record["data"]) == (fit["blend"], "data")
    clf = Classifier.load(ckpt)
    assert clf.probe is not None and clf.probe.blend == fit["blend"]
    assert clf.checkpoint_sha256 != before
    images = load_folder_dataset(data, size=48).images[:3]
    with torch.no_grad():
        features = clf.model.features(clf.preprocess_batch(images))
        h, _ = clf.model.encode_features(features)
        expected = torch.softmax(clf.probe.pool_with(clf.model.head(h),
                                                     PooledStemEncoder.pool(features))
                                 / clf.temperature, -1).numpy()
    got = np.stack([p.probabilities for p in clf.classify(images)])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_command_refuses_a_model_without_a_stem_in_one_line(tmp_path, plumbing_checkpoint):
    data = write_dataset(tmp_path / "data", per_class=4, size=32)
    result = micagent_in_process("fit-probe", str(plumbing_checkpoint), str(data))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "has no pretrained stem" in result.stderr
