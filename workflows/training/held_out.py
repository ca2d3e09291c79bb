"""What the refusal fits read (workflows/training/fit_ood.py with the stem kNN score,
workflows/training/adjudication.py): one pass of the model over images, giving per image the
fused LMM-free embedding, the stem's multi-scale pooled features and the calibrated
probabilities, for
- the splits of the dataset a checkpoint was trained on (`training.json`; the training split
  at most `per_class` images per class), matched by file name;
- survey tiles of the twin: the first `tiles` survey positions of each seed's specimen, imaged
  at the default `micagent run` settings (the frames a session decides).
Passes are cached in `cache` (npz per input and what the checkpoint's probabilities depend on:
weights, temperature, stem probe), since a pass over a few thousand images takes many minutes
on one core.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from instruments.utils import atomic_file
from models.checkpoint import PROBE_FILE, WEIGHTS_FILE
from models.classifier import Classifier
from models.hashing import file_sha256
from workflows.training.data import load_folder_dataset
from workflows.training.train import TrainError

Progress = Callable[[str], None]


@dataclass
class Frames:
    """Per image: label index (-1: not a class of the model), fused embedding, pooled stem
    features, calibrated probabilities."""

    labels: np.ndarray
    embeddings: np.ndarray
    pooled: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Frames:
        return Frames(*(getattr(self, f.name)[index] for f in fields(self)))


def model_pass(clf: Classifier, images, labels: np.ndarray, batch: int = 32,
               progress: Progress = lambda _: None) -> Frames:
    """The model over `images` once (eval mode, no LMM answer)."""
    model = clf.model.eval()
    if model.stem is None:
        raise TrainError("the refusal fits need a model on the pretrained stem")
    emb, pooled, logits = [], [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            fused, h_embed, stem_pooled = clf.fusion_pass(
                clf.preprocess_batch(images[start:start + batch]))
            logits.append(clf.decision_scores(fused, stem_pooled))
            emb.append(h_embed)
            pooled.append(stem_pooled)
            progress(f"{min(start + batch, len(images))}/{len(images)} images")
    probs = torch.softmax(torch.cat(logits).double() / clf.temperature, -1).numpy()
    return Frames(np.asarray(labels), torch.cat(emb).numpy(), torch.cat(pooled).numpy(), probs)


def _scores_identity(ckpt: Path, clf: Classifier) -> str:
    """What the cached probabilities depend on: the weights, the temperature and the stem
    probe."""
    probe = ckpt / PROBE_FILE
    return "|".join((file_sha256(ckpt / WEIGHTS_FILE), repr(clf.temperature),
                     file_sha256(probe) if probe.is_file() else "no probe"))


def _cached(cache: Path | None, key: str, make: Callable[[], Frames]) -> Frames:
    if cache is None:
        return make()
    path = cache / f"held-out-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return Frames(*(data[f.name] for f in fields(Frames)))
    frames = make()
    with atomic_file.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{f.name: getattr(frames, f.name) for f in fields(Frames)})
    return frames


def dataset_splits(ckpt: Path, data_dir: Path, clf: Classifier, per_class: int,
                   cache: Path | None, progress: Progress = lambda _: None
                   ) -> tuple[dict[str, Frames], dict[str, np.ndarray], dict]:
    """Frames of the train (at most per_class per class), val and test splits; the split's
    images by name (for adjudicators that look at pixels); what the match found."""
    record_path = ckpt / "training.json"
    if not record_path.is_file():
        raise TrainError(f"{ckpt} has no training.json: its splits are unknown")
    record = json.loads(record_path.read_text())
    ds = load_folder_dataset(data_dir, size=clf.config.img_size,
                             crop=record["options"].get("crop"), class_names=clf.class_names,
                             group_duplicates=False)
    position = {s: i for i, s in enumerate(ds.sources)}
    missing = [s for s in record["sources"] if s not in position]
    if missing:
        raise TrainError(f"{data_dir} is not the dataset {ckpt} was trained on ({len(missing)} "
                         f"of its images are missing, e.g. {missing[0]})")
    changed = sum(ds.digests[position[s]] != d
                  for s, d in zip(record["sources"], record["digests"], strict=True))
    split = record["splits"][record.get("selected_fold", 0)]
    scores_id = _scores_identity(ckpt, clf)
    frames, images = {}, {}
    for name in ("train", "val", "test"):
        index = np.array([position[record["sources"][i]] for i in split[name]])
        if name == "train":
            index = np.concatenate([index[ds.labels[index] == c][:per_class]
                                    for c in range(len(clf.class_names))])
        images[name] = ds.images[index]
        key = f"{scores_id}|{name}|" + ",".join(ds.digests[i] for i in index)
        progress(f"the {name} split: {len(index)} images")
        frames[name] = _cached(cache, key, lambda i=index: model_pass(
            clf, ds.images[i], ds.labels[i], progress=progress))
    return frames, images, {"changed_images": int(changed), "train_images": len(images["train"])}


def survey_tiles(clf: Classifier, ckpt: Path, seeds: list[int], tiles: int,
                 cache: Path | None, progress: Progress = lambda _: None
                 ) -> tuple[Frames, np.ndarray]:
    """Frames of the twin's survey tiles at the default run settings, and each one's seed."""
    from instruments.devices.frame import ImagingSettings
    from twins.microscope import TwinMicroscope

    settings = ImagingSettings()
    key = f"{_scores_identity(ckpt, clf)}|survey|{seeds}|{tiles}|{settings}"
    seed_of = np.repeat(np.asarray(seeds), tiles)

    def make() -> Frames:
        images, labels = [], []
        for seed in seeds:
            twin = TwinMicroscope(seed=seed)
            twin.set_imaging(settings)
            for centre in twin.specimen.survey_centres(settings.fov)[:tiles]:
                twin.move_stage(centre)
                images.append(twin.acquire().image)
                truth = twin.ground_truth(centre, settings.fov)["label"]
                labels.append(clf.class_names.index(truth) if truth in clf.class_names else -1)
            progress(f"survey tiles of twin seed {seed}")
        return model_pass(clf, images, np.array(labels), progress=progress)
    return _cached(cache, key, make), seed_of

