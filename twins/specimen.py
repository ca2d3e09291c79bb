"""The virtual specimen: class regions laid out in stage coordinates, rendered at any FOV.

The stage area (default 2 mm x 2 mm, centred on 0) is cut into a grid of cells; each cell
holds one rectangular region of a class (or a real image tile), separated from its neighbours
by narrow substrate gaps. A region repeats its class texture (a periodic tile drawn at a
region-specific native pixel size, so classes appear at several scales) in stage
coordinates, so content is a function of (x, y) alone: overlapping fields of view agree and
drift or rescans are physically consistent. Textures are built lazily, kept in a small LRU
cache together with their anti-aliasing pyramids, and sampled by index gathers. A procedural
region's pyramids depend on its label, seed, tile size, pixel size and origin alone, so they
are also kept process-wide (`SHARED_TILESETS` of them, about 11 MB each at 1024 px): a second
twin of the same specimen in one process (a resumed session, a rendering test, a forked child)
does not draw them again (0.3-0.7 s a region on the 2-core machine).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from instruments.devices.frame import StagePosition
from twins import physics, textures
from twins.classes import PROFILES, SEM_CLASSES, SUBSTRATE

TILE = 1024
SHARED_TILESETS = 12
Point = tuple[float, float] | StagePosition


@dataclass
class Region:
    """One rectangular region [x0, x1) x [y0, y1) (m) of a single label.

    `z` is the region's surface height (m): the true focus there. `pixel` is the native
    pixel size (m) of its texture tile. `image` holds a real micrograph for real tiles
    (shown once, not repeated); procedural regions have `image=None`.
    """

    label: str
    x0: float
    x1: float
    y0: float
    y1: float
    z: float
    pixel: float
    seed: int
    insulating: bool = False
    image: np.ndarray | None = field(default=None, repr=False)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def overlap(self, x0: float, x1: float, y0: float, y1: float) -> float:
        """Area (m^2) of this region inside the rectangle."""
        w = min(self.x1, x1) - max(self.x0, x0)
        h = min(self.y1, y1) - max(self.y0, y0)
        return max(w, 0.0) * max(h, 0.0)


@dataclass
class TileSet:
    """SE and BSE yield pyramids of one region, anchored at the region's corner."""

    se: list[np.ndarray]
    bse: list[np.ndarray]
    pixel: float
    origin: tuple[float, float]
    periodic: bool
    look: str


def _xy(point: Point) -> tuple[float, float]:
    if isinstance(point, StagePosition):
        return point.x, point.y
    return float(point[0]), float(point[1])


def _axis(centre: float, fov: float, pixels: int) -> np.ndarray:
    """Stage coordinates of pixel centres along one axis."""
    p = fov / pixels
    return centre - fov / 2 + (np.arange(pixels, dtype=np.float64) + 0.5) * p


def _span(coords: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    return int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "left"))


def _indices(u: np.ndarray, size: int, periodic: bool) -> np.ndarray:
    idx = np.floor(u).astype(np.int64)
    return idx % size if periodic else np.clip(idx, 0, size - 1)


def _sample_nearest(tile: np.ndarray, u: np.ndarray, v: np.ndarray, periodic: bool
                    ) -> np.ndarray:
    iu = _indices(u + 0.5, tile.shape[1], periodic)
    iv = _indices(v + 0.5, tile.shape[0], periodic)
    return tile.take(iv, axis=0).take(iu, axis=1)


def _sample_linear(tile: np.ndarray, u: np.ndarray, v: np.ndarray, periodic: bool
                   ) -> np.ndarray:
    u0, v0 = np.floor(u), np.floor(v)
    wu, wv = (u - u0).astype(np.float32), (v - v0).astype(np.float32)
    c0 = int(u0.min())
    cols = _indices(np.arange(c0, int(u0.max()) + 2, dtype=np.float64), tile.shape[1], periodic)
    sub = tile.take(cols, axis=1)
    r0 = _indices(v0, tile.shape[0], periodic)
    r1 = _indices(v0 + 1, tile.shape[0], periodic)
    rows = sub.take(r0, axis=0) * (1 - wv)[:, None] + sub.take(r1, axis=0) * wv[:, None]
    i0 = (u0 - c0).astype(np.int64)
    return rows.take(i0, axis=1) * (1 - wu) + rows.take(i0 + 1, axis=1) * wu


class Specimen:
    """A seeded virtual specimen of SEM class regions on a substrate.

    `grid` x `grid` cells over `extent` (m); `gap` bounds each region's inset from its cell
    edge; region heights are uniform in +-`height_range`; textures are `tile` px (periodic)
    and at most `cache_size` regions' pyramids are kept.

    Labels are coded as small integers: 0 is SUBSTRATE, 1..10 follow SEM_CLASSES, real tiles
    add their own labels after that (`label_names` maps codes to names).
    """

    def __init__(self, seed: int = 0,
                 extent: tuple[tuple[float, float], tuple[float, float]] = ((-1e-3, 1e-3),
                                                                            (-1e-3, 1e-3)),
                 grid: int = 8, gap: tuple[float, float] = (4e-6, 10e-6),
                 height_range: float = 3e-6, cache_size: int = 12, tile: int = TILE) -> None:
        self.seed = seed
        self.tile = tile
        self.extent = extent
        self.grid = grid
        self.label_names: list[str] = [SUBSTRATE, *SEM_CLASSES]
        self._cache: OrderedDict[int, TileSet] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.regions: list[Region] = []
        self._cells: list[tuple[float, float, float, float]] = []
        rng = np.random.default_rng([seed, 1])
        n_cells = grid * grid
        labels = [SEM_CLASSES[i % len(SEM_CLASSES)] for i in range(n_cells)]
        rng.shuffle(labels)
        (ex0, ex1), (ey0, ey1) = extent
        cw, ch = (ex1 - ex0) / grid, (ey1 - ey0) / grid
        for k, label in enumerate(labels):
            i, j = divmod(k, grid)
            cell = (ex0 + j * cw, ex0 + (j + 1) * cw, ey0 + i * ch, ey0 + (i + 1) * ch)
            self._cells.append(cell)
            inset = rng.uniform(gap[0], gap[1], 4)
            lo, hi = PROFILES[label].tile_pixel
            self.regions.append(Region(
                label=label, x0=cell[0] + inset[0], x1=cell[1] - inset[1],
                y0=cell[2] + inset[2], y1=cell[3] - inset[3],
                z=float(rng.uniform(-height_range, height_range)),
                pixel=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
                seed=int(rng.integers(2**31)), insulating=PROFILES[label].insulating))
        sub_rng = np.random.default_rng([seed, 2])
        self._substrate = tileset(textures.substrate(sub_rng, 256), 5e-9, (0.0, 0.0))
        self._detail = textures.band_noise(np.random.default_rng([seed, 3]), 256, 4.0)

    # --- layout -----------------------------------------------------------------------------
    def code(self, label: str) -> int:
        return self.label_names.index(label)

    def region_at(self, x: float, y: float) -> Region | None:
        for region in self.regions:
            if region.contains(x, y):
                return region
        return None

    def label_at(self, x: float, y: float) -> str:
        """Ground-truth label at one stage point (SUBSTRATE in gaps and off the layout)."""
        region = self.region_at(x, y)
        return region.label if region is not None else SUBSTRATE

    def focus_height(self, x: float, y: float) -> float:
        """Surface height (m) at a point: the defocus setting that is in focus there."""
        region = self.region_at(x, y)
        return region.z if region is not None else 0.0

    def regions_in(self, x0: float, x1: float, y0: float, y1: float) -> list[Region]:
        return [r for r in self.regions if r.overlap(x0, x1, y0, y1) > 0]

    def place_real_tile(self, image: np.ndarray, label: str, pixel: float,
                        cell: int | None = None, z: float = 0.0) -> Region:
        """Put a real micrograph (2-D array, any range) into grid cell `cell` (default: the
        last cell not yet holding a real tile), centred, replacing that cell's region. Its
        physical size is `pixel` (m) times its shape; a larger image is cropped to the cell
        around its centre."""
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2 or min(img.shape) < 2 or not np.isfinite(img).all():
            raise ValueError(f"real tile {label!r} must be a finite 2-D image, got {img.shape}")
        if cell is None:
            free = [k for k, r in enumerate(self.regions) if r.image is None]
            if not free:
                raise ValueError("every cell already holds a real tile")
            cell = free[-1]
        lo, hi = np.percentile(img, [0.5, 99.5])
        norm = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1) * 0.8 + 0.1
        cx0, cx1, cy0, cy1 = self._cells[cell]
        margin = 0.03 * (cx1 - cx0)
        w = min(img.shape[1] * pixel, cx1 - cx0 - 2 * margin)
        h = min(img.shape[0] * pixel, cy1 - cy0 - 2 * margin)
        mx, my = (cx0 + cx1) / 2, (cy0 + cy1) / 2
        if label not in self.label_names:
            self.label_names.append(label)
        region = Region(label=label, x0=mx - w / 2, x1=mx + w / 2, y0=my - h / 2, y1=my + h / 2,
                        z=z, pixel=pixel, seed=0, insulating=False, image=norm.astype(np.float32))
        with self._lock:
            self.regions[cell] = region
            self._cache.pop(cell, None)
        return region

    # --- ground truth ----------------------------------------------------------------------
    def fractions(self, centre: Point, fov: float) -> dict[str, float]:
        """Exact area fraction of each label (SUBSTRATE included) in the square FOV."""
        cx, cy = _xy(centre)
        box = (cx - fov / 2, cx + fov / 2, cy - fov / 2, cy + fov / 2)
        out: dict[str, float] = {}
        for region in self.regions_in(*box):
            out[region.label] = out.get(region.label, 0.0) + region.overlap(*box) / fov**2
        covered = sum(out.values())
        out[SUBSTRATE] = max(0.0, 1.0 - covered)
        return out

    def evaluation(self, centre: Point, fov: float) -> dict:
        """Ground truth of a FOV: majority non-substrate label (SUBSTRATE if there is none),
        per-label fractions, substrate fraction."""
        fr = self.fractions(centre, fov)
        substrate = fr.pop(SUBSTRATE)
        label = max(fr, key=fr.get) if fr else SUBSTRATE
        return {"label": label, "class_fractions": fr, "substrate_fraction": substrate}

    def label_map(self, centre: Point, fov: float, pixels: int) -> np.ndarray:
        """Per-pixel label codes (int16, index into `label_names`) of a square FOV."""
        cx, cy = _xy(centre)
        xs, ys = _axis(cx, fov, pixels), _axis(cy, fov, pixels)
        out = np.zeros((pixels, pixels), np.int16)
        for region in self.regions_in(xs[0] - fov, xs[-1] + fov, ys[0] - fov, ys[-1] + fov):
            c0, c1 = _span(xs, region.x0, region.x1)
            r0, r1 = _span(ys, region.y0, region.y1)
            out[r0:r1, c0:c1] = self.code(region.label)
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Label names for an array of codes."""
        return np.asarray(self.label_names, dtype=object)[codes]

    def survey_centres(self, fov: float,
                       region: tuple[tuple[float, float], tuple[float, float]] | None = None,
                       step: float | None = None, margin: float | None = None
                       ) -> list[StagePosition]:
        """Row-major grid (rows of increasing y, x increasing within a row) of FOV centres,
        `step` apart (default `fov`), inside `region` ((x0, x1), (y0, y1); default the whole
        stage), keeping only tiles whose FOV plus `margin` (default max(fov/4, 2 um)) lies
        inside a single class region."""
        (x0, x1), (y0, y1) = region if region is not None else self.extent
        step = fov if step is None else step
        margin = max(fov / 4, 2e-6) if margin is None else margin
        half = fov / 2 + margin
        out: list[StagePosition] = []
        nx = int(math.floor((x1 - x0 - fov) / step)) + 1
        ny = int(math.floor((y1 - y0 - fov) / step)) + 1
        for i in range(max(ny, 0)):
            y = y0 + fov / 2 + i * step
            for j in range(max(nx, 0)):
                x = x0 + fov / 2 + j * step
                r = self.region_at(x, y)
                if r is not None and r.x0 <= x - half and x + half <= r.x1 \
                        and r.y0 <= y - half and y + half <= r.y1:
                    out.append(StagePosition(x=float(x), y=float(y)))
        return out

    # --- rendering -------------------------------------------------------------------------
    def tiles(self, index: int) -> TileSet:
        """The (cached) yield pyramids of region `index` (thread-safe)."""
        with self._lock:
            return self._tiles(index)

    def _tiles(self, index: int) -> TileSet:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        region = self.regions[index]
        if region.image is not None:  # centred on the region (cropped if the cell is smaller)
            h, w = region.image.shape
            origin = ((region.x0 + region.x1 - w * region.pixel) / 2,
                      (region.y0 + region.y1 - h * region.pixel) / 2)
            tiles = TileSet(physics.mipmaps(region.image, 8), physics.mipmaps(region.image, 8),
                            region.pixel, origin, False, "real")
        else:
            tiles = procedural_tileset(region.label, region.seed, self.tile, region.pixel,
                                       (region.x0, region.y0))
        self._cache[index] = tiles
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tiles

    def look(self, index: int) -> str:
        """Name of the look region `index` was drawn with."""
        return self.tiles(index).look

    def _sample(self, tiles: TileSet, xs: np.ndarray, ys: np.ndarray, pixel: float,
                detector: str, detail: float) -> np.ndarray:
        pyramid = tiles.bse if detector == "BSE" else tiles.se
        level = int(np.clip(math.floor(math.log2(max(pixel / tiles.pixel, 1e-9))), 0,
                            len(pyramid) - 1))
        lp = tiles.pixel * 2**level
        u = (xs - tiles.origin[0]) / lp - 0.5
        v = (ys - tiles.origin[1]) / lp - 0.5
        tile = pyramid[level]
        if pixel < 0.7 * tiles.pixel:
            block = _sample_linear(tile, u, v, tiles.periodic)
            if detail > 0:  # sub-native surface roughness, visible only when magnified
                dp = tiles.pixel / 8
                block *= 1.0 + detail * _sample_nearest(self._detail, xs / dp, ys / dp, True)
            return block
        return _sample_nearest(tile, u, v, tiles.periodic)

    def render(self, centre: Point, fov: float, pixels: int, detector: str = "SE"
               ) -> tuple[np.ndarray, list[tuple[Region, tuple[int, int, int, int]]]]:
        """Noise-free yield image (float32, rows = increasing y) of a square FOV and the
        regions in it with their pixel blocks (r0, r1, c0, c1)."""
        cx, cy = _xy(centre)
        pixel = fov / pixels
        xs, ys = _axis(cx, fov, pixels), _axis(cy, fov, pixels)
        blocks = []
        for index, region in enumerate(self.regions):
            if region.overlap(xs[0] - pixel, xs[-1] + pixel, ys[0] - pixel,
                              ys[-1] + pixel) <= 0:
                continue
            c0, c1 = _span(xs, region.x0, region.x1)
            r0, r1 = _span(ys, region.y0, region.y1)
            if c1 > c0 and r1 > r0:
                blocks.append((index, region, (r0, r1, c0, c1)))
        full = any(b == (0, pixels, 0, pixels) for _, _, b in blocks)
        if full:
            image = np.empty((pixels, pixels), np.float32)
        else:
            image = self._sample(self._substrate, xs, ys, pixel, detector, 0.0)
        for index, region, (r0, r1, c0, c1) in blocks:
            detail = 0.0 if region.image is not None else 0.15
            image[r0:r1, c0:c1] = self._sample(self.tiles(index), xs[c0:c1], ys[r0:r1], pixel,
                                               detector, detail)
        return image, [(region, b) for _, region, b in blocks]


@functools.lru_cache(maxsize=SHARED_TILESETS)
def procedural_tileset(label: str, seed: int, size: int, pixel: float,
                       origin: tuple[float, float]) -> TileSet:
    """The yield pyramids of a procedural region, shared by every specimen of the process
    (read-only: sampling only reads them)."""
    tiles = tileset(textures.generate(label, np.random.default_rng(seed), size), pixel, origin)
    for level in (*tiles.se, *tiles.bse):
        level.flags.writeable = False
    return tiles


def tileset(texture: textures.Texture, pixel: float, origin: tuple[float, float]) -> TileSet:
    """The secondary and backscattered yield pyramids of a periodic texture tile."""
    se, bse = physics.yields(texture.height, texture.material)
    return TileSet(physics.mipmaps(se), physics.mipmaps(bse), pixel, origin, True,
                   texture.look)
