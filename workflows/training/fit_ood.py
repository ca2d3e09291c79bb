"""Fit (or refit) a checkpoint's out-of-distribution score on the dataset it was trained on.

Training fits the score itself (workflows/training/calibrate.py); this gives one to a checkpoint
trained
before the score existed, or a new threshold quantile, without retraining: the class means and
covariance come from the training split's embeddings, the threshold from the validation split
(the splits recorded in the checkpoint's `training.json`; the selected fold for k-fold runs).
The checkpoint folder is rewritten atomically: a complete copy is renamed into place.

`fit_agreed` refits it as the agreed score (models/ood.py `AgreedOOD`: the fused Mahalanobis
score and the stem kNN score must both flag a frame; a field of view outside the taught range
flags it alone) without retraining the classifier: the Mahalanobis fit is kept (fitted anew on
the training split where the checkpoint has none), the kNN reference vectors come from the
training split (at most `per_class` per class); each threshold is the `quantile` of
in-distribution images the fits never saw, the validation split and the twin's survey tiles at
the default run settings (seeds `survey_seeds`, apart from the seeds the benchmark scores),
whichever is higher; the fields of view the training images were taken at come from the
dataset's manifest, where it records them (a twin dataset).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console

from instruments.utils import atomic_file
from models.classifier import Classifier
from models.ood import DEFAULT_QUANTILE, AgreedOOD, MahalanobisOOD, StemKnnOOD
from models.preprocess import preprocess_batch
from workflows.training.data import load_folder_dataset
from workflows.training.held_out import Progress, dataset_splits, survey_tiles
from workflows.training.train import TrainError, training_inputs
from workflows.training.training_inputs import batched


def fit_ood(ckpt: str | Path, data_dir: str | Path, quantile: float = DEFAULT_QUANTILE,
            feature_cache: str | None = None, console: Console | None = None) -> dict:
    """Fit the score, rewrite the checkpoint; returns its threshold and fit sizes."""
    console = console or Console()
    ckpt = Path(ckpt)
    record_path = ckpt / "training.json"
    if not record_path.is_file():
        raise TrainError(f"{ckpt} has no training.json: its training and validation splits "
                         "are unknown")
    record = json.loads(record_path.read_text())
    clf = Classifier.load(ckpt)
    ds = load_folder_dataset(data_dir, size=clf.config.img_size,
                             crop=record["options"].get("crop"), class_names=clf.class_names,
                             group_duplicates=False)
    position = {d: i for i, d in enumerate(ds.digests)}
    if any(d not in position for d in record["digests"]):
        raise TrainError(f"{data_dir} is not the dataset {ckpt} was trained on (images of its "
                         "training run are missing)")
    split = record["splits"][record.get("selected_fold", 0)]
    train = np.array([position[record["digests"][i]] for i in split["train"]])
    val = np.array([position[record["digests"][i]] for i in split["val"]])
    x = preprocess_batch(ds.images, channels=clf.config.in_chans, size=clf.config.img_size)
    inputs = training_inputs(clf.config, x, {"feature_cache": feature_cache, "stem_views": 1},
                             console)
    model = clf.model.eval()
    clf.fit_ood(batched(lambda b: inputs.embed(model, b), train),
                ds.labels[train],
                batched(lambda b: inputs.embed(model, b), val), quantile)
    _rewrite(ckpt, clf)
    return {"threshold": clf.ood.threshold, "quantile": quantile, "train": len(train),
            "val": len(val)}


def _rewrite(ckpt: Path, clf: Classifier) -> None:
    with atomic_file.atomic_path(ckpt) as tmp:
        shutil.copytree(ckpt, tmp)
        clf.save(tmp)
        fold_record = tmp / "training_fold.json"
        if fold_record.is_file():  # its calibration record names the threshold too
            record = json.loads(fold_record.read_text())
            record["ood_threshold"] = clf.ood.threshold
            atomic_file.write_text(fold_record, json.dumps(record, indent=1))


def fit_agreed(ckpt: str | Path, data_dir: str | Path, survey_seeds: list[int],
               per_class: int = 120, tiles: int = 48, k: int = 1, quantile: float = 0.995,
               cache: Path | None = None, progress: Progress = lambda _: None) -> dict:
    """Refit the checkpoint's OOD test as the agreed score (models/ood.py `AgreedOOD`);
    returns what it was fitted on."""
    ckpt, data_dir = Path(ckpt), Path(data_dir)
    clf = Classifier.load(ckpt)
    frames, _, info = dataset_splits(ckpt, data_dir, clf, per_class, cache, progress)
    survey, _ = survey_tiles(clf, ckpt, survey_seeds, tiles, cache, progress)
    held = (frames["val"], survey)
    current = clf.ood.fused if isinstance(clf.ood, AgreedOOD) else clf.ood
    fused = current if isinstance(current, MahalanobisOOD) else MahalanobisOOD.fit(
        frames["train"].embeddings, frames["train"].labels, len(clf.class_names),
        frames["val"].embeddings, quantile)
    fused.threshold = max(float(np.quantile(fused.score(h.embeddings), quantile))
                          for h in held)
    fused.quantile = quantile
    stem = StemKnnOOD.fit(frames["train"].pooled, k)
    stem.threshold = max(float(np.quantile(stem.score(h.pooled), quantile)) for h in held)
    taken = training_imaging(data_dir, json.loads((ckpt / "training.json").read_text()))
    fovs = [t["fov"] for t in taken]
    clf.ood = AgreedOOD(fused, stem, quantile, (min(fovs), max(fovs)) if taken else None,
                        tuple(sorted({t["detector"] for t in taken})) if taken else None)
    _rewrite(ckpt, clf)
    return {"threshold": clf.ood.threshold, "fused_threshold": fused.threshold,
            "stem_threshold": stem.threshold, "quantile": quantile, "k": k,
            "train": len(frames["train"]), "val": len(frames["val"]), "survey": len(survey),
            "survey_seeds": survey_seeds, "fov_range": clf.ood.fov_range,
            "detectors": clf.ood.detectors, **info}


def training_imaging(data_dir: Path, record: dict) -> list[dict]:
    """The field of view (m) and detector of each training image, from the dataset's
    manifest (`micagent twin dataset` writes one); empty where it does not record both."""
    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        return []
    by_file = {item.get("file"): item for item in
               json.loads(manifest.read_text()).get("images", [])}
    split = record["splits"][record.get("selected_fold", 0)]
    items = [by_file.get(record["sources"][i]) or {} for i in split["train"]]
    if any(item.get("fov") is None or not item.get("detector") for item in items):
        return []
    return [{"fov": float(item["fov"]), "detector": str(item["detector"])} for item in items]
