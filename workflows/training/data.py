"""Folder-per-class image datasets (the layout of the SEM dataset of Aversa et al. 2018).

`DATA_DIR/<class name>/<image>` with PNG, JPEG or TIFF images (grayscale or RGB; RGB is turned
into luminance, since the classifier takes 2-D micrographs) and NSID HDF5 files (every IMAGE
dataset in the file is one image, read with SciFiReaders from a temporary copy because its
reader opens files for writing). An instrument info bar along the bottom can be cropped off
(`crop_bottom`: pixels if >= 1, a fraction of the height if < 1). Every image is resized to
`size` x `size` at load time so that datasets of full-size micrographs fit in memory; the
intensity range is kept as it is (the model's preprocessing normalises it).

Near-duplicates (perceptual hash within `max_hash_distance` bits) share a group id, so that a
split can keep them on one side (see workflows/training/splits.py).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
NSID_SUFFIXES = {".h5", ".hdf5"}


class DatasetError(ValueError):
    """A dataset folder that cannot be used as it is (says which folder or file and why)."""


@dataclass
class LabelledDataset:
    """Images of one folder dataset, in memory.

    `images`: float32 (N, size, size); `labels`: int64 indices into `class_names`;
    `sources`: path relative to the root (`file.h5#Channel_000` for NSID datasets);
    `digests`: sha1 of the stored pixels (identifies an image across runs);
    `phash`: 64-bit perceptual hashes; `groups`: near-duplicate group id per image.
    """

    root: Path
    class_names: list[str]
    images: np.ndarray
    labels: np.ndarray
    sources: list[str]
    digests: list[str]
    phash: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray) -> LabelledDataset:
        """The images at `index`, same classes."""
        idx = np.asarray(index, dtype=np.int64)
        return LabelledDataset(
            root=self.root, class_names=list(self.class_names), images=self.images[idx],
            labels=self.labels[idx], sources=[self.sources[i] for i in idx],
            digests=[self.digests[i] for i in idx], phash=self.phash[idx],
            groups=self.groups[idx])

    def fingerprint(self) -> str:
        """Hash of class names and image digests: the same data gives the same fingerprint."""
        h = hashlib.sha256("\n".join(self.class_names).encode())
        for d, y in zip(self.digests, self.labels.tolist(), strict=True):
            h.update(f"{d}:{y}".encode())
        return h.hexdigest()


def parse_crop(value: str | float | int | None) -> float | int | None:
    """`--crop-bottom` value: an int >= 1 is pixels, a float in (0, 1) a fraction."""
    if value is None or value == "" or value == 0:
        return None
    v = float(value)
    if v < 0:
        raise DatasetError(f"crop-bottom must not be negative, got {value}")
    if v < 1:
        return v
    if v != int(v):
        raise DatasetError(f"crop-bottom is pixels (integer >= 1) or a fraction < 1, got {value}")
    return int(v)


def class_folders(root: Path) -> list[Path]:
    """Sorted, non-hidden sub-folders of `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """Image and NSID files in one class folder (not recursive), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES | NSID_SUFFIXES)


def crop_bottom(image: np.ndarray, crop: float | int | None) -> np.ndarray:
    """Remove the bottom rows (an SEM info bar)."""
    if crop is None:
        return image
    rows = int(round(image.shape[0] * crop)) if isinstance(crop, float) else int(crop)
    if rows >= image.shape[0]:
        raise DatasetError(f"crop-bottom {crop} removes all {image.shape[0]} rows of an image")
    return image[: image.shape[0] - rows]


def to_gray(array: np.ndarray) -> np.ndarray:
    """2-D float32 from (H, W), (H, W, 3|4) or (H, W, 1) arrays (ITU-R 601 luminance)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise DatasetError(f"expected a 2-D or RGB image, got shape {array.shape}")
    return a.astype(np.float32)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D float image to size x size."""
    if image.shape == (size, size):
        return image.astype(np.float32)
    pil = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(pil.resize((size, size), Image.BILINEAR), dtype=np.float32)


def read_image_file(path: Path) -> np.ndarray:
    """Pixels of a PNG/JPEG/TIFF file as a 2-D float32 array (RGB -> luminance)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float32)
        elif im.mode in ("L", "RGB", "RGBA"):
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("RGB"))
    return to_gray(arr)


def read_nsid_images(path: Path) -> list[tuple[str, np.ndarray]]:
    """(dataset key, 2-D image) for every IMAGE dataset of an NSID HDF5 file.

    SciFiReaders' NSIDReader opens files read-write, so it reads a temporary copy.
    """
    import SciFiReaders

    with tempfile.TemporaryDirectory(prefix="micagent_nsid_") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        reader = SciFiReaders.NSIDReader(str(copy))
        try:
            datasets = reader.read()
            items = datasets.items() if isinstance(datasets, dict) else enumerate(datasets)
            out = []
            for key, ds in items:
                if "IMAGE" in str(getattr(ds, "data_type", "")).upper() and ds.ndim == 2:
                    out.append((str(key), np.asarray(ds, dtype=np.float32)))
        finally:
            close = getattr(reader, "close", None)
            if callable(close):
                close()
    if not out:
        raise DatasetError(f"{path}: no 2-D IMAGE dataset in this NSID file")
    return out


def phash(image: np.ndarray) -> np.uint64:
    """64-bit DCT perceptual hash (32x32 low-pass, 8x8 lowest frequencies vs their median)."""
    small = resize(image, 32).astype(np.float64)
    coeffs = dctn(small, norm="ortho")[:8, :8].ravel()
    bits = coeffs > np.median(coeffs[1:])
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def near_duplicate_groups(hashes: np.ndarray, max_distance: int = 4,
                          chunk: int = 256) -> np.ndarray:
    """Group ids joining images whose hashes differ in <= max_distance bits (transitively)."""
    n = len(hashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    h = np.asarray(hashes, dtype=np.uint64)
    for start in range(0, n, chunk):
        x = h[start:start + chunk, None] ^ h[None, :]
        dist = _POPCOUNT[x.view(np.uint8)].reshape(x.shape[0], n, 8).sum(-1)
        rows, cols = np.nonzero(dist <= max_distance)
        for r, c in zip(rows + start, cols, strict=True):
            if c > r:
                a, b = find(r), find(c)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(n)])
    _, groups = np.unique(roots, return_inverse=True)
    return groups.astype(np.int64)


def load_folder_dataset(root: str | Path, size: int = 224,
                        crop: float | int | None = None,
                        class_names: Sequence[str] | None = None,
                        group_duplicates: bool = True, max_hash_distance: int = 4,
                        progress: Callable[[int, int], None] | None = None,
                        include: Sequence[str] | None = None) -> LabelledDataset:
    """Read a folder-per-class dataset into memory.

    `class_names`: the classes the caller expects (e.g. a checkpoint's); every class folder
    must be one of them (folders of the other classes may be absent). Without it, the class
    folders define the classes (at least two, none empty). Unreadable or truncated files are
    reported together in one DatasetError. `include`: read only these class folders.
    """
    root = Path(root)
    folders = [f for f in class_folders(root) if include is None or f.name in include]
    names = [f.name for f in folders]
    if class_names is not None:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DatasetError(
                f"{root}: class folders {unknown} are not classes of the model "
                f"({list(class_names)}); the model was trained on another class set")
        classes = list(class_names)
    else:
        classes = names
        if len(classes) < 2:
            raise DatasetError(f"{root}: need at least two class folders, found {names or 'none'}")
    files = {f.name: image_files(f) for f in folders}
    empty = [n for n, fs in files.items() if not fs]
    if empty:
        raise DatasetError(f"{root}: class folders without images: {empty}")

    entries = [(name, p) for name in names for p in files[name]]
    images, labels, sources, digests, errors = [], [], [], [], []
    for i, (name, path) in enumerate(entries):
        rel = path.relative_to(root).as_posix()
        try:
            if path.suffix.lower() in NSID_SUFFIXES:
                frames = [(f"{rel}#{k}", a) for k, a in read_nsid_images(path)]
            else:
                frames = [(rel, read_image_file(path))]
            for src, arr in frames:
                if not np.all(np.isfinite(arr)):
                    raise DatasetError("non-finite pixels")
                img = resize(crop_bottom(arr, crop), size)
                images.append(img)
                labels.append(classes.index(name))
                sources.append(src)
                digests.append(hashlib.sha1(img.tobytes()).hexdigest())
        except Exception as exc:  # noqa: BLE001 - every reader error is reported by file
            errors.append(f"{rel}: {type(exc).__name__}: {exc}")
        if progress is not None:
            progress(i + 1, len(entries))
    if errors:
        shown = "\n  ".join(errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DatasetError(f"{root}: {len(errors)} unreadable image file(s):\n  {shown}{more}")
    stack = np.stack(images).astype(np.float32)
    hashes = np.array([phash(im) for im in stack], dtype=np.uint64)
    groups = (near_duplicate_groups(hashes, max_hash_distance) if group_duplicates
              else np.arange(len(stack), dtype=np.int64))
    return LabelledDataset(root=root, class_names=classes, images=stack,
                           labels=np.asarray(labels, dtype=np.int64), sources=sources,
                           digests=digests, phash=hashes, groups=groups)
