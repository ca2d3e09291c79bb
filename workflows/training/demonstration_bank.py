"""Building the labelled demonstration bank that the adjudicator draws its few-shot examples
from: from the twin's rendered, labelled images, or from a folder-per-class dataset. The bank
holds each example's image (downsized for prompts), label, id and classifier embedding; it is
cached on disk keyed by the checkpoint hash and the source."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from skimage.transform import resize

from agent.adjudication.demonstrations import BankError, DemonstrationBank

PROMPT_SIDE = 128
BANK_PER_CLASS = 6


class BankCacheWarning(UserWarning):
    """A cached demonstration bank could not be read and is built again."""


def bank_from_images(classifier: Any, images: np.ndarray | list[np.ndarray],
                     labels: list[str], ids: list[str] | None = None) -> DemonstrationBank:
    """Embed labelled images with `classifier` and keep prompt-sized copies."""
    embeddings = classifier.embed(images)
    small = np.stack([resize(np.asarray(im, dtype=np.float32), (PROMPT_SIDE, PROMPT_SIDE),
                             anti_aliasing=True, preserve_range=True) for im in images])
    bank = DemonstrationBank(small.astype(np.float32), list(labels), embeddings, ids)
    bank.check_classes(classifier.class_names)
    return bank


def twin_bank(classifier: Any, per_class: int = 8, size: int = 224,
              seed: int = 0) -> DemonstrationBank:
    """Demonstrations rendered by the twin, with a seed apart from any session's specimen."""
    from twins.dataset import render_labelled_images
    images, labels = render_labelled_images(per_class=per_class, size=size,
                                            seed=seed + 1_000_003)
    ids = [f"twin-s{seed}-{i:04d}-{lab}" for i, lab in enumerate(labels)]
    return bank_from_images(classifier, images, labels, ids)


def folder_bank(classifier: Any, root: str | Path, per_class: int = 8,
                seed: int = 0) -> DemonstrationBank:
    """Up to `per_class` random images of each class folder of a folder-per-class dataset."""
    from workflows.training.data import load_folder_dataset
    data = load_folder_dataset(root, class_names=classifier.class_names)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k in range(len(data.class_names)):
        members = np.flatnonzero(data.labels == k)
        chosen.extend(rng.permutation(members)[:per_class].tolist())
    labels = [data.class_names[int(data.labels[i])] for i in chosen]
    ids = [data.sources[i] for i in chosen]
    return bank_from_images(classifier, data.images[chosen], labels, ids)


def cached_bank(classifier: Any, cache_dir: str | Path, source: str, per_class: int = 8,
                seed: int = 0) -> DemonstrationBank:
    """The bank for `source` ("twin" or a dataset folder), built once per checkpoint."""
    sha = getattr(classifier, "checkpoint_sha256", None) or "uncheckpointed"
    key = hashlib.sha256(f"{sha}|{source}|{per_class}|{seed}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"bank-{key}.npz"
    if path.exists() and sha != "uncheckpointed":
        try:
            return DemonstrationBank.load(path)
        except BankError as exc:             # e.g. a write cut short before writes were atomic
            warnings.warn(f"rebuilding the demonstration bank: the cached one is unreadable "
                          f"({exc})", BankCacheWarning, stacklevel=2)
    bank = (twin_bank(classifier, per_class, seed=seed) if source == "twin"
            else folder_bank(classifier, source, per_class, seed))
    bank.save(path)                          # temporary name, fsync, rename
    return bank


def session_bank(classifier: Any, state_dir: str | Path, source: str | None,
                 seed: int) -> DemonstrationBank | None:
    """The bank a session draws demonstrations from: `source` "twin" (the default), a dataset
    folder, or "none" (no bank); cached under `state_dir`/banks."""
    source = source or "twin"
    if source == "none":
        return None
    return cached_bank(classifier, Path(state_dir) / "banks", source, per_class=BANK_PER_CLASS,
                       seed=seed)
