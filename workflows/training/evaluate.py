"""Evaluate a checkpoint on a folder dataset.

When the dataset is the one the checkpoint was trained on (its images' digests are in the
checkpoint's `training.json`), only the held-out test images of each fold are scored, each by
that fold's model (folds/fold_K for the paper profile), with the LMM answers that training gave
them; the report is then mean +- std across folds. On any other dataset every image is scored
by the checkpoint, with no LMM answers (as most frames in a session).

Class folders of classes the model does not know are foreign material: the metrics cover the
known classes only, and the foreign images are scored by the checkpoint's out-of-distribution
test (report["ood"]: the foreign classes, their image count and the fraction flagged unknown,
per class too; with the fraction of known-class images flagged beside it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from instruments.utils import atomic_file
from models.checkpoint import read_meta
from models.classifier import Classifier
from workflows.training.calibrate import softmax
from workflows.training.data import LabelledDataset, class_folders, load_folder_dataset
from workflows.training.metrics import aggregate, classification_metrics


class EvaluateError(ValueError):
    """A checkpoint and dataset that cannot be evaluated together."""


def _fold_jobs(ckpt: Path, ds: LabelledDataset) -> tuple[str, list[tuple[Path, np.ndarray,
                                                                          np.ndarray]]]:
    """(subset description, [(checkpoint folder, dataset indices, lmm label indices)])."""
    training_path = ckpt / "training.json"
    none = np.full(len(ds), -1, dtype=np.int64)
    if not training_path.exists():
        return "all images (no training record)", [(ckpt, np.arange(len(ds)), none)]
    run = json.loads(training_path.read_text())
    position = {d: i for i, d in enumerate(run["digests"])}
    here = [position.get(d) for d in ds.digests]
    if any(p is None for p in here):
        return "all images (not the training dataset)", [(ckpt, np.arange(len(ds)), none)]
    jobs = []
    folded = len(run["splits"]) > 1
    for k, split in enumerate(run["splits"]):
        test = set(split["test"])
        idx = np.array([i for i, p in enumerate(here) if p in test], dtype=np.int64)
        lmm = np.array([run["lmm_labels"][k][p] for p in here], dtype=np.int64)
        folder = ckpt / "folds" / f"fold_{k}" if folded else ckpt
        if len(idx):
            jobs.append((folder, idx, lmm))
    if not jobs:
        raise EvaluateError(f"{ckpt}: none of the training run's test images are in the data")
    return "held-out test split of the training run", jobs


def split_classes(data_dir: str | Path, class_names: list[str]) -> tuple[list[str], list[str]]:
    """(class folders the model knows, foreign class folders) of `data_dir`."""
    names = [f.name for f in class_folders(Path(data_dir))]
    known = [n for n in names if n in class_names]
    if not known:
        raise EvaluateError(f"{data_dir}: none of its class folders {names} is a class of the "
                            f"model ({class_names})")
    return known, [n for n in names if n not in class_names]


def encode(clf: Classifier, x: torch.Tensor, lmm: torch.Tensor | None,
           batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(logits, LMM-free embeddings, pooled stem features or None without a stem) of a
    batch, in chunks, model in eval mode."""
    clf.model.eval()
    logits, embeds, pooled = [], [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            part = slice(start, start + batch_size)
            fused, e, stem_pooled = clf.fusion_pass(x[part], None if lmm is None else lmm[part])
            if stem_pooled is not None:
                pooled.append(stem_pooled.double().numpy())
            logits.append(clf.decision_scores(fused, stem_pooled).double().numpy())
            embeds.append(e.double().numpy())
    return (np.concatenate(logits), np.concatenate(embeds),
            np.concatenate(pooled) if pooled else None)


def flagged(clf: Classifier, embeddings: np.ndarray,
            pooled: np.ndarray | None) -> np.ndarray | None:
    """Per image: flagged unknown by the checkpoint's OOD test on its pixels (None without an
    OOD fit); the agreed score reads the pooled stem features too."""
    if clf.ood is None:
        return None
    if getattr(clf.ood, "space", "fused") == "both":
        return clf.ood.score(embeddings, pooled) > clf.ood.threshold
    return clf.ood.score(embeddings) > clf.ood.threshold


def foreign_ood(clf: Classifier, data_dir: str | Path, foreign: list[str], size: int,
                crop: float | int | None, known_flags: list[np.ndarray | None],
                batch_size: int) -> dict:
    """report["ood"]: how many images of the foreign classes the OOD test flags unknown."""
    ds = load_folder_dataset(data_dir, size=size, crop=crop, class_names=foreign,
                             include=foreign, group_duplicates=False)
    flags = flagged(clf, *encode(clf, clf.preprocess_batch(ds.images), None, batch_size)[1:])
    out: dict = {"foreign_classes": foreign, "images": len(ds), "flagged": None,
                 "per_class": None, "known_flagged": None,
                 "method": None if clf.ood is None else clf.ood.meta()["method"]}
    if flags is None:
        out["note"] = "the checkpoint has no out-of-distribution fit: nothing is flagged"
        return out
    out["flagged"] = float(flags.mean())
    out["per_class"] = {c: float(flags[ds.labels == i].mean()) for i, c in enumerate(foreign)}
    if all(f is not None for f in known_flags):
        out["known_flagged"] = float(np.concatenate(known_flags).mean())
    return out


def evaluate(ckpt: str | Path, data_dir: str | Path, crop: float | int | None = None,
             batch_size: int = 48) -> dict:
    """The metrics report (see workflows/training/metrics.py) of `ckpt` on `data_dir`."""
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    training_path = ckpt / "training.json"
    if crop is None and training_path.exists():  # the crop the model was trained with
        crop = json.loads(training_path.read_text())["options"].get("crop")
    class_names = meta["class_names"]
    size = int(meta["fusion_config"]["img_size"])
    known, foreign = split_classes(data_dir, class_names)
    ds = load_folder_dataset(data_dir, size=size, crop=crop, class_names=class_names,
                             group_duplicates=False, include=known)
    subset, jobs = _fold_jobs(ckpt, ds)
    folds, lmm_answered, known_flags = [], 0, []
    for folder, idx, lmm in jobs:
        clf = Classifier.load(folder, class_names=class_names)
        x = clf.preprocess_batch(ds.images[idx])
        lmm_t = torch.as_tensor(lmm[idx]) if clf.config.lmm_on else None
        lmm_answered += int((lmm[idx] >= 0).sum()) if clf.config.lmm_on else 0
        logits, embeddings, pooled = encode(clf, x, lmm_t, batch_size)
        known_flags.append(flagged(clf, embeddings, pooled))
        y = ds.labels[idx]
        folds.append(classification_metrics(softmax(logits), softmax(logits, clf.temperature),
                                            y, class_names, clf.conformal_qhat))
        folds[-1]["temperature"] = clf.temperature
    report = aggregate(folds, class_names) if len(folds) > 1 else dict(folds[0])
    report.update({
        "checkpoint": str(ckpt), "data": str(Path(data_dir)), "subset": subset,
        "class_names": class_names, "ablation": meta["fusion_config"],
        "temperature": [f["temperature"] for f in folds] if len(folds) > 1
        else folds[0]["temperature"],
        "conformal_alpha": (meta.get("conformal") or {}).get("alpha"),
        "lmm_answers_used": lmm_answered, "folds": folds if len(folds) > 1 else None})
    if len(folds) > 1:
        report["reliability"] = folds[0]["reliability"]
    if foreign:
        report["ood"] = foreign_ood(Classifier.load(ckpt, class_names=class_names), data_dir,
                                    foreign, size, crop, known_flags, batch_size)
    return report


def write_plots(report: dict, folder: Path) -> list[Path]:
    """Reliability diagram (before/after temperature scaling) and confusion matrix PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, key in zip(axes, ("before", "after"), strict=True):
        rel = report["reliability"][key]
        edges = np.array(rel["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        mask = np.array(rel["count"]) > 0
        ax.bar(centres[mask], np.array(rel["accuracy"])[mask], width=width[mask] * 0.95,
               edgecolor="black", label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_title(f"{key} temperature scaling (ECE {rel['ece']:.4f})")
        ax.set_xlabel("confidence")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    paths.append(folder / "reliability.png")
    with atomic_file.atomic_path(paths[-1]) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

    cm = np.array(report["confusion_matrix"])
    names = report["class_names"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(names), 0.8 + 0.55 * len(names)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (top-1 {report['top1']:.4f})")
    fig.tight_layout()
    paths.append(folder / "confusion_matrix.png")
    with atomic_file.atomic_path(paths[-1]) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return paths


def ood_line(ood: dict) -> str:
    """One sentence on the foreign classes' images and how many were flagged unknown."""
    classes = ", ".join(ood["foreign_classes"])
    head = f"{ood['images']} images of classes the model does not know ({classes})"
    if ood["flagged"] is None:
        return f"{head}: {ood['note']}"
    known = ood.get("known_flagged")
    return (f"{head}: {ood['flagged']:.4f} flagged unknown ({ood['method']})"
            + ("" if known is None else f"; known-class images flagged: {known:.4f}"))


def markdown_report(report: dict) -> str:
    """The report as Markdown: summary metrics and the per-class table."""
    std = report.get("std", {})

    def fmt(key: str) -> str:
        v = report.get(key)
        if v is None:
            return "n/a"
        return f"{v:.4f} ± {std[key]:.4f}" if key in std else f"{v:.4f}"

    lines = [f"# Evaluation of `{report['checkpoint']}`", "",
             f"Data: `{report['data']}` — {report['subset']}; {report['n_images']} images"
             + (f", {report['n_folds']} folds (mean ± std)" if report.get("n_folds") else ""),
             "", "| metric | value |", "|---|---|"]
    for key in ("top1", "top2", "top3", "top5", "macro_precision", "macro_recall", "macro_f1",
                "ece_before_temperature", "ece", "nll_before_temperature", "nll",
                "conformal_coverage", "conformal_mean_set_size"):
        lines.append(f"| {key} | {fmt(key)} |")
    if "ood" in report:
        lines += ["", ood_line(report["ood"])]
    lines += ["", f"Conformal alpha: {report.get('conformal_alpha')}; temperature: "
              f"{report.get('temperature')}; LMM answers used: {report['lmm_answers_used']}",
              "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, row in report["per_class"].items():
        cells = [f"{row[m]:.4f}" + (f" ± {row[m + '_std']:.4f}" if m + "_std" in row else "")
                 for m in ("precision", "recall", "f1")]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {row['support']} |")
    return "\n".join(lines) + "\n"
