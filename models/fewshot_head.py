"""The few-shot head on the frozen stem's pooled features, and the support set it is fitted on.

`fit_head(features, labels) -> FewShotHead`, `head.predict(features) -> probabilities`: the
one fit both `micagent train --profile fewshot` (workflows/training/fewshot.py: dihedral
views of 1-20 images per class) and a learning session (`micagent run --learn`,
agent/learning.py: one view of each frame a human answered, refitted after every answer) use.
`features` are the raw multi-scale pooled stem features (models/pooled.py, `StemFeatures`),
(n, 472) or (n, views, 472): the head standardises them on the support set, L2-normalises
them and fits a multinomial logistic regression (scikit-learn, C = LOGISTIC_C) on all views;
its softmax over the standardised, normalised features is exactly what a checkpoint with
`baseline = "fewshot"` computes (`head.apply(classifier)`).

Calibration comes from the support set alone:
- temperature and the split-conformal threshold (LAC, alpha = ALPHA by default; a learning
  session asks for agent/learning.LEARN_ALPHA) from out-of-fold logits
  of a stratified cross-validation over the support images (as many folds as the smallest class
  has images, at most CV_FOLDS; an image's views stay in its fold). The out-of-fold heads see
  fewer images than the final one, so the temperature errs on the soft side; both are fitted on
  the same out-of-fold scores (too few images to split them).
- where the support images carry calibration groups (a learning session: the block of the stage
  each frame was taken in, `agent.learning.stage_block`), the conformal threshold instead comes
  from a spatially blocked cross-validation (scikit-learn's GroupKFold over the blocks; Roberts
  et al., Ecography 40, 2017): frames of one region are alike, so image folds hold a frame's
  region-mates in training and the threshold is set for frames of regions already taught,
  while a session meets new regions all the time. Images of a class no training fold holds are
  left out; with fewer blocked scores than a finite threshold needs at `alpha` the image folds'
  threshold stands.
- the out-of-distribution threshold (models/ood.py, `NearestSupportOOD`): the OOD_QUANTILE
  quantile of each support image's squared distance to the nearest view of any other support
  image (leave one image out: what a new frame of a known class meets).
With one image in some class the temperature and conformal threshold cannot be estimated (the
temperature stays 1, the conformal set is the top-1 class), and that image's nearest neighbour
is of another class, which loosens the OOD threshold: `head.not_calibrated` says so.

`SupportSet`: the labelled raw features a head is fitted on (float32, classes in order of first
appearance), as plain values for a checkpointed state and as `support.safetensors` beside a
checkpoint, so a learning session can start from what an earlier one learned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold

from models.calibration import conformal_threshold, fit_temperature, prediction_set
from models.config import FusionConfig
from models.errors import ModelInputError
from models.ood import NearestSupportOOD
from models.pooled import POOLED_DIM, PooledStemEncoder
from models.preprocess import preprocess_batch
from models.stem import STEM_SHA256, PretrainedStem

LOGISTIC_C = 10.0
CV_FOLDS = 5
ALPHA = 0.1
OOD_QUANTILE = 0.9
SUPPORT_FILE = "support.safetensors"


@dataclass
class FewShotHead:
    """Standardisation, logistic weights, temperature, conformal threshold and OOD fit over
    `class_names`; `calibration` and `not_calibrated` say what the support set allowed."""

    class_names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    temperature: float = 1.0
    conformal_qhat: float | None = None
    alpha: float | None = None
    ood: NearestSupportOOD | None = None
    calibration: dict = field(default_factory=dict)
    not_calibrated: list[str] = field(default_factory=list)

    def normalise(self, features: np.ndarray) -> np.ndarray:
        """Standardised, L2-normalised features (the last axis)."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.normalise(features) @ self.weight.T + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, C) calibrated class probabilities of raw pooled features (N, 472)."""
        return softmax(self.logits(features) / self.temperature, axis=-1)

    def conformal_set(self, probabilities: np.ndarray) -> list[str]:
        """The classes of one frame's conformal set (the top-1 class when uncalibrated)."""
        if self.conformal_qhat is None:
            return [self.class_names[int(np.argmax(probabilities))]]
        return [self.class_names[i] for i in prediction_set(probabilities, self.conformal_qhat)]

    def apply(self, clf) -> None:
        """Copy this head into a `baseline = "fewshot"` Classifier of the same classes."""
        if clf.class_names != self.class_names:
            raise ModelInputError(f"head classes {self.class_names} != classifier classes "
                                  f"{clf.class_names}")
        model = clf.model
        model.pooled.set_standardisation(torch.as_tensor(self.mean, dtype=torch.float32),
                                         torch.as_tensor(self.scale, dtype=torch.float32))
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(self.weight))
            model.head.bias.copy_(torch.as_tensor(self.bias))
        clf.temperature, clf.conformal_qhat = self.temperature, self.conformal_qhat
        clf.alpha, clf.ood = self.alpha, self.ood

    def to_state(self) -> dict:
        """Plain values (arrays as float64 bytes) for a checkpointed state."""
        arrays = {"mean": self.mean, "scale": self.scale, "weight": self.weight,
                  "bias": self.bias}
        return {"class_names": list(self.class_names),
                "arrays": {k: np.ascontiguousarray(v, dtype="<f8").tobytes()
                           for k, v in arrays.items()},
                "temperature": self.temperature, "conformal_qhat": self.conformal_qhat,
                "alpha": self.alpha, "calibration": self.calibration,
                "not_calibrated": list(self.not_calibrated),
                "ood": None if self.ood is None else {
                    "points": np.ascontiguousarray(self.ood.points, dtype="<f8").tobytes(),
                    "threshold": self.ood.threshold, "quantile": self.ood.quantile}}

    @classmethod
    def from_state(cls, state: dict) -> FewShotHead:
        n, dim = len(state["class_names"]), POOLED_DIM
        shapes = {"mean": (dim,), "scale": (dim,), "weight": (n, dim), "bias": (n,)}
        arrays = {k: np.frombuffer(state["arrays"][k], dtype="<f8").reshape(s).copy()
                  for k, s in shapes.items()}
        ood = state.get("ood")
        return cls(list(state["class_names"]), **arrays, temperature=state["temperature"],
                   conformal_qhat=state["conformal_qhat"], alpha=state["alpha"],
                   ood=None if ood is None else NearestSupportOOD(
                       np.frombuffer(ood["points"], dtype="<f8").reshape(-1, dim).copy(),
                       ood["threshold"], ood["quantile"]),
                   calibration=dict(state["calibration"]),
                   not_calibrated=list(state["not_calibrated"]))


def _logistic(z: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(C=LOGISTIC_C, max_iter=3000).fit(z, y)


def _weights(fit: LogisticRegression, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, e) weights and (C,) bias whose softmax equals the fit's probabilities (a binary
    fit stores one row: the other class gets zero)."""
    w, b = fit.coef_, fit.intercept_
    if n_classes == 2 and w.shape[0] == 1:
        w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    return w, b


def _fold_logits(z: np.ndarray, y: np.ndarray, splits) -> tuple[np.ndarray, np.ndarray]:
    """(logits, rows): each held-out image's first view scored by a head fitted on its
    training fold, for the images whose class that fold holds (a class it lacks scores -inf);
    `splits` yields (train, test) index arrays."""
    n, views, dim = z.shape
    n_classes = int(y.max()) + 1
    logits, rows = [], []
    for train, test in splits:
        present = np.unique(y[train])
        test = test[np.isin(y[test], present)]
        if len(present) < 2 or len(test) == 0:
            continue
        w, b = _weights(_logistic(z[train].reshape(-1, dim), np.repeat(y[train], views)),
                        len(present))
        out = np.full((len(test), n_classes), -np.inf)
        out[:, present] = z[test, 0] @ w.T + b
        logits.append(out)
        rows.append(test)
    if not rows:
        return np.zeros((0, n_classes)), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits), np.concatenate(rows)


def _out_of_fold_logits(z: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N, C) logits of each image's first view from a head fitted without that image
    (stratified folds: every training fold holds every class)."""
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    logits, rows = _fold_logits(z, y, split.split(np.zeros(len(y)), y))
    out = np.zeros_like(logits)
    out[rows] = logits
    return out


def _blocked_scores(z: np.ndarray, y: np.ndarray, groups: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of each image's first view from a head fitted without its group, for
    the images whose class some other group holds (GroupKFold, at most CV_FOLDS folds)."""
    split = GroupKFold(n_splits=min(CV_FOLDS, len(np.unique(groups))))
    logits, rows = _fold_logits(z, y, split.split(np.zeros(len(y)), y, groups))
    return logits, y[rows]


def _ood_fit(z: np.ndarray, y: np.ndarray) -> tuple[NearestSupportOOD, bool]:
    """The nearest-support score on every view, its threshold the OOD_QUANTILE quantile of the
    support images' leave-one-image-out scores; whether every class had a second image."""
    n, views, dim = z.shape
    points = z.reshape(-1, dim)
    owner = np.repeat(np.arange(n), views)
    d2 = np.maximum(2.0 - 2.0 * z[:, 0] @ points.T, 0.0)  # unit vectors
    d2[owner[None, :] == np.arange(n)[:, None]] = np.inf   # leave the image itself out
    threshold = float(np.quantile(d2.min(axis=1), OOD_QUANTILE))
    return NearestSupportOOD(points, threshold, OOD_QUANTILE), bool(np.bincount(y).min() > 1)


def _calibrate(head: FewShotHead, z: np.ndarray, y: np.ndarray, seed: int,
               alpha: float, groups: np.ndarray | None = None) -> None:
    """Temperature, conformal threshold and OOD fit of `head` from the support set; the
    threshold from folds over `groups` where they allow one (module docstring)."""
    folds = min(int(np.bincount(y).min()), CV_FOLDS)
    record: dict = {"alpha": None, "folds": None}
    missing = []
    if folds >= 2:
        logits = _out_of_fold_logits(z, y, folds, seed)
        head.temperature = fit_temperature(logits, y)
        head.conformal_qhat = conformal_threshold(softmax(logits / head.temperature, axis=-1),
                                                  y, alpha)
        head.alpha = alpha
        record.update(alpha=alpha, folds=folds,
                      out_of_fold_top1=float((logits.argmax(1) == y).mean()),
                      conformal_folds="images")
        if groups is not None and len(np.unique(groups)) >= 2:
            blocked, labels = _blocked_scores(z, y, groups)
            record["blocked_scores"] = len(labels)
            if len(labels) + 1 >= 1.0 / alpha:        # enough for a finite threshold
                head.conformal_qhat = conformal_threshold(
                    softmax(blocked / head.temperature, axis=-1), labels, alpha)
                record["conformal_folds"] = "groups"
    else:
        missing += ["temperature (kept at 1)", "conformal sets (top-1 class only)"]
    head.ood, ood_calibrated = _ood_fit(z, y)
    if not ood_calibrated:
        missing.append("OOD threshold (a lone image's nearest neighbour is of another class: "
                       "the threshold is loose and flags only frames far from every class)")
    one_shot = [c for c, n in zip(head.class_names, np.bincount(y), strict=True) if n == 1]
    if one_shot:
        missing.insert(0, f"{len(one_shot)} class(es) with one image: {one_shot}")
    record.update(temperature=head.temperature, conformal_qhat=head.conformal_qhat,
                  ood_threshold=head.ood.threshold, ood_quantile=OOD_QUANTILE,
                  ood_calibrated=ood_calibrated)
    head.calibration, head.not_calibrated = record, missing


def fit_head(features: np.ndarray, labels: Sequence[str],
             class_names: Sequence[str] | None = None, seed: int = 0,
             alpha: float = ALPHA, groups: Sequence[str] | None = None) -> FewShotHead:
    """The calibrated head on raw pooled features (n, 472) or (n, views, 472) labelled by
    class name; classes in `class_names` order (default: sorted), at least two of them;
    conformal sets at miscoverage `alpha`, calibrated over `groups` (one per image) where
    given."""
    raw = np.asarray(features, dtype=np.float64)
    raw = raw[:, None, :] if raw.ndim == 2 else raw
    names = list(class_names) if class_names is not None else sorted(set(labels))
    if len(names) < 2 or set(labels) != set(names) or len(labels) != len(raw):
        raise ModelInputError(f"a few-shot head needs images of at least two classes, each "
                              f"of {names} present; got {len(raw)} image(s) of "
                              f"{sorted(set(labels))}")
    y = np.array([names.index(label) for label in labels], dtype=np.int64)
    views = raw.shape[1]
    flat = raw.reshape(-1, raw.shape[-1])
    mean, scale = flat.mean(axis=0), flat.std(axis=0)
    scale[scale < 1e-8] = 1.0
    head = FewShotHead(names, mean, scale, np.zeros((len(names), raw.shape[-1])),
                       np.zeros(len(names)))
    z = head.normalise(raw)
    head.weight, head.bias = _weights(_logistic(z.reshape(-1, z.shape[-1]),
                                                np.repeat(y, views)), len(names))
    _calibrate(head, z, y, seed, alpha, None if groups is None else np.asarray(groups))
    return head


class StemFeatures:
    """Images in any intensity range -> raw multi-scale pooled features (N, 472) of the frozen
    pretrained stem (what `fit_head` takes)."""

    stem_sha256 = STEM_SHA256

    def __init__(self) -> None:
        self.config = FusionConfig(baseline="fewshot")
        self.stem = PretrainedStem().eval()

    def __call__(self, images) -> np.ndarray:
        x = preprocess_batch(images, self.config.in_chans, self.config.img_size)
        with torch.no_grad():
            return PooledStemEncoder.pool(self.stem(x)).numpy().astype(np.float32)


@dataclass(frozen=True)
class SupportSet:
    """Labelled raw pooled features (n, 472) float32; classes in order of first appearance;
    each example's calibration group ("": none, an image on its own; see `fit_head`)."""

    features: np.ndarray = field(default_factory=lambda: np.zeros((0, POOLED_DIM), np.float32))
    labels: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.groups:
            object.__setattr__(self, "groups", ("",) * len(self.labels))
        if len(self.groups) != len(self.labels):
            raise ModelInputError(f"{len(self.groups)} calibration groups for "
                                  f"{len(self.labels)} support examples")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        return list(dict.fromkeys(self.labels))

    def counts(self) -> dict[str, int]:
        return {name: self.labels.count(name) for name in self.class_names}

    def add(self, feature: np.ndarray, label: str, group: str = "") -> SupportSet:
        row = np.asarray(feature, dtype=np.float32).reshape(1, POOLED_DIM)
        return SupportSet(np.concatenate([self.features, row]), (*self.labels, label),
                          (*self.groups, group))

    def calibration_groups(self) -> list[str] | None:
        """One group per example for `fit_head` (an ungrouped example is a group of its
        own); None when no example has a group."""
        if not any(self.groups):
            return None
        return [g or f"#{i}" for i, g in enumerate(self.groups)]

    def fit(self, seed: int = 0, alpha: float = ALPHA) -> FewShotHead:
        return fit_head(self.features, self.labels, self.class_names, seed, alpha,
                        self.calibration_groups())

    def to_state(self) -> dict:
        return {"labels": list(self.labels), "groups": list(self.groups),
                "features": np.ascontiguousarray(self.features, dtype="<f4").tobytes()}

    @classmethod
    def from_state(cls, state: dict) -> SupportSet:
        """The support set of `to_state` (a state written before calibration groups: none)."""
        features = np.frombuffer(state["features"], dtype="<f4").reshape(-1, POOLED_DIM)
        return cls(features.copy(), tuple(state["labels"]), tuple(state.get("groups", ())))

    def save(self, folder: str | Path) -> Path:
        """`support.safetensors` in `folder`: the features, labels in its metadata."""
        path = Path(folder) / SUPPORT_FILE
        save_file({"features": torch.from_numpy(np.ascontiguousarray(self.features))},
                  str(path), metadata={"labels": json.dumps(list(self.labels)),
                                       "groups": json.dumps(list(self.groups)),
                                       "stem_sha256": STEM_SHA256})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SupportSet:
        """The support set stored beside a checkpoint (ModelInputError when there is none,
        or it was computed with another stem)."""
        path = Path(folder) / SUPPORT_FILE
        if not path.is_file():
            raise ModelInputError(f"{folder} holds no support set ({SUPPORT_FILE}): only a "
                                  "checkpoint written by a learning session (OUT.model/) or "
                                  "by `micagent train --profile fewshot` can go on learning")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features").numpy()
        if meta.get("stem_sha256") != STEM_SHA256:
            raise ModelInputError(f"{path} was computed with another stem "
                                  f"(sha256 {str(meta.get('stem_sha256'))[:16]}...)")
        return cls(features.astype(np.float32), tuple(json.loads(meta["labels"])),
                   tuple(json.loads(meta.get("groups", "[]"))))
