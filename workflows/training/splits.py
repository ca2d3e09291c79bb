"""Stratified splits that keep near-duplicate groups on one side (scikit-learn
StratifiedGroupKFold).

- `kfold_splits`: the papers' protocol, K folds; in each fold the training part is split
  again into train and validation (early stopping, learning-rate schedule, calibration).
- `holdout_split`: the quick profile, one train / validation / test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


class SplitError(ValueError):
    """The data cannot be split as asked (too few images or groups per class)."""


@dataclass
class Split:
    """Indices into one dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, list[int]]:
        return {"train": self.train.tolist(), "val": self.val.tolist(),
                "test": self.test.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        return cls(*(np.asarray(d[k], dtype=np.int64) for k in ("train", "val", "test")))


def _one_split(labels: np.ndarray, groups: np.ndarray, n_splits: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held) positions: held is one of `n_splits` stratified group folds (fewer folds
    when the smallest class has fewer images, so that each class can appear in `held`)."""
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    if smallest < 2:
        raise SplitError("a class has a single image left: cannot hold any out for validation")
    n_splits = min(n_splits, smallest)
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise SplitError(f"{n_groups} distinct images (after near-duplicate grouping) cannot "
                         f"be split into {n_splits} folds")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, held = next(iter(sgkf.split(np.zeros(len(labels)), labels, groups)))
    return rest, held


def _check_classes(labels: np.ndarray, minimum: int) -> None:
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if len(present) < 2:
        raise SplitError("need images of at least two classes to train a classifier")
    if present.min() < minimum:
        raise SplitError(f"every class needs at least {minimum} images for this split; "
                         f"the smallest class has {int(present.min())}")


def holdout_split(labels: np.ndarray, groups: np.ndarray, seed: int = 0,
                  val_fraction: float = 0.15, test_fraction: float = 0.15) -> Split:
    """One stratified, group-aware train/val/test split (fractions are approximate)."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    _check_classes(labels, 3)
    rest, test = _one_split(labels, groups, max(2, round(1 / test_fraction)), seed)
    inner = max(2, round((1 - test_fraction) / val_fraction))
    tr, va = _one_split(labels[rest], groups[rest], inner, seed + 1)
    return Split(np.sort(rest[tr]), np.sort(rest[va]), np.sort(test))


def kfold_splits(labels: np.ndarray, groups: np.ndarray, k: int = 10, seed: int = 0,
                 val_folds: int = 9) -> list[Split]:
    """K stratified group folds; each fold's training part gives up 1/`val_folds` to
    validation."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if k < 2:
        raise SplitError(f"k-fold cross-validation needs k >= 2, got {k}")
    _check_classes(labels, 3)
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    if len(np.unique(groups)) < k:
        raise SplitError(f"{len(np.unique(groups))} distinct images cannot be split into "
                         f"{k} folds")
    out = []
    for fold, (rest, test) in enumerate(sgkf.split(np.zeros(len(labels)), labels, groups)):
        tr, va = _one_split(labels[rest], groups[rest], val_folds, seed + 1 + fold)
        out.append(Split(np.sort(rest[tr]), np.sort(rest[va]), np.sort(test)))
    return out
