"""Few-shot training (`micagent train DATA --out CKPT --profile fewshot`): a head on the frozen
pretrained stem, fitted in seconds from 1 to MAX_SHOTS labelled images per class. DATA is a
folder per class, or a session file: its frames whose label a human gave (approved or
relabelled) are the support set, their labels the classes.

Each support image is seen under the eight dihedral symmetries (workflows/training/augment.py;
fewer for large support sets, see VIEW_BUDGET); the stem's multi-scale pooled features of every
view (models/pooled.py) are the support set of the head (models/fewshot_head.py: standardised,
L2-normalised, multinomial logistic regression, calibrated from the support set alone), which
becomes the checkpoint's linear head (`baseline = "fewshot"`). At inference a frame is seen
once. Chosen by measurement on the twin's ten classes (benchmarks/results/fewshot.md):
logistic regression beat class prototypes (cosine to the class mean) and shrinkage LDA, the
eight views as extra support examples beat single views, and averaging the views' features at
inference too (8x the classification time) gained nothing over that. Measured OOD threshold
rules (quantiles 0.9, 0.95, max; distances to the same class only): 0.9 flagged the most
foreign frames for a tolerable share of known ones. The identity view's raw features are
stored beside the checkpoint (`support.safetensors`) so a learning session
(`micagent run --learn --model CKPT`) can go on from them.

With one image in some class the temperature and conformal threshold cannot be estimated, and
the OOD threshold is loose: the checkpoint's config.json says so under "head"
("not_calibrated"), and so does the terminal.

Class descriptions (`--descriptions FILE.json`, {class: text}) are stored in the checkpoint
(names and texts hashed, as for every model); this head has no text branch and does not use
them, which the record and the terminal say.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from instruments.utils import atomic_file
from models.classifier import Classifier
from models.config import FusionConfig
from models.fewshot_head import LOGISTIC_C, SupportSet, fit_head
from models.preprocess import preprocess_batch
from workflows.training.augment import dihedral
from workflows.training.data import (
    NSID_SUFFIXES,
    DatasetError,
    LabelledDataset,
    class_folders,
    image_files,
    load_folder_dataset,
    resize,
    to_gray,
)

MAX_SHOTS = 20
# symmetries in the order they are used: a small support set gets all eight, a large one the
# first VIEW_BUDGET // images of them, so the stem passes (~40-80 ms each on one loaded core)
# keep the fit within a minute
SYMMETRIES = (0, 1, 4, 5, 2, 3, 6, 7)
VIEW_BUDGET = 480
NO_TEXT = ("recorded in the checkpoint, not used: the few-shot head has no text branch")


@dataclass
class FewShotFit:
    """What a fit produced: the checkpoint, the support per class, what was not calibrated."""

    path: Path
    shots: dict[str, int]
    seconds: float
    not_calibrated: list[str] = field(default_factory=list)
    descriptions: str | None = None


def check_counts(where: object, counts: dict[str, int]) -> None:
    """DatasetError for fewer than two classes, an empty class or more than MAX_SHOTS images
    in one."""
    if len(counts) < 2:
        raise DatasetError(f"{where}: few-shot training needs at least two classes, found "
                           f"{list(counts) or 'none'}")
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DatasetError(f"{where}: class folders without images: {empty}")
    crowded = {name: n for name, n in counts.items() if n > MAX_SHOTS}
    if crowded:
        raise DatasetError(f"{where}: few-shot training takes 1 to {MAX_SHOTS} images per class; "
                           f"{crowded} have more (train them with --profile quick)")


def check_support(root: str | Path) -> dict[str, int]:
    """Files per class folder, checked (`check_counts`) before any image is read."""
    counts = {f.name: len(image_files(f)) for f in class_folders(Path(root))}
    check_counts(root, counts)
    return counts


def is_session_file(path: str | Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in NSID_SUFFIXES


def human_labelled(path: str | Path, size: int = 224) -> LabelledDataset:
    """The frames of a session file whose label a human gave (approved or relabelled), as a
    dataset whose classes are those labels (sorted); their counts are checked like a support
    folder's (`check_counts`) from the decision records, before any frame is read."""
    from instruments.session_file.decision_record import Decision
    from instruments.session_file.reader import SessionReader

    path = Path(path)
    taught = (Decision.APPROVE, Decision.RELABEL)
    try:
        with SessionReader(path) as reader:
            records = reader.records()
            chosen = [i for i, r in enumerate(records)
                      if r.human and r.label and r.human.decision in taught]
            labels = [records[i].label for i in chosen]
            names = sorted(set(labels))
            check_counts(f"{path} (frames labelled by a human)",
                         {c: labels.count(c) for c in names})
            frames = [reader.frame(i) for i in chosen]
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a damaged input
        raise DatasetError(f"cannot read session file {path}: {type(exc).__name__}: {exc}"
                           ) from exc
    images = np.stack([resize(to_gray(f.image), size) for f in frames]).astype(np.float32)
    return LabelledDataset(
        root=path, class_names=names, images=images,
        labels=np.array([names.index(label) for label in labels], dtype=np.int64),
        sources=[f"{path.name}#{f.frame_id}" for f in frames],
        digests=[hashlib.sha1(im.tobytes()).hexdigest() for im in images],
        phash=np.zeros(len(frames), dtype=np.uint64), groups=np.arange(len(frames)))


def read_descriptions(path: str | Path, class_names: list[str]) -> list[str]:
    """One description per class from a JSON object {class name: text}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read descriptions {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DatasetError(f"{path}: descriptions must be a JSON object of class name -> text")
    missing = [c for c in class_names if not data.get(c, "").strip()]
    extra = sorted(set(data) - set(class_names))
    if missing or extra:
        raise DatasetError(f"{path}: descriptions must cover exactly the classes "
                           f"{class_names}; missing or empty: {missing}, not a class: {extra}")
    return [data[c] for c in class_names]


def view_count(images: int) -> int:
    """Symmetries per support image: all eight up to VIEW_BUDGET stem passes in total."""
    return int(np.clip(VIEW_BUDGET // max(images, 1), 1, len(SYMMETRIES)))


def pooled_views(clf: Classifier, x: torch.Tensor, views: int) -> np.ndarray:
    """Raw pooled stem features (N, views, 472) of every image under the first `views`
    symmetries (view 0 is the image as it is)."""
    model = clf.model.eval()
    with torch.no_grad():
        return np.stack([model.pooled.pool(model.features(dihedral(x, k))).numpy()
                         for k in SYMMETRIES[:views]], axis=1).astype(np.float64)


def support_set(data: str | Path, descriptions: str | Path | None
                ) -> tuple[LabelledDataset, list[str] | None]:
    """The support images (a session file's human-labelled frames, or a folder per class,
    checked before its images are read) and the descriptions (None without a file)."""
    if is_session_file(data):
        ds = human_labelled(data)
        return ds, read_descriptions(descriptions, ds.class_names) if descriptions else None
    names = list(check_support(data))
    texts = read_descriptions(descriptions, names) if descriptions else None
    return load_folder_dataset(data, size=224, group_duplicates=False), texts


def train_fewshot(data_dir: str | Path, out: str | Path, seed: int = 0,
                  descriptions: str | Path | None = None) -> FewShotFit:
    """Fit, calibrate and write the few-shot checkpoint folder `out` (atomically)."""
    started = time.perf_counter()
    ds, texts = support_set(data_dir, descriptions)
    clf = Classifier.create(FusionConfig(baseline="fewshot"), ds.class_names, texts)
    x = preprocess_batch(ds.images, channels=clf.config.in_chans, size=clf.config.img_size)
    views = view_count(len(x))
    raw = pooled_views(clf, x, views)
    head = fit_head(raw, [ds.class_names[i] for i in ds.labels], ds.class_names, seed)
    head.apply(clf)
    support = SupportSet(raw[:, 0].astype(np.float32),
                         tuple(ds.class_names[i] for i in ds.labels))
    seconds = time.perf_counter() - started
    clf.head = {
        "kind": "fewshot", "fitted_by": "micagent train --profile fewshot",
        "classifier": f"logistic regression (C={LOGISTIC_C:g}) on the stem's multi-scale "
                      f"pooled features, {views} dihedral view(s) per support image",
        "support": dict(zip(ds.class_names, np.bincount(ds.labels).tolist(), strict=True)),
        "sources": ds.sources, "digests": ds.digests, "calibration": head.calibration,
        "not_calibrated": head.not_calibrated, "descriptions": NO_TEXT if texts else None,
        "seed": seed, "fit_seconds": round(seconds, 2),
        "torch_threads": torch.get_num_threads()}
    with atomic_file.atomic_path(out) as tmp:
        clf.save(tmp)
        support.save(tmp)
    return FewShotFit(Path(out), clf.head["support"], seconds, head.not_calibrated,
                      NO_TEXT if texts else None)
