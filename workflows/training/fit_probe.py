"""Fit a checkpoint's stem probe (models/stem_probe.py) on a labelled folder, without
retraining the fusion model.

The folder's images are split in two: the probe is trained on one part; the other (held out)
chooses the blend weight and refits the checkpoint's temperature and conformal threshold on the
blended scores (`Classifier.calibrate`: temperature on its even-indexed, threshold on its
odd-indexed images). Where the folder is a twin dataset of several specimens (its manifest
records each image's specimen), the held-out part is whole specimens, the last fifth of them:
survey tiles come from specimens the model never saw. Otherwise it is a stratified fifth of the
near-duplicate groups.

Deviation: the blend weight and the conformal threshold are fitted on the same held-out images
(the weight is one number of eleven, chosen by log-loss); the decisions' risk control is
certified on fresh images by `workflows/training/risk_calibration.py`.

The checkpoint's risk control and adjudicator measurement were made on the scores before the
probe; both are removed, to be made again (`python -m workflows.training.risk_calibration`,
`micagent measure-adjudicators`). The folder is rewritten atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from instruments.utils import atomic_file
from models.classifier import Classifier
from models.risk import RISK_FILE
from models.stem_probe import PROBE_RECORD, ProbeFit, fit_probe
from workflows.training.data import LabelledDataset, load_folder_dataset
from workflows.training.held_out import Progress
from workflows.training.train import TrainError

HELD_OUT_SHARE = 0.2
PROGRESS_EVERY = 10   # batches between progress lines
STALE_FILES = (RISK_FILE, "adjudication.json", "adjudication_reference.npz")


def held_out_mask(ds: LabelledDataset, seed: int = 0) -> tuple[np.ndarray, str]:
    """(True where an image is held out, how the split was made)."""
    specimens = _specimens(ds)
    if specimens is not None and len(set(specimens)) >= 2:
        kinds = sorted(set(specimens))
        held = kinds[len(kinds) - max(1, round(HELD_OUT_SHARE * len(kinds))):]
        return np.isin(specimens, held), f"held out: specimens {held} of {kinds}"
    folds = StratifiedGroupKFold(round(1 / HELD_OUT_SHARE), shuffle=True, random_state=seed)
    _, held = next(folds.split(ds.images, ds.labels, ds.groups))
    mask = np.zeros(len(ds.labels), dtype=bool)
    mask[held] = True
    return mask, "held out: a stratified fifth of the near-duplicate groups"


def _specimens(ds: LabelledDataset) -> np.ndarray | None:
    manifest = Path(ds.root) / "manifest.json"
    if not manifest.is_file():
        return None
    records = {r["file"]: r.get("specimen") for r in json.loads(manifest.read_text())["images"]}
    found = [records.get(source) for source in ds.sources]
    return None if any(s is None for s in found) else np.asarray(found)


def model_scores(clf: Classifier, images: np.ndarray, batch: int = 32,
                 progress: Progress = lambda _: None) -> tuple[np.ndarray, np.ndarray]:
    """(the fusion head's raw logits, the stem's pooled features) of every image."""
    clf.model.eval()
    logits, pooled = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            fused, _, stem_pooled = clf.fusion_pass(
                clf.preprocess_batch(images[start:start + batch]))
            logits.append(fused.double())
            pooled.append(stem_pooled)
            done = min(start + batch, len(images))
            if done == len(images) or (start // batch) % PROGRESS_EVERY == 0:
                progress(f"{done}/{len(images)} images through the model")
    return torch.cat(logits).numpy(), torch.cat(pooled).numpy()


def fit_stem_probe(ckpt: str | Path, data_dir: str | Path, seed: int = 0,
                   progress: Progress = lambda _: None) -> dict:
    """Fit the probe, recalibrate, rewrite the checkpoint; returns what was measured."""
    ckpt = Path(ckpt)
    clf = Classifier.load(ckpt)
    if clf.model.stem is None:
        raise TrainError(f"{ckpt} has no pretrained stem: the stem probe reads its features")
    ds = load_folder_dataset(data_dir, size=clf.config.img_size, class_names=clf.class_names)
    held, how = held_out_mask(ds, seed)
    logits, pooled = model_scores(clf, ds.images, progress=progress)
    probe, fit = fit_probe(pooled[~held], ds.labels[~held], pooled[held], ds.labels[held],
                           logits[held], len(clf.class_names), seed)
    clf.probe = probe
    with torch.no_grad():
        scores = clf.decision_scores(torch.from_numpy(logits[held]),
                                     torch.from_numpy(pooled[held]))
    clf.calibrate(scores, ds.labels[held], alpha=clf.alpha or 0.1)
    summary = _summary(fit, clf, len(held) - int(held.sum()), int(held.sum()), how, seed)
    summary["removed"] = _rewrite(ckpt, clf, summary, Path(data_dir))
    return summary


def _rewrite(ckpt: Path, clf: Classifier, summary: dict, data_dir: Path) -> list[str]:
    """Write the probe and the new calibration, and a record of the fit (with the data's
    twin manifest settings where it has them); returns the stale files removed."""
    removed = [name for name in STALE_FILES if (ckpt / name).is_file()]
    manifest = data_dir / "manifest.json"
    record = {**summary, "data": data_dir.name, "twin_dataset": None}
    if manifest.is_file():
        twin = json.loads(manifest.read_text())
        record["twin_dataset"] = {k: twin.get(k) for k in ("seed", "per_class", "size",
                                                           "settings", "specimen")}
    with atomic_file.atomic_path(ckpt) as tmp:
        shutil.copytree(ckpt, tmp)
        for name in removed:
            (tmp / name).unlink()
        clf.save(tmp)
        (tmp / PROBE_RECORD).write_text(json.dumps(record, indent=1))
    return removed


def _summary(fit: ProbeFit, clf: Classifier, fitted: int, held: int, how: str,
             seed: int) -> dict:
    return {"fit_images": fitted, "held_out_images": held, "split": how, "seed": seed,
            "blend": fit.blend, "log_loss": {str(w): v for w, v in fit.log_loss.items()},
            "top1": fit.top1, "temperature": clf.temperature,
            "conformal_qhat": clf.conformal_qhat, "conformal_alpha": clf.alpha}
