"""Labelled datasets from the twin: in-memory arrays, the exported folder layout, the CLI."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from twins.classes import SEM_CLASSES
from twins.dataset import render_labelled_images
from twins.specimen import Specimen
from workflows.cli.app import app


def test_labelled_images_cover_every_class_deterministically():
    specimen = Specimen(seed=2, tile=256)
    images, labels = render_labelled_images(2, size=48, seed=2, specimen=specimen)
    assert images.shape == (20, 48, 48) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert labels == [c for c in SEM_CLASSES for _ in range(2)]
    again, _ = render_labelled_images(2, size=48, seed=2, specimen=specimen)
    np.testing.assert_array_equal(images, again)
    assert all(img.std() > 0 for img in images)


def test_cli_writes_the_sem_dataset_layout_and_manifest(tmp_path):
    out = tmp_path / "twin_ds"
    result = CliRunner().invoke(app, ["twin", "dataset", str(out), "--per-class", "1",
                                      "--size", "64", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SEM_CLASSES)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["seed"], manifest["per_class"], manifest["size"]) == (4, 1, 64)
    assert len(manifest["images"]) == len(SEM_CLASSES)
    for entry in manifest["images"]:
        assert entry["file"] == f"{entry['label']}/{entry['label']}_0.png"
        with Image.open(out / entry["file"]) as im:
            assert im.size == (64, 64) and im.mode == "L"
        assert {"stage", "fov", "dwell", "defocus", "detector"} <= set(entry)
        assert entry["true_label_fraction"] == 1.0 or entry["true_label_fraction"] > 0.999


def test_cli_rejects_a_non_positive_count(tmp_path):
    result = CliRunner().invoke(app, ["twin", "dataset", str(tmp_path), "--per-class", "0"])
    assert result.exit_code != 0
    assert not any(tmp_path.iterdir())
