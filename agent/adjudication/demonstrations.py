"""The labelled demonstration bank and the choice of demonstrations for one frame."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from agent.adjudication.base import Demonstration
from instruments.utils import atomic_file

Strategy = Literal["similar", "random"]


class BankError(ValueError):
    """A demonstration bank that is empty, inconsistent or for other classes."""


class DemonstrationBank:
    """Images (N, h, w), labels, ids and classifier embeddings (N, d) of labelled examples."""

    def __init__(self, images: np.ndarray, labels: list[str], embeddings: np.ndarray,
                 ids: list[str] | None = None) -> None:
        images = np.asarray(images, dtype=np.float32)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        n = len(labels)
        if n == 0:
            raise BankError("a demonstration bank needs at least one example")
        if images.shape[0] != n or embeddings.shape[0] != n:
            raise BankError(f"bank sizes differ: {images.shape[0]} images, {n} labels, "
                            f"{embeddings.shape[0]} embeddings")
        self.images, self.labels, self.embeddings = images, list(labels), embeddings
        self.ids = list(ids) if ids is not None else [f"demo-{i:04d}" for i in range(n)]
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self._unit = embeddings / np.where(norms > 0, norms, 1.0)

    def __len__(self) -> int:
        return len(self.labels)

    def check_classes(self, class_names: list[str]) -> None:
        unknown = sorted(set(self.labels) - set(class_names))
        if unknown:
            raise BankError(f"demonstration labels {unknown} are not classes of the model "
                            f"{list(class_names)}")

    def similarities(self, embedding: np.ndarray) -> np.ndarray:
        e = np.asarray(embedding, dtype=np.float32).ravel()
        if e.shape[0] != self._unit.shape[1]:
            raise BankError(f"embedding size {e.shape[0]} != bank embedding size "
                            f"{self._unit.shape[1]} (bank built with another model?)")
        return self._unit @ (e / (np.linalg.norm(e) or 1.0))

    def select(self, embedding: np.ndarray, k: int, strategy: Strategy = "similar",
               rng: np.random.Generator | None = None) -> list[Demonstration]:
        """K demonstrations: most cosine-similar to `embedding`, or drawn at random."""
        k = min(k, len(self))
        if strategy == "similar":
            order = np.argsort(-self.similarities(embedding), kind="stable")[:k]
        elif strategy == "random":
            order = (rng or np.random.default_rng(0)).choice(len(self), size=k, replace=False)
        else:
            raise BankError(f"unknown demonstration strategy {strategy!r}")
        return [Demonstration(self.ids[i], self.labels[i], self.images[i], self.embeddings[i])
                for i in order]

    def save(self, path: str | Path) -> None:
        with atomic_file.atomic_path(Path(path).with_suffix(".npz")) as tmp:
            np.savez_compressed(tmp, images=self.images, embeddings=self.embeddings,
                                labels=np.array(self.labels), ids=np.array(self.ids))

    @classmethod
    def load(cls, path: str | Path) -> DemonstrationBank:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["images"], [str(x) for x in data["labels"]], data["embeddings"],
                           [str(x) for x in data["ids"]])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise BankError(f"cannot read demonstration bank {path}: {exc}") from exc
