"""Frozen-stem feature cache: the stem's feature maps of a dataset, computed once per image and
per augmentation view, kept on disk and reused by later epochs, resumed runs and every variant
of an ablation study.

With a frozen stem (the quick profile's default) an epoch trains only the fusion layers, so the
stem (~11 ms per 224 px image on one thread, about as much as a training step of the fusion
layers) runs once per image and view instead of once per image and epoch. A view is one of the
eight symmetries of the square (workflows/training/augment.py), in the order VIEW_ORDER: identity,
mirror, half turn, mirror + half turn, then the quarter turns.

One file per (stem weights, view, input tensor): the key hashes the stem's name and weight
sha256, the timm version, the view and the exact preprocessed input tensor (its shape, i.e.
image size and channels, included), so another stem, image size, crop or dataset misses the
cache instead of reading stale features. Features are stored as float16 (half the memory; the
fusion layers compute in float32). Files are written to a temporary name and renamed, so a
killed run never leaves a half file that a later run trusts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

from instruments.utils import atomic_file
from models.stem import STEM_NAME, STEM_SHA256, PretrainedStem
from workflows.training.augment import dihedral

VIEW_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)
CHUNK = 64  # images per stem call between progress updates (the stem splits them further)
ENV_FOLDER = "MICAGENT_FEATURE_CACHE"


def default_folder() -> Path:
    """$MICAGENT_FEATURE_CACHE, else ~/.cache/micagent/stem_features."""
    env = os.environ.get(ENV_FOLDER)
    return Path(env) if env else Path.home() / ".cache" / "micagent" / "stem_features"


def cache_key(images: torch.Tensor, view: int) -> str:
    """sha256 naming the features of `images` (N, C, S, S) under dihedral `view`."""
    digest = hashlib.sha256()
    header = f"{STEM_NAME}|{STEM_SHA256}|timm {metadata.version('timm')}|view {view}|"
    digest.update((header + f"{tuple(images.shape)}|{images.dtype}").encode())
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Stem features per view, from disk when present (counts `hits` and `misses`)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_folder()
        self.hits = self.misses = 0
        self.write_error: str | None = None  # why features could not be stored, if so

    def views(self, stem: PretrainedStem, images: torch.Tensor, n_views: int,
              progress: Callable[[int, int, int], None] | None = None) -> list[torch.Tensor]:
        """Per stem level a float16 tensor (n_views, N, C, h, w); view 0 is the identity.

        `progress(view, done, total)` is called as images pass the stem.
        """
        if not 1 <= n_views <= len(VIEW_ORDER):
            raise ValueError(f"views must lie in [1, {len(VIEW_ORDER)}], got {n_views}")
        out: list[torch.Tensor] = []
        for v in range(n_views):  # filled view by view: one view's copy in memory at a time
            levels = self._one_view(stem, images, VIEW_ORDER[v], v, progress)
            if not out:
                out = [torch.empty((n_views, *f.shape), dtype=f.dtype) for f in levels]
            for stacked, level in zip(out, levels, strict=True):
                stacked[v] = level
        return out

    def _one_view(self, stem: PretrainedStem, images: torch.Tensor, k: int, v: int,
                  progress) -> list[torch.Tensor]:
        path = self.folder / f"{cache_key(images, k)}.pt"
        if path.is_file():
            try:
                levels = torch.load(path, weights_only=True)
                self.hits += 1
                return levels
            except (RuntimeError, EOFError, OSError):
                path.unlink(missing_ok=True)  # unreadable: recompute below
        self.misses += 1
        levels = compute_features(stem, dihedral(images, k),
                                  None if progress is None else lambda d, n: progress(v, d, n))
        try:
            with atomic_file.atomic_path(path) as tmp:
                torch.save(levels, tmp)
        except OSError as exc:  # a full or read-only disk costs the reuse, not the run
            self.write_error = f"{type(exc).__name__}: {exc}"
        return levels


def compute_features(stem: PretrainedStem, images: torch.Tensor,
                     progress: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
    """The stem's maps of `images` (N, C, S, S) as float16, computed CHUNK images at a time."""
    stem.eval()
    chunks: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for start in range(0, len(images), CHUNK):
            chunks.append([f.half() for f in stem(images[start:start + CHUNK])])
            if progress is not None:
                progress(min(start + CHUNK, len(images)), len(images))
    return [torch.cat(level) for level in zip(*chunks, strict=True)]
