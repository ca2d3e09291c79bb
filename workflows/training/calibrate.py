"""After training: temperature scaling and split-conformal calibration on the validation part,
the out-of-distribution fit (training-split embeddings, validation threshold), then an atomic
checkpoint save (temporary folder renamed into place)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from instruments.utils import atomic_file
from models.calibration import nll
from models.classifier import Classifier
from workflows.training.training_inputs import TrainingInputs, batched

CONFORMAL_ALPHA = 0.1


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def save_calibrated(clf: Classifier, inputs: TrainingInputs, y: torch.Tensor,
                    lmm: torch.Tensor, split, folder: Path, extra: dict,
                    alpha: float = CONFORMAL_ALPHA) -> Path:
    """Fit T and the conformal threshold on `split.val` (Classifier.calibrate: disjoint halves)
    and the OOD score, then write the checkpoint `folder` atomically, with
    `training_fold.json` beside it."""
    model = clf.model
    model.eval()
    val = np.asarray(split.val)
    logits = batched(lambda b: inputs.logits(model, b, lmm[b]), val)
    labels = y[val].numpy()
    clf.calibrate(logits, labels, alpha=alpha)
    train = np.asarray(split.train)
    clf.fit_ood(batched(lambda b: inputs.embed(model, b), train), y[train].numpy(),
                batched(lambda b: inputs.embed(model, b), val))
    with atomic_file.atomic_path(folder) as tmp:
        clf.save(tmp)
        _fold_record(tmp, clf, logits, labels, extra)
    return Path(folder)


def _fold_record(tmp: Path, clf: Classifier, logits, labels, extra: dict) -> None:
    history = extra.get("history", [])
    record = {**extra, "best_val_loss": min((h["val_loss"] for h in history), default=None),
              "temperature": clf.temperature, "conformal_qhat": clf.conformal_qhat,
              "val_nll_before": nll(logits, labels),
              "val_nll_after": nll(logits, labels, clf.temperature),
              "ood_threshold": clf.ood.threshold}
    atomic_file.write_text(tmp / "training_fold.json", json.dumps(record, indent=1))
