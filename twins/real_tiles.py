"""Real micrographs as specimen tiles: PNG/TIFF (pillow/tifffile) and NSID HDF5 images.

NSID files are read with SciFiReaders' NSIDReader from a private temporary copy (the reader
opens files read-write), so the source file is never touched. Each tile becomes a region of
the specimen labelled `real:<name>` and is rendered with the twin's imaging physics.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twins.specimen import Region, Specimen

LENGTH_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "nm": 1e-9,
                "pm": 1e-12, "a": 1e-10, "å": 1e-10, "angstrom": 1e-10}
DEFAULT_FOV = 20e-6


class RealTileError(ValueError):
    """A real-image file that cannot be used as a tile (unreadable, no 2-D image)."""


@dataclass
class RealTile:
    """A real 2-D image with its physical pixel size (m) and origin."""

    name: str
    image: np.ndarray
    pixel: float
    source: str

    @property
    def label(self) -> str:
        return f"real:{self.name}"


def _as_image(data: np.ndarray, source: str) -> np.ndarray:
    img = np.asarray(data, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    while img.ndim > 2 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2 or min(img.shape) < 2:
        raise RealTileError(f"{source}: expected a 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise RealTileError(f"{source}: image has non-finite pixels")
    if float(img.max()) == float(img.min()):
        raise RealTileError(f"{source}: image is constant")
    return img


def load_image_file(path: str | Path, fov: float = DEFAULT_FOV) -> RealTile:
    """A PNG/TIFF/JPEG image whose width spans `fov` metres."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                data = np.asarray(im.convert("F") if im.mode not in ("RGB", "RGBA") else im)
    except (OSError, ValueError) as exc:
        raise RealTileError(f"{path}: cannot read image ({exc})") from exc
    img = _as_image(data, str(path))
    return RealTile(name=path.stem, image=img, pixel=fov / img.shape[1], source=str(path))


def _pixel_size(dataset, width: int, fov: float) -> float:
    """Pixel size (m) from the dataset's spatial dimension if its units are lengths."""
    try:
        dim = dataset._axes[1]
        scale = LENGTH_UNITS.get(str(dim.units).strip().lower())
        values = np.asarray(dim.values, dtype=float)
        if scale is not None and values.size > 1:
            step = abs(float(values[-1] - values[0])) / (values.size - 1) * scale
            if np.isfinite(step) and step > 0:
                return step
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        pass
    return fov / width


def load_nsid(path: str | Path, channels: list[str] | None = None,
              fov: float = DEFAULT_FOV) -> list[RealTile]:
    """Every IMAGE dataset of an NSID HDF5 file (or just `channels`), read from a copy."""
    import SciFiReaders

    path = Path(path)
    if not path.is_file():
        raise RealTileError(f"{path}: no such file")
    tiles: list[RealTile] = []
    with tempfile.TemporaryDirectory(prefix="micagent-nsid-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        try:
            reader = SciFiReaders.NSIDReader(str(copy))
        except Exception as exc:  # h5py/sidpy raise many kinds for a foreign file
            raise RealTileError(f"{path}: not a readable NSID file ({exc})") from exc
        try:
            found = reader.read()
            datasets = found.items() if isinstance(found, dict) else (
                (f"Channel_{i:03d}", d) for i, d in enumerate(found))
            for key, dataset in datasets:
                if channels is not None and key not in channels:
                    continue
                if "IMAGE" not in str(getattr(dataset, "data_type", "")).upper():
                    continue
                img = _as_image(np.array(dataset), f"{path}:{key}")
                tiles.append(RealTile(name=f"{path.stem}:{key}", image=img,
                                      pixel=_pixel_size(dataset, img.shape[1], fov),
                                      source=f"{path}:{key}"))
        finally:
            reader.close()
    if not tiles:
        raise RealTileError(f"{path}: no IMAGE datasets" + (f" among {channels}" if channels
                                                            else ""))
    return tiles


def load_real_tiles(path: str | Path, fov: float = DEFAULT_FOV) -> list[RealTile]:
    """Tiles from a PNG/TIFF/JPEG (one) or NSID HDF5 (one per IMAGE dataset) file."""
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5", ".nsid"):
        return load_nsid(path, fov=fov)
    if suffix in (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"):
        return [load_image_file(path, fov=fov)]
    raise RealTileError(f"{path}: unsupported image type {suffix!r}")


def add_real_tiles(specimen: Specimen, tiles: list[RealTile],
                   cells: list[int] | None = None) -> list[Region]:
    """Place tiles into specimen grid cells, one per cell, in order (default: the last
    cells that hold no real tile yet)."""
    if cells is None:
        free = [k for k, r in enumerate(specimen.regions) if r.image is None]
        if len(free) < len(tiles):
            raise RealTileError(f"{len(tiles)} tiles but only {len(free)} free cells")
        cells = free[len(free) - len(tiles):]
    if len(cells) != len(tiles):
        raise RealTileError(f"{len(tiles)} tiles but {len(cells)} cells given")
    return [specimen.place_real_tile(t.image, t.label, t.pixel, cell=cell)
            for t, cell in zip(tiles, cells, strict=True)]


def specimen_with_real_tiles(paths: list[str | Path], seed: int = 0,
                             fov: float = DEFAULT_FOV) -> Specimen:
    """A seeded specimen whose last grid cells hold the images of `paths` (every IMAGE
    dataset of an NSID file, or one PNG/TIFF each)."""
    specimen = Specimen(seed=seed)
    tiles = [tile for path in paths for tile in load_real_tiles(path, fov=fov)]
    add_real_tiles(specimen, tiles)
    return specimen
