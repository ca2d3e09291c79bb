"""The few-shot head's conformal threshold, cross-validated over stage blocks: frames of one
region are alike, so a threshold set on folds of images holds only for regions already taught;
set on folds of blocks it holds for new ones (models/fewshot_head.py, agent/learning.py)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.learning import STAGE_BLOCK_FIELDS, stage_block
from models.errors import ModelInputError
from models.fewshot_head import SupportSet, fit_head
from models.pooled import POOLED_DIM

CLASS_SIGNAL, REGION_SPREAD, FRAME_NOISE = 0.2, 1.0, 0.3


def regions(rng: np.random.Generator, centres: np.ndarray, per_class: int, frames: int
            ) -> tuple[np.ndarray, list[str], list[str]]:
    """Features of `per_class` regions of each class, `frames` frames a region: a region is
    its class's centre moved far off it, its frames close together; labels and regions."""
    features, labels, groups = [], [], []
    for c, centre in enumerate(centres):
        for r in range(per_class):
            region = centre + rng.normal(size=POOLED_DIM) * REGION_SPREAD
            for _ in range(frames):
                features.append(region + rng.normal(size=POOLED_DIM) * FRAME_NOISE)
                labels.append(f"class{c}")
                groups.append(f"{c},{r}")
    return np.array(features), labels, groups


def coverage(head, features: np.ndarray, labels: list[str]) -> float:
    sets = [head.conformal_set(p) for p in head.predict(features)]
    return float(np.mean([label in s for label, s in zip(labels, sets, strict=True)]))


def test_a_threshold_over_stage_blocks_covers_regions_never_taught():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, POOLED_DIM)) * CLASS_SIGNAL
    taught, labels, blocks = regions(rng, centres, per_class=6, frames=4)
    new, new_labels, _ = regions(rng, centres, per_class=50, frames=1)
    over_images = fit_head(taught, labels, alpha=0.1)
    over_blocks = fit_head(taught, labels, alpha=0.1, groups=blocks)
    assert over_images.calibration["conformal_folds"] == "images"
    assert over_blocks.calibration["conformal_folds"] == "groups"
    assert over_blocks.conformal_qhat > over_images.conformal_qhat
    assert coverage(over_images, new, new_labels) < 0.9 <= coverage(over_blocks, new, new_labels)
    # the same weights and temperature: only the threshold differs
    assert np.allclose(over_images.predict(new), over_blocks.predict(new))


def test_too_few_blocked_scores_for_a_finite_threshold_keep_the_image_folds():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(2, POOLED_DIM)) * CLASS_SIGNAL
    taught, labels, blocks = regions(rng, centres, per_class=2, frames=4)   # 16 images
    head = fit_head(taught, labels, alpha=0.05, groups=blocks)    # a finite one needs 19
    assert head.calibration["conformal_folds"] == "images"
    assert head.calibration["blocked_scores"] == 16
    assert head.conformal_qhat == fit_head(taught, labels, alpha=0.05).conformal_qhat


def test_a_support_set_keeps_its_blocks_through_state_and_file(tmp_path):
    support = SupportSet().add(np.ones(POOLED_DIM), "a", "0,0").add(np.zeros(POOLED_DIM), "b")
    assert support.groups == ("0,0", "")
    assert support.calibration_groups() == ["0,0", "#1"]     # ungrouped: a block of its own
    assert SupportSet.from_state(support.to_state()).groups == support.groups
    support.save(tmp_path)
    assert SupportSet.load(tmp_path).groups == support.groups
    older = support.to_state()
    del older["groups"]                                       # a state from before blocks
    assert SupportSet.from_state(older).calibration_groups() is None
    with pytest.raises(ModelInputError, match="calibration groups"):
        SupportSet(support.features, support.labels, ("0,0",))


def test_a_stage_block_is_ten_fields_wide_and_needs_a_position():
    fov = 20e-6
    width = STAGE_BLOCK_FIELDS * fov
    assert stage_block(0.1 * width, 0.9 * width, fov) == stage_block(0.9 * width, 0.1 * width,
                                                                    fov) == "0,0"
    assert stage_block(-0.1 * width, 0.5 * width, fov) == "-1,0"
    assert stage_block(None, 0.0, fov) == stage_block(0.0, 0.0, None) == ""
