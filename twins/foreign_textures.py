"""A folder dataset the SEM twin never draws: ten procedural texture families.

Each family is one function `(size, rng) -> base image in [0, 1]` with its own random
parameters (period, phase, orientation, centre, density); `render` then applies the shared
nuisances (grey level, contrast, illumination gradient, blur, noise). Nothing here reuses
twins/textures.py. Deterministic by seed: image i of class c comes from rng([seed, c, i]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return yy, xx


def _rotated(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v) turned by a random angle about the image centre."""
    yy, xx = _grid(size)
    a = rng.uniform(0, np.pi)
    x, y = xx - size / 2, yy - size / 2
    return x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)


def _polar(size: int, rng: np.random.Generator,
           spread: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(radius, angle) about a random centre near the middle of the image."""
    yy, xx = _grid(size)
    cy, cx = size * (0.5 + rng.uniform(-spread, spread, 2))
    return np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)


def _wave(phase: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """cos(phase) mapped to [0, 1], from a soft sine to a nearly square profile."""
    sharp = rng.uniform(1, 6)
    return 0.5 + 0.5 * np.tanh(sharp * np.cos(phase)) / np.tanh(sharp)


def hex_dots(size: int, rng: np.random.Generator) -> np.ndarray:
    """Bright dots on a hexagonal lattice (three plane waves at 120 degrees)."""
    yy, xx = _grid(size)
    period, angle = rng.uniform(8, 20), rng.uniform(0, np.pi / 3)
    k = 4 * np.pi / (np.sqrt(3) * period)
    field = sum(np.cos(k * (xx * np.cos(a) + yy * np.sin(a)) + rng.uniform(0, 2 * np.pi))
                for a in angle + np.array([0, 2, 4]) * np.pi / 3)
    return 1 / (1 + np.exp(-4 * (field - rng.uniform(1.0, 2.2))))


def rings(size: int, rng: np.random.Generator) -> np.ndarray:
    """Concentric rings about a centre inside the image."""
    r, _ = _polar(size, rng, spread=0.3)
    return _wave(2 * np.pi * r / rng.uniform(6, 16) + rng.uniform(0, 2 * np.pi), rng)


def spiral(size: int, rng: np.random.Generator) -> np.ndarray:
    """Logarithmic spiral arms: 5-14 arms at 30-60 degrees to the radius, either hand."""
    r, theta = _polar(size, rng)
    arms = int(rng.integers(5, 15))
    k = arms * np.tan(np.radians(rng.uniform(30, 60))) * rng.choice([-1, 1])
    return _wave(arms * theta + k * np.log(r + 1) + rng.uniform(0, 2 * np.pi), rng)


def spokes(size: int, rng: np.random.Generator) -> np.ndarray:
    """Straight radial spokes about a centre near the middle."""
    _, theta = _polar(size, rng)
    return _wave(int(rng.integers(16, 49)) * theta + rng.uniform(0, 2 * np.pi), rng)


def grains(size: int, rng: np.random.Generator) -> np.ndarray:
    """Voronoi cells, each its own grey level, with dark boundaries."""
    yy, xx = _grid(size)
    n = max(4, int(rng.uniform(15, 60) * (size / 224) ** 2))
    seeds = rng.uniform(0, size, (n, 2))
    d, i = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
    level = rng.uniform(0.35, 0.9, n)[i[:, 0]]
    gap = np.linalg.norm(seeds[i[:, 1]] - seeds[i[:, 0]], axis=1)
    to_bisector = (d[:, 1] ** 2 - d[:, 0] ** 2) / (2 * gap)
    edge = np.clip(to_bisector / rng.uniform(0.5, 1.5), 0, 1)
    return (level * edge).reshape(size, size)


def cracks(size: int, rng: np.random.Generator) -> np.ndarray:
    """Dark, jagged crack lines (persistent random walks with side branches) on a mottled
    bright background."""
    walks = [(rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi), size * 1.5)
             for _ in range(int(rng.integers(6, 14)))]
    mask = np.zeros((size, size), bool)
    while walks:
        start, heading, length = walks.pop()
        steps = int(length)
        angle = heading + np.cumsum(rng.normal(0, 0.08, steps))
        jag = rng.normal(0, 0.6, steps)  # sideways jitter: a jagged, not smooth, line
        path = start + np.cumsum(np.stack([np.sin(angle) + jag * np.cos(angle),
                                           np.cos(angle) - jag * np.sin(angle)], 1), 0)
        inside = np.all((path >= 0) & (path < size), 1)
        path = path[np.cumsum(~inside) == 0]  # stop at the border
        mask[path[:, 0].astype(int), path[:, 1].astype(int)] = True
        if length > size / 4 and len(path) > 10:
            for j in rng.integers(0, len(path), int(rng.integers(1, 4))):
                turn = rng.choice([-1, 1]) * rng.uniform(np.pi / 6, np.pi / 2)
                walks.append((path[j], angle[j] + turn, length / 3))
    if rng.uniform() < 0.5:
        mask = ndimage.binary_dilation(mask)
    mottle = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 16)
    background = 0.8 + 0.15 * mottle / (mottle.std() + 1e-9)
    return np.where(mask, 0.0, np.clip(background, 0.5, 1))


def herringbone(size: int, rng: np.random.Generator) -> np.ndarray:
    """Chevron (zig-zag) stripes: stripes whose direction flips every half zig-zag period."""
    u, v = _rotated(size, rng)
    period, zig = rng.uniform(6, 14), rng.uniform(20, 60)
    tri = np.abs((v / zig + rng.uniform()) % 1 - 0.5) * 2 * zig * rng.uniform(0.4, 1.0)
    return _wave(2 * np.pi * (u + tri) / period, rng)


def labyrinth(size: int, rng: np.random.Generator) -> np.ndarray:
    """Maze-like bands: band-pass filtered white noise thresholded near zero."""
    noise = rng.normal(0, 1, (size, size))
    s = rng.uniform(1.5, 3.5)
    band = ndimage.gaussian_filter(noise, s) - ndimage.gaussian_filter(noise, 1.6 * s)
    band /= band.std() + 1e-9
    return 1 / (1 + np.exp(-rng.uniform(3, 10) * (band - rng.uniform(-0.2, 0.2))))


def crosses(size: int, rng: np.random.Generator) -> np.ndarray:
    """Sparse bright plus-marks of one size and orientation, scattered at random."""
    u, v = _rotated(size, rng)
    arm, half = rng.uniform(4, 10), rng.uniform(0.5, 1.5)
    out = np.zeros((size, size))
    n = max(3, int(rng.uniform(12, 40) * (size / 224) ** 2))
    for cu, cv in rng.uniform(-size * 0.7, size * 0.7, (n, 2)):
        du, dv = np.abs(u - cu), np.abs(v - cv)
        out[((du <= arm) & (dv <= half)) | ((dv <= arm) & (du <= half))] = 1.0
    return out


def woven(size: int, rng: np.random.Generator) -> np.ndarray:
    """Basket weave: square blocks of 2-4 parallel strands, alternating between the two
    directions like a checkerboard, each strand shaded where it dips under its neighbour."""
    u, v = _rotated(size, rng)
    strand = rng.uniform(5, 10)
    block = strand * int(rng.integers(2, 5))
    u, v = u + rng.uniform(0, block), v + rng.uniform(0, block)
    across = (np.floor(u / block) + np.floor(v / block)) % 2 == 0
    along, side = np.where(across, u, v), np.where(across, v, u)
    threads = 0.5 + 0.5 * np.cos(2 * np.pi * side / strand)
    return threads * np.sin(np.pi * (along % block) / block) ** 0.5


FAMILIES = {"HexDots": hex_dots, "Rings": rings, "Spiral": spiral, "Spokes": spokes,
            "Grains": grains, "Cracks": cracks, "Herringbone": herringbone,
            "Labyrinth": labyrinth, "Crosses": crosses, "Woven": woven}
CLASSES = tuple(FAMILIES)


def render(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 image of family `kind`: random grey level, contrast, illumination gradient,
    blur and Gaussian noise over the family's base pattern."""
    base = FAMILIES[kind](size, rng)
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0, 30) * ((xx * np.cos(a) + yy * np.sin(a)) / size)
    img = rng.uniform(100, 155) + rng.uniform(90, 200) * (base - 0.5) + gradient
    img = ndimage.gaussian_filter(img, rng.uniform(0, 1.2))
    img += rng.normal(0, rng.uniform(4, 20), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_foreign_dataset(root: Path, per_class: int, size: int = 224, seed: int = 0) -> Path:
    """PNG files root/<Class>/<class>_NNN.png, `per_class` grayscale images per family."""
    root = Path(root)
    for c, kind in enumerate(CLASSES):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = render(kind, size, np.random.default_rng([seed, c, i]))
            Image.fromarray(arr, "L").save(root / kind / f"{kind.lower()}_{i:03d}.png")
    return root
