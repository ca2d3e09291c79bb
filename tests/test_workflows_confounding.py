"""Confounding-micrograph selection (PCA + K-Means, CM-EMRL) on data with a planted ambiguous
cluster, and the few-shot adjudicator labels that train the LMM embedding."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from workflows.cli.app import app
from workflows.training.confounding import (
    NO_ANSWER,
    few_shot_labels,
    pca_features,
    select_confounding,
)


def planted(seed: int = 0, per_class: int = 30, n_blend: int = 8, size: int = 64):
    """Four prototype micrographs plus noise; `n_blend` half-and-half blends of two classes
    (the planted ambiguous images, at the end)."""
    rng = np.random.default_rng(seed)
    protos = [gaussian_filter(rng.normal(size=(size, size)), 4) for _ in range(4)]
    protos = [(p - p.mean()) / p.std() for p in protos]
    images, labels = [], []
    for k in range(4):
        for _ in range(per_class):
            images.append(protos[k] + rng.normal(0, 0.5, (size, size)))
            labels.append(k)
    for i in range(n_blend):
        a, b = i % 4, (i + 1) % 4
        images.append(0.5 * protos[a] + 0.5 * protos[b] + rng.normal(0, 0.5, (size, size)))
        labels.append(a)
    return np.stack(images).astype(np.float32), np.array(labels)


def test_the_planted_ambiguous_images_are_the_ones_selected():
    images, _ = planted()
    blends = set(range(120, 128))
    sel = select_confounding(images, n_clusters=4, fraction=8 / len(images), seed=0)
    assert set(sel.selected.tolist()) == blends
    assert sel.silhouette[list(blends)].mean() < np.delete(sel.silhouette, list(blends)).mean()
    assert sel.margin[list(blends)].mean() > np.delete(sel.margin, list(blends)).mean()


def test_only_the_selected_images_get_adjudicator_labels_from_the_training_pool():
    images, labels = planted()
    feats = pca_features(images, seed=0)
    queries = np.array([0, 40, 125])
    pool = np.arange(0, 120, 2)  # demonstrations only from this "training" part
    out, verdicts = few_shot_labels(feats, labels, ["a", "b", "c", "d"], queries, pool, k=3)
    assert (out[np.setdiff1d(np.arange(len(labels)), queries)] == NO_ANSWER).all()
    assert out[0] == 0 and out[40] == 1 and out[125] in (1, 2)  # blend of classes 1 and 2
    for v in verdicts:
        assert len(v["demonstrations"]) == 3 and str(v["index"]) not in v["demonstrations"]
        assert all(int(d) in set(pool.tolist()) for d in v["demonstrations"])
        assert v["adjudicator"] == "offline-knn"


def test_select_confounding_command_writes_the_list(tmp_path):
    images, labels = planted(per_class=12, n_blend=4)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "data" / f"class_{y}"
        folder.mkdir(parents=True, exist_ok=True)
        u8 = np.clip(128 + 40 * img, 0, 255).astype(np.uint8)
        Image.fromarray(u8).save(folder / f"{i:03d}.png")
    out = tmp_path / "confounding.json"
    result = CliRunner().invoke(app, ["select-confounding", str(tmp_path / "data"),
                                      "--fraction", "0.1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    listing = json.loads(out.read_text())
    assert len(listing["selected"]) == round(0.1 * 52) and listing["n_clusters"] == 4
    row = listing["selected"][0]
    assert {"source", "label", "ambiguity", "silhouette", "adjudicator_label"} <= set(row)
    blended = {f"{i:03d}.png" for i in range(48, 52)}
    assert sum(r["source"].split("/")[1] in blended for r in listing["selected"]) >= 3
