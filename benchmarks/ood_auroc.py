"""Out-of-distribution detection of a checkpoint: twin frames against foreign frames.

In-distribution: fresh twin frames (seed 7, never trained on), `--per-class` per class.
Foreign frames, each group scored separately and together:
- real: the four channels of the real NSID scan(s) in ../shared/data/nsid/ (an Asylum Cypher
  piezoresponse AFM scan of a PbTiO3 film), each whole and as its four quadrants, read with
  h5py read-only;
- blank: constant frames at several levels; saturated: twin frames x 20 clipped at the
  detector's full scale (mostly white); noise: Gaussian, uniform and Poisson pure-noise frames.
Prints the AUROC of the checkpoint's OOD score (models/ood.py; higher = more foreign), per
group and overall, and the share of each group flagged `unknown` at the stored threshold.
Target: AUROC >= 0.95.

    OMP_NUM_THREADS=1 python benchmarks/ood_auroc.py [--model CKPT] [--per-class 30]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from models.classifier import Classifier  # noqa: E402
from twins.dataset import render_labelled_images  # noqa: E402
from workflows.session_assembly import BUNDLED_MODEL  # noqa: E402

NSID_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsid"


def real_scans(folder: Path) -> list[np.ndarray]:
    """Every 2-D float dataset of the NSID files, whole and as quadrants (read-only)."""
    frames: list[np.ndarray] = []

    def visit(_name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and min(obj.shape) >= 64 \
                and np.issubdtype(obj.dtype, np.floating):
            image = np.asarray(obj[()], dtype=np.float64)
            h, w = image.shape[0] // 2, image.shape[1] // 2
            frames.extend([image, image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:]])

    for path in sorted(folder.glob("*.h5")):
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
    return frames


def synthetic_foreign(twin: np.ndarray, rng: np.random.Generator, n: int
                      ) -> dict[str, list[np.ndarray]]:
    size = twin.shape[-1]
    return {
        "blank": [np.full((size, size), level) for level in np.linspace(0, 1, n)],
        "saturated": [np.clip(twin[i] * 20, 0, 1) for i in range(n)],
        "noise": [rng.normal(0.5, 0.2, (size, size)) for _ in range(n // 3)]
        + [rng.uniform(0, 1, (size, size)) for _ in range(n // 3)]
        + [rng.poisson(3.0, (size, size)).astype(np.float64) for _ in range(n - 2 * (n // 3))],
    }


def scores(clf: Classifier, frames) -> tuple[np.ndarray, np.ndarray]:
    """(OOD scores, unknown flags) of frames."""
    preds = clf.classify(list(frames))
    return (np.array([p.ood["score"] for p in preds]),
            np.array([p.ood["unknown"] for p in preds]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--foreign", type=int, default=20, help="frames per synthetic group")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clf = Classifier.load(args.model)
    if clf.ood is None:
        raise SystemExit(f"{args.model} has no out-of-distribution fit (trained before it "
                         "existed); retrain it")
    twin, _ = render_labelled_images(args.per_class, 224, seed=7)
    rng = np.random.default_rng(7)
    groups = {"real": real_scans(NSID_FOLDER),
              **synthetic_foreign(twin, rng, args.foreign)}
    inside, inside_flag = scores(clf, twin)
    print(f"model {args.model}: threshold {clf.ood.threshold:.1f} "
          f"(quantile {clf.ood.quantile} of validation scores)")
    print(f"twin (in-distribution): {len(twin)} frames, flagged unknown "
          f"{inside_flag.mean():.3f}, median score {np.median(inside):.1f}")
    outside_all = []
    for name, frames in groups.items():
        if not frames:
            print(f"{name}: no frames (is ../shared/data/nsid/ beside the repository?)")
            continue
        outside, flag = scores(clf, frames)
        outside_all.append(outside)
        auroc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))],
                              np.r_[inside, outside])
        print(f"{name}: {len(frames)} frames, AUROC {auroc:.4f}, flagged unknown "
              f"{flag.mean():.3f}, median score {np.median(outside):.1f}")
    outside = np.concatenate(outside_all)
    auroc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))],
                          np.r_[inside, outside])
    print(f"all foreign: {len(outside)} frames, AUROC {auroc:.4f} (target >= 0.95)")


if __name__ == "__main__":
    main()
