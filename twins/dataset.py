"""Labelled image datasets from the twin, in the SEM dataset's folder-per-class layout.

Each image is a real twin acquisition (stage move, imaging settings, acquire) inside one
class region, with randomised but sane settings: magnification relative to the region's
texture scale (so the look varies with FOV), dwell time (noise), a small focus error, and
occasionally the BSE detector. Deterministic by seed: image k of class c depends only on
(seed, c, k).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from instruments.devices.frame import ImagingSettings, StagePosition
from instruments.utils import atomic_file
from instruments.utils.image8 import to_uint8
from twins.classes import PROFILES, SEM_CLASSES
from twins.microscope import TwinMicroscope
from twins.specimen import Region, Specimen


@dataclass(frozen=True)
class DatasetSettings:
    """Ranges the generator draws from (log-uniform for zoom and dwell).

    `zoom` is image pixel size / region texture pixel size; a `survey_fraction` of the images
    instead take a FOV from `survey_fov`, the fields an unattended survey scans, where fine
    textures are only a few pixels across; `max_blur_px` bounds the defocus blur sigma; FOVs
    are clipped to `fov_limits` and to 80 % of the region's size; `specimens` twins
    (`specimen_seeds`) share the images of each class. A field
    whose noise-free contrast (std / mean) is below `min_contrast` shows nothing of its class
    (e.g. the background between two tips) and is redrawn, up to `tries` times, as a
    microscopist would move on.
    """

    zoom: tuple[float, float] = (0.5, 4.0)
    survey_fov: tuple[float, float] = (10e-6, 40e-6)
    survey_fraction: float = 0.25
    dwell: tuple[float, float] = (2e-6, 20e-6)
    min_contrast: float = 0.08
    tries: int = 8
    bse_fraction: float = 0.15
    max_blur_px: float = 1.2
    fov_limits: tuple[float, float] = (1e-6, 100e-6)
    specimens: int = 1


SPECIMEN_STRIDE = 1000


def specimen_seeds(seed: int, specimens: int) -> list[int]:
    """The specimen seeds a dataset of `seed` draws from: `seed` itself, then seeds
    SPECIMEN_STRIDE apart (1000, 2000, ... for seed 0: none of the survey seeds 0-999)."""
    return [seed + SPECIMEN_STRIDE * i for i in range(specimens)]


@dataclass
class LabelledImage:
    label: str
    index: int
    image: np.ndarray  # uint8 (size, size)
    record: dict


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _find_field(spec: Specimen, region: Region, fov: float, size: int, detector: str,
                cfg: DatasetSettings, rng: np.random.Generator) -> tuple[float, float, bool]:
    """A FOV centre inside `region` whose noise-free image shows contrast (up to `cfg.tries`
    draws); returns (x, y, whether the last draw showed enough)."""
    x = y = 0.0
    for _ in range(cfg.tries):
        x = rng.uniform(region.x0 + fov / 2, region.x1 - fov / 2)
        y = rng.uniform(region.y0 + fov / 2, region.y1 - fov / 2)
        clean, _ = spec.render((x, y), fov, size, detector)
        if float(clean.std()) >= cfg.min_contrast * float(clean.mean()):
            return x, y, True
    return x, y, False


def iter_labelled(per_class: int, size: int = 224, seed: int = 0,
                  settings: DatasetSettings | None = None,
                  microscope: TwinMicroscope | None = None,
                  first: int = 0) -> Iterator[LabelledImage]:
    """Yield `per_class` images of every SEM class, class by class; image indices start at
    `first` (a dataset of N per class drew 0..N-1: later indices are fresh draws from the
    same distribution, held out from it)."""
    if per_class < 1 or size < 16:
        raise ValueError(f"per_class must be >= 1 and size >= 16 (got {per_class}, {size})")
    cfg = settings or DatasetSettings()
    scopes = [microscope or TwinMicroscope(seed=seed, instrument_id="twin-dataset")]
    scopes += [TwinMicroscope(seed=s, instrument_id="twin-dataset")
               for s in specimen_seeds(seed, cfg.specimens)[1:]]
    for c, label in enumerate(SEM_CLASSES):
        for k in range(first, first + per_class):
            scope = scopes[k % len(scopes)]
            spec = scope.specimen
            alpha = scope.params.convergence
            regions = [i for i, r in enumerate(spec.regions)
                       if r.label == label and r.image is None]
            if not regions:
                raise ValueError(f"specimen has no region of class {label}")
            rng = np.random.default_rng([seed, c, k, 97])
            index = regions[int(rng.integers(len(regions)))]
            region = spec.regions[index]
            width = min(region.x1 - region.x0, region.y1 - region.y0)
            if rng.random() < cfg.survey_fraction:
                fov = _log_uniform(rng, *cfg.survey_fov)
            else:
                zoom = PROFILES[label].zoom or cfg.zoom
                fov = _log_uniform(rng, *zoom) * region.pixel * size
            fov = float(np.clip(fov, cfg.fov_limits[0],
                                min(cfg.fov_limits[1], 0.8 * width)))
            pixel = fov / size
            focus_error = rng.uniform(-1, 1) * 2 * cfg.max_blur_px * pixel / alpha
            dwell = _log_uniform(rng, *cfg.dwell)
            detector = "BSE" if rng.random() < cfg.bse_fraction else "SE"
            x, y, shows = _find_field(spec, region, fov, size, detector, cfg, rng)
            if not shows and detector == "BSE":  # no material contrast here: use SE
                detector = "SE"
                x, y, _ = _find_field(spec, region, fov, size, detector, cfg, rng)
            imaging = ImagingSettings(
                fov=fov, pixels=size, dwell=dwell, detector=detector,
                defocus=float(np.clip(region.z + focus_error, -50e-6, 50e-6)))
            scope.move_stage(StagePosition(x=float(x), y=float(y)))
            scope.set_imaging(imaging)
            frame = scope.acquire()
            record = {"label": label, "specimen": spec.seed, "region": index,
                      "look": spec.look(index),
                      "stage": {"x": float(x), "y": float(y)}, "fov": fov, "pixels": size,
                      "dwell": imaging.dwell, "defocus": imaging.defocus,
                      "focus_error": float(focus_error), "detector": imaging.detector,
                      "true_label_fraction": frame.evaluation["class_fractions"].get(label, 0.0)}
            yield LabelledImage(label, k, to_uint8(frame.image), record)


def render_labelled_images(per_class: int, size: int = 224, seed: int = 0,
                           specimen: Specimen | None = None
                           ) -> tuple[np.ndarray, list[str]]:
    """(images float32 (N, size, size) in [0, 1] -- the 8-bit dataset images / 255 --,
    labels) for `per_class` images of every class."""
    scope = TwinMicroscope(seed=seed, specimen=specimen, instrument_id="twin-dataset")
    items = list(iter_labelled(per_class, size, seed, microscope=scope))
    images = np.stack([it.image for it in items]).astype(np.float32) / 255.0
    return images, [it.label for it in items]


def render_dataset(out_dir: str | Path, per_class: int, size: int = 224, seed: int = 0,
                   settings: DatasetSettings | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Write OUT_DIR/<Class>/<Class>_<i>.png (8-bit grey) and OUT_DIR/manifest.json;
    returns the manifest. `progress(done, total)` is called after every image."""
    out = Path(out_dir)
    cfg = settings or DatasetSettings()
    scope = TwinMicroscope(seed=seed, instrument_id="twin-dataset")
    for label in SEM_CLASSES:
        (out / label).mkdir(parents=True, exist_ok=True)
    total = per_class * len(SEM_CLASSES)
    images = []
    for done, item in enumerate(iter_labelled(per_class, size, seed, cfg, scope), start=1):
        name = f"{item.label}/{item.label}_{item.index}.png"
        with atomic_file.atomic_path(out / name) as tmp:
            Image.fromarray(item.image).save(tmp)
        images.append({"file": name, **item.record})
        if progress is not None:
            progress(done, total)
    manifest = {
        "generator": "micagent twin dataset",
        "seed": seed, "per_class": per_class, "size": size, "classes": list(SEM_CLASSES),
        "settings": asdict(cfg), "physics": asdict(scope.params),
        "specimen": {"seed": scope.specimen.seed, "extent": scope.specimen.extent,
                     "grid": scope.specimen.grid,
                     "seeds": specimen_seeds(seed, cfg.specimens)},
        "images": images,
    }
    atomic_file.write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
