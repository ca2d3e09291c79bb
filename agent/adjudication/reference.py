"""The training set's embeddings, stored beside a checkpoint, for the offline adjudicator.

The offline adjudicator used to vote among a demonstration bank rendered with other settings
than the model's training data. It now votes among the embeddings (`Classifier.embed`: the
LMM-free fused embedding) of the images the model was trained on, with the labels they were
trained with. `adjudication_reference.npz` holds them (unit-norm, float16), their labels, and
the vote's parameters chosen on the validation split (workflows/training/adjudication.py):
`k` neighbours, the least vote share `min_share` and the least cosine similarity to the
nearest training image `min_similarity` below which the adjudicator abstains.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instruments.utils import atomic_file
from models.checkpoint_sidecar import read_sidecar

REFERENCE_FILE = "adjudication_reference.npz"


class ReferenceFileError(ValueError):
    """A reference file that cannot be read or does not fit the model."""


@dataclass
class VoteRule:
    """k nearest neighbours vote; abstain under `min_share` or `min_similarity`."""

    k: int = 10
    min_share: float = 0.0
    min_similarity: float = -1.0

    def as_dict(self) -> dict[str, float]:
        return {"k": self.k, "min_share": self.min_share, "min_similarity": self.min_similarity}


@dataclass
class TrainingReference:
    """Unit-norm embeddings (n, e), their class indices (n,), the class names, the vote rule."""

    embeddings: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    rule: VoteRule

    @classmethod
    def build(cls, embeddings: np.ndarray, labels: np.ndarray, class_names: list[str],
              rule: VoteRule | None = None) -> TrainingReference:
        e = np.asarray(embeddings, dtype=np.float32)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return cls(e, np.asarray(labels, dtype=np.int64), list(class_names),
                   rule or VoteRule())

    def neighbours(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, k) cosine similarities and indices of the k most similar training images."""
        e = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        if e.shape[1] != self.embeddings.shape[1]:
            raise ReferenceFileError(f"embedding size {e.shape[1]} != reference embedding size "
                                 f"{self.embeddings.shape[1]} (built with another model?)")
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        sims = e @ self.embeddings.T
        k = min(k, sims.shape[1])
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, axis=1), order

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / REFERENCE_FILE
        with atomic_file.atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, embeddings=self.embeddings.astype(np.float16),
                                    labels=self.labels,
                                    meta=np.array(json.dumps({"class_names": self.class_names,
                                                              "rule": self.rule.as_dict()})))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> TrainingReference | None:
        """The reference beside a checkpoint; None where the checkpoint has none."""
        return read_sidecar(folder, REFERENCE_FILE, cls._read, ReferenceFileError,
                            (OSError, KeyError, ValueError, TypeError, EOFError,
                             zipfile.BadZipFile))

    @classmethod
    def _read(cls, path: Path) -> TrainingReference:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(data["embeddings"].astype(np.float32), data["labels"],
                       list(meta["class_names"]), VoteRule(**meta["rule"]))
