"""One seed's scene for the hunt benchmark (benchmarks/hunt_efficiency.py): the search area,
its ground truth, the overview taken through the safety guard and the classifier's reading
of every candidate's crop, cached on disk (the reading is most of the benchmark's time on
2 CPU cores: ~0.1 s a crop).

The area is the smallest square from the start holding at least N tiles of every class the
specimen has (`class_area`): the question is how fast a strategy reaches targets anywhere on
the specimen, so every class must be huntable, and the area no larger than that needs.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.acquirer import Acquirer
from agent.targeting import CropReadings, read_crops, search_area, stage_bounds, take_overview
from instruments.devices.frame import ImagingSettings
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from twins.microscope import TwinMicroscope

E = 1.602176634e-19


def electrons(settings: ImagingSettings) -> float:
    """Electrons one frame delivers."""
    return settings.beam_current * settings.dwell * settings.pixels ** 2 / E


@dataclass
class Scene:
    """The search area of one seed: candidates, their true labels, the overview's cost
    (frames, electrons, seconds to take it and to read its crops) and the crops' reading."""
    seed: int
    side: int
    candidates: list[dict[str, Any]]
    labels: list[str]
    overview_frames: int
    overview_e: float
    overview_s: float
    reading_s: float
    readings: CropReadings


def class_area(twin: TwinMicroscope, fov: float, n: int, classes: list[str],
               bounds: tuple[tuple[float, float], tuple[float, float]]) -> int:
    """Tiles a side of the smallest square area from (0, 0) holding >= n tiles of each class
    (the whole stage range's side where none does)."""
    largest = int(min(bounds[0][1] - bounds[0][0], bounds[1][1] - bounds[1][0]) / fov)
    for side in range(1, largest + 1):
        counts = Counter(twin.specimen.label_at(p["x"], p["y"])
                         for p in search_area((0.0, 0.0), fov, side * side, bounds))
        if all(counts[c] >= n for c in classes):
            return side
    return largest


def _key(seed: int, side: int, imaging: ImagingSettings, model_sha: str) -> str:
    text = f"{seed}|{side}|{imaging.fov}|{imaging.dwell}|{model_sha}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(seed: int, imaging: ImagingSettings, n: int, classifier: Any, cache: Path) -> Scene:
    """The scene of `seed` (its crop reading from `cache` where an earlier run left it)."""
    twin = TwinMicroscope(seed=seed)
    acquirer = Acquirer(GuardedMicroscope(twin, SafetyEnvelope()))
    acquirer.connect(imaging)
    bounds = stage_bounds(acquirer)
    side = class_area(twin, imaging.fov, n, list(classifier.class_names), bounds)
    candidates = search_area((0.0, 0.0), imaging.fov, side * side, bounds)
    labels = [twin.specimen.label_at(p["x"], p["y"]) for p in candidates]
    t0 = time.perf_counter()
    overview = take_overview(acquirer, imaging, candidates)
    render_s = time.perf_counter() - t0
    scan_s = sum(f.settings.pixels ** 2 * f.settings.dwell for f in overview.frames)
    overview_e = sum(electrons(f.settings) for f in overview.frames)
    path = cache / f"scene-{seed}-{_key(seed, side, imaging, classifier.checkpoint_sha256)}.npz"
    if path.exists():
        with np.load(path) as z:
            readings = CropReadings(list(z["class_names"]), z["probabilities"], z["unknown"],
                                    z["entropy"], z["embeddings"])
            reading_s = float(z["reading_s"])
    else:
        t0 = time.perf_counter()
        readings = read_crops(classifier, overview, candidates, imaging.fov)
        reading_s = time.perf_counter() - t0
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, class_names=np.array(readings.class_names),
                 probabilities=readings.probabilities, unknown=readings.unknown,
                 entropy=readings.entropy, embeddings=readings.embeddings,
                 reading_s=reading_s)
    return Scene(seed, side, candidates, labels, len(overview.frames), overview_e,
                 render_s + scan_s, reading_s, readings)
