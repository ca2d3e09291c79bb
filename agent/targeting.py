"""Where to look next: the search area and the strategies that order it.

A hunt or an exploration searches a square area centred where the stage stood at the start,
`ceil(sqrt(frames))` tiles a side (the area an outward spiral of the frame budget covers).
Strategies:
- `grid`: row-major over the area (a survey's plan);
- `spiral`: outward from the start;
- `overview`: a low-magnification overview of the area first (SmartScope/Ptolemy's atlas ->
  square order), each candidate tile's crop scored by the classifier (probability of the
  target classes, zero where OOD flags it; for `explore`, the predictive entropy), best first;
- `active`: a Gaussian-process surrogate (scikit-learn) and an upper-confidence bound less a
  travel cost picks the next tile from what the frames so far found. Its inputs are stage
  coordinates plus, where ACTIVE_INPUTS asks for them, what an overview tells of each
  candidate: the crop's embedding features (PCA of the classifier's fused embedding) and its
  score as the prior mean. Deviation from the brief: a visited frame's own high-magnification
  embedding is not an input; it lives at another scale than the candidates' overview crops,
  so the kernel would compare unlike things. A visited tile is described by its overview crop,
  as every unvisited one is.
Every candidate lies inside the stage range and the envelope's stage limits; moves outside the
free zone still ask for approval in the safety guard below the acquirer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from instruments.devices.frame import Frame, ImagingSettings

STRATEGIES = ("grid", "spiral", "overview", "active")
OBJECTIVE_KINDS = ("survey", "hunt", "explore")
DEFAULT_STRATEGY = {"survey": "grid", "hunt": "active", "explore": "active"}
"""A hunt's default is the strategy that measured best (benchmarks/results/hunt_efficiency.md);
`resolve_strategy` names the exception, an overview the instrument serves."""

OVERVIEW_PIXELS = 256        # pixels a side of each overview frame
UCB_BETA = 1.0               # weight of the surrogate's standard deviation
TRAVEL_COST = 0.005          # score units per tile pitch of stage travel
LENGTH_SCALE_TILES = 2.0     # the GP's RBF length scale on the tile grid (fixed: see below)
MAX_OBSERVATIONS = 128       # the most outcomes the GP is fitted to (see `training_set`)
ACTIVE_INPUTS = {"hunt": (False, False), "explore": (False, True)}
"""What the `active` surrogate reads of an overview besides stage coordinates, per objective:
(the overview's score as prior mean, the crops' embedding features). Measured on 20 twin
seeds (benchmarks/results/hunt_efficiency.md): a hunt reads none, since the overview's 49-121
frames cost more than its prior and features save (median frames to N 22.5 on coordinates
alone, 127 with the overview); `explore` reads the features, which let it seek novelty in
appearance, not only in space (9 classes by 50 frames against 8 on coordinates; 3 and 5
against 4 and 6 by 10 and 25, so a mixed gain, bought with the overview's frames)."""
FEATURE_COMPONENTS = 8       # PCA components of the crops' embeddings the GP reads
FEATURE_LENGTH_SCALE = 4.0   # the RBF length scale on those (whitened) components


class StrategyError(ValueError):
    """A strategy that does not exist, or does not fit the objective."""


def resolve_strategy(strategy: str, kind: str, served_overview: bool = False) -> str:
    """The strategy a session uses: the one named, or the objective's default. A hunt on an
    instrument that serves its overview (DTMicroscope's dataset, a tile source) defaults to
    `overview`: there the overview costs no frame, and with the overview free it needs the
    fewest high-magnification frames (median 6 against active's 22.5 on the twin)."""
    if not strategy:
        return "overview" if served_overview and kind == "hunt" else DEFAULT_STRATEGY[kind]
    if strategy not in STRATEGIES:
        raise StrategyError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    return strategy


def search_area(start: tuple[float, float], fov: float, frames: int,
                bounds: tuple[tuple[float, float], tuple[float, float]]
                ) -> list[dict[str, Any]]:
    """Tile centres (row-major, rows of increasing y) of the square search area centred on
    `start`, keeping only tiles that lie wholly inside `bounds` ((x0, x1), (y0, y1))."""
    side = max(1, math.ceil(math.sqrt(frames)))
    (bx0, bx1), (by0, by1) = bounds
    half = fov / 2
    x0, y0 = start[0] - side * fov / 2, start[1] - side * fov / 2
    out = []
    for row in range(side):
        for col in range(side):
            x, y = x0 + (col + 0.5) * fov, y0 + (row + 0.5) * fov
            if bx0 <= x - half and x + half <= bx1 and by0 <= y - half and y + half <= by1:
                out.append({"x": x, "y": y, "row": row, "col": col})
    return out


def spiral_order(candidates: list[dict[str, Any]], start: tuple[float, float]
                 ) -> list[dict[str, Any]]:
    """The candidates nearest the start first (ties by angle: an outward spiral)."""
    def key(p: dict[str, Any]) -> tuple[float, float]:
        dx, dy = p["x"] - start[0], p["y"] - start[1]
        return round(max(abs(dx), abs(dy)), 12), math.atan2(dy, dx)
    return sorted(candidates, key=key)


# --- overview -----------------------------------------------------------------------------
@dataclass
class Overview:
    """A low-magnification mosaic of the search area: `image` rows of increasing y, pixel
    (0, 0)'s corner at `origin` (m), `pixel` m a side; the frames it was made from."""
    image: np.ndarray
    origin: tuple[float, float]
    pixel: float
    frames: list[Frame]

    def crop(self, x: float, y: float, fov: float) -> np.ndarray:
        """The square of side `fov` centred at (x, y)."""
        n = max(2, int(round(fov / self.pixel)))
        c0 = int(round((x - fov / 2 - self.origin[0]) / self.pixel))
        r0 = int(round((y - fov / 2 - self.origin[1]) / self.pixel))
        rows, cols = self.image.shape
        r0, c0 = min(max(r0, 0), rows - n), min(max(c0, 0), cols - n)
        return self.image[r0:r0 + n, c0:c0 + n]


def overview_plan(candidates: list[dict[str, Any]], fov: float, max_fov: float
                  ) -> tuple[tuple[float, float], float, list[tuple[float, float]]]:
    """Where the overview's frames go: (origin of the mosaic, overview FOV, frame centres)
    covering the candidates' bounding box with as few frames of at most `max_fov` as fit."""
    xs = [p["x"] for p in candidates]
    ys = [p["y"] for p in candidates]
    x0, x1 = min(xs) - fov / 2, max(xs) + fov / 2
    y0, y1 = min(ys) - fov / 2, max(ys) + fov / 2
    span = max(x1 - x0, y1 - y0)
    count = max(1, math.ceil(span / max_fov - 1e-9))
    ofov = span / count
    centres = [(x0 + (c + 0.5) * ofov, y0 + (r + 0.5) * ofov)
               for r in range(count) for c in range(count)]
    return (x0, y0), ofov, centres


def take_overview(acquirer: Any, imaging: ImagingSettings, candidates: list[dict[str, Any]]
                  ) -> Overview:
    """The overview of the candidates' area, taken through the acquirer (and so the safety
    guard) at the widest FOV both the instrument and the envelope allow. InstrumentError
    (from the guard or the instrument) where a frame cannot be taken."""
    caps = acquirer.capabilities()
    max_fov = min(caps.fov_range[1], acquirer.envelope.fov[1])
    origin, ofov, centres = overview_plan(candidates, imaging.fov, max_fov)
    count = int(round(math.sqrt(len(centres))))
    settings = replace(imaging, fov=ofov, pixels=OVERVIEW_PIXELS)
    mosaic = np.zeros((count * OVERVIEW_PIXELS, count * OVERVIEW_PIXELS), np.float32)
    frames = []
    for index, (x, y) in enumerate(centres):
        shot = acquirer.look({"x": x, "y": y}, settings)
        if shot.error is not None:
            raise shot.error
        r, c = divmod(index, count)
        mosaic[r * OVERVIEW_PIXELS:(r + 1) * OVERVIEW_PIXELS,
               c * OVERVIEW_PIXELS:(c + 1) * OVERVIEW_PIXELS] = shot.frame.image
        frames.append(shot.frame)
    return Overview(mosaic, origin, ofov / OVERVIEW_PIXELS, frames)


@dataclass
class CropReadings:
    """What the classifier read on each candidate's overview crop: calibrated
    `probabilities` (n, classes), the OOD test's `unknown` flags (n,), the predictive
    `entropy` (n,) and the fused `embeddings` (n, e)."""
    class_names: list[str]
    probabilities: np.ndarray
    unknown: np.ndarray
    entropy: np.ndarray
    embeddings: np.ndarray


def read_crops(classifier: Any, overview: Overview, candidates: list[dict[str, Any]],
               fov: float) -> CropReadings:
    """The classifier's reading of every candidate's crop of the overview."""
    crops = [overview.crop(p["x"], p["y"], fov) for p in candidates]
    predictions = classifier.classify(crops)
    return CropReadings(
        class_names=list(classifier.class_names),
        probabilities=np.stack([p.probabilities for p in predictions]),
        unknown=np.array([bool(p.ood and p.ood.get("unknown")) for p in predictions]),
        entropy=np.array([float(p.entropy) for p in predictions]),
        embeddings=np.stack([p.embedding for p in predictions]))


def objective_scores(readings: CropReadings, objective: dict[str, Any]) -> np.ndarray:
    """Each candidate's score: for a hunt the probability of the target classes (0 where the
    OOD test calls the crop unknown), for `explore` the entropy."""
    if objective["kind"] != "hunt":
        return readings.entropy.astype(np.float64)
    columns = [readings.class_names.index(c) for c in objective["classes"]]
    p = readings.probabilities[:, columns].sum(axis=1).astype(np.float64)
    return np.where(readings.unknown, 0.0, p)


def crop_features(embeddings: np.ndarray, components: int = FEATURE_COMPONENTS) -> np.ndarray:
    """The surrogate's embedding features: the crops' fused embeddings reduced by PCA to
    `components` whitened components (unit variance over the search area), rounded to 4
    decimals so the plan file that keeps them stays small."""
    from sklearn.decomposition import PCA

    k = max(0, min(components, len(embeddings) - 1, embeddings.shape[1]))
    if k == 0:
        return np.zeros((len(embeddings), 0))
    reduced = PCA(n_components=k, whiten=True, svd_solver="full").fit_transform(
        embeddings.astype(np.float64))
    return np.round(reduced, 4)


def score_map(candidates: list[dict[str, Any]], scores: np.ndarray) -> np.ndarray:
    """The scores on the search area's tile grid (rows, cols); NaN where no candidate."""
    rows = 1 + max(p["row"] for p in candidates)
    cols = 1 + max(p["col"] for p in candidates)
    out = np.full((rows, cols), np.nan, np.float32)
    for p, s in zip(candidates, scores, strict=True):
        out[p["row"], p["col"]] = s
    return out


def rank(candidates: list[dict[str, Any]], scores: np.ndarray,
         start: tuple[float, float]) -> list[dict[str, Any]]:
    """Best score first; among equal scores the nearer to the start (stable, deterministic)."""
    order = sorted(range(len(candidates)), key=lambda i: (
        -round(float(scores[i]), 9),
        math.hypot(candidates[i]["x"] - start[0], candidates[i]["y"] - start[1]), i))
    return [{**candidates[i], "score": float(scores[i])} for i in order]


# --- active -------------------------------------------------------------------------------
def surrogate_inputs(candidates: list[dict[str, Any]], fov: float
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """The GP's inputs per candidate, in kernel length-scale units: stage coordinates (tile
    pitches / LENGTH_SCALE_TILES) and, where the plan holds them, the overview crop's
    embedding features (/ FEATURE_LENGTH_SCALE); and the prior mean (the overview's score)
    where the plan holds one, else None."""
    xy = np.array([[p["x"], p["y"]] for p in candidates]) / fov / LENGTH_SCALE_TILES
    parts = [xy]
    if "features" in candidates[0]:
        parts.append(np.array([p["features"] for p in candidates], np.float64)
                     / FEATURE_LENGTH_SCALE)
    prior = (np.array([p["prior"] for p in candidates], np.float64)
             if "prior" in candidates[0] else None)
    return np.hstack(parts), prior


def training_set(chosen: list[int], outcomes: np.ndarray) -> np.ndarray:
    """Positions (into `chosen`) of the outcomes the GP is fitted to: every hit, then the
    latest misses, MAX_OBSERVATIONS in all. An exact GP's choice costs O(n^2) per candidate in
    the outcomes it holds: on a 2,700-tile area a long search would reach seconds a choice. A
    forgotten old miss lies far behind the search (its tile is taken in any case)."""
    order = np.arange(len(chosen))
    if len(order) <= MAX_OBSERVATIONS:
        return order
    hits, misses = order[outcomes > 0], order[outcomes <= 0]
    keep = max(0, MAX_OBSERVATIONS - len(hits))
    return np.sort(np.concatenate([hits[-MAX_OBSERVATIONS:], misses[len(misses) - keep:]]))


def choose_next(candidates: list[dict[str, Any]], chosen: list[int], outcomes: list[float],
                here: tuple[float, float], fov: float) -> int | None:
    """The index of the next candidate: the highest upper confidence bound of a Gaussian
    process fitted to the outcomes (1 target found, 0 not) at the chosen tiles, less the
    travel from `here` in tile pitches; None when every candidate has been chosen.

    Inputs (`surrogate_inputs`): stage coordinates, plus the overview crop's embedding
    features where the candidates carry `features`; the GP models the outcome less the
    prior mean, the overview's score where they carry `prior` (else the outcomes' mean).
    Without a prior the first choice is the nearest tile.

    The GP's kernel is fixed (RBF of unit length scale on the scaled inputs plus white noise,
    `optimizer=None`): with a handful of binary outcomes, maximum-likelihood fitting of the
    length scales collapses them, and a fixed kernel is both deterministic and cheap per
    choice (benchmarks/results/hunt_efficiency.md compares a fitted BoTorch GP)."""
    taken = set(chosen)
    left = [i for i in range(len(candidates)) if i not in taken]
    if not left:
        return None
    inputs, prior = surrogate_inputs(candidates, fov)
    xy = np.array([[p["x"], p["y"]] for p in candidates]) / fov
    travel = np.hypot(xy[left, 0] - here[0] / fov, xy[left, 1] - here[1] / fov)
    y = np.asarray(outcomes, dtype=np.float64)
    if prior is None:
        if not chosen:
            return left[int(np.argmin(travel))]
        prior = np.full(len(candidates), float(y.mean()))
    utility = prior[left] - TRAVEL_COST * travel
    if chosen:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        kernel = ConstantKernel(0.25, "fixed") * RBF(1.0, "fixed") + WhiteKernel(0.01, "fixed")
        gp = GaussianProcessRegressor(kernel, optimizer=None, normalize_y=False)
        fit = training_set(chosen, y)
        seen = np.asarray(chosen)[fit]
        gp.fit(inputs[seen], y[fit] - prior[seen])
        mean, std = gp.predict(inputs[left], return_std=True)
        utility = utility + mean + UCB_BETA * std
    return left[int(np.argmax(utility))]


# --- the plan node's side -------------------------------------------------------------------
def searching(objective: dict[str, Any]) -> bool:
    """Whether positions come from the search area (not a survey's plan or a hunt's
    unbounded spiral, the behaviour of sessions started before strategies)."""
    strategy = objective.get("strategy")
    return objective["kind"] == "explore" or (
        objective["kind"] == "hunt" and strategy not in (None, "spiral"))


def stage_bounds(acquirer: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where tiles may lie: the instrument's stage range within the envelope's limits."""
    (cx0, cx1), (cy0, cy1) = acquirer.capabilities().stage_range
    env = acquirer.envelope
    return ((max(cx0, env.stage_x[0]), min(cx1, env.stage_x[1])),
            (max(cy0, env.stage_y[0]), min(cy1, env.stage_y[1])))


def outcome_mark(state: dict[str, Any]) -> int:
    """What the frames so far found: hits for a hunt, distinct labels for `explore`."""
    counts = state["counts"]
    if state["objective"]["kind"] == "hunt":
        return int(counts.get("hits", 0))
    return len([k for k, v in counts.get("labels", {}).items() if v])
