"""Classification metrics of one evaluation (scikit-learn), calibration error, conformal sets,
and their aggregation across folds (mean and standard deviation)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from models.calibration import prediction_set

SCALARS = ("top1", "top2", "top3", "top5", "macro_precision", "macro_recall", "macro_f1",
           "ece", "ece_before_temperature", "nll", "nll_before_temperature",
           "conformal_coverage", "conformal_mean_set_size")


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Equal-width confidence bins: mean confidence, accuracy and count per bin, and the
    expected calibration error (count-weighted |accuracy - confidence|)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    safe = np.where(count > 0, count, 1.0)
    mean_conf = np.bincount(which, conf, minlength=bins) / safe
    acc = np.bincount(which, correct, minlength=bins) / safe
    ece = float(np.sum(count / len(labels) * np.abs(acc - mean_conf)))
    return {"edges": edges.tolist(), "confidence": mean_conf.tolist(), "accuracy": acc.tolist(),
            "count": count.astype(int).tolist(), "ece": ece}


def classification_metrics(raw_probs: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                           class_names: list[str], conformal_threshold: float | None) -> dict:
    """Metrics of one evaluation. `raw_probs`: softmax at T = 1; `probs`: calibrated."""
    n_classes = len(class_names)
    all_labels = list(range(n_classes))
    out: dict = {"n_images": int(len(labels))}
    for k in (1, 2, 3, 5):
        out[f"top{k}"] = float(top_k_accuracy_score(labels, probs, k=min(k, n_classes),
                                                    labels=all_labels))
    pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=all_labels,
                                                 zero_division=0)
    present = s > 0  # macro averages over the classes present in this evaluation
    out.update(macro_precision=float(p[present].mean()), macro_recall=float(r[present].mean()),
               macro_f1=float(f[present].mean()))
    out["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, c in enumerate(class_names)}
    out["confusion_matrix"] = confusion_matrix(labels, pred, labels=all_labels).tolist()
    before, after = reliability(raw_probs, labels), reliability(probs, labels)
    out.update(ece=after["ece"], ece_before_temperature=before["ece"],
               reliability={"before": before, "after": after},
               nll=float(log_loss(labels, np.clip(probs, 1e-12, 1), labels=all_labels)),
               nll_before_temperature=float(log_loss(labels, np.clip(raw_probs, 1e-12, 1),
                                                     labels=all_labels)))
    if conformal_threshold is not None:
        sets = [prediction_set(row, conformal_threshold) for row in probs]
        out["conformal_coverage"] = float(np.mean([y in s for y, s in zip(labels, sets,
                                                                           strict=True)]))
        out["conformal_mean_set_size"] = float(np.mean([len(s) for s in sets]))
    return out


def aggregate(folds: list[dict], class_names: list[str]) -> dict:
    """Mean of every scalar and per-class metric across folds, with `*_std` alongside;
    confusion matrices are summed."""
    out: dict = {"n_folds": len(folds), "n_images": int(sum(f["n_images"] for f in folds))}
    std: dict = {}
    for key in SCALARS:
        vals = [f[key] for f in folds if key in f]
        if vals:
            out[key] = float(np.mean(vals))
            std[key] = float(np.std(vals))
    out["std"] = std
    per = {}
    for c in class_names:
        row = {}
        for m in ("precision", "recall", "f1"):
            vals = [f["per_class"][c][m] for f in folds]
            row[m], row[f"{m}_std"] = float(np.mean(vals)), float(np.std(vals))
        row["support"] = int(sum(f["per_class"][c]["support"] for f in folds))
        per[c] = row
    out["per_class"] = per
    out["confusion_matrix"] = np.sum([f["confusion_matrix"] for f in folds], axis=0).tolist()
    return out
