"""Procedural, periodic texture tiles for the ten SEM classes.

Each generator draws one *look* of its class on a square tile that wraps around at its edges
(so a region can repeat it seamlessly in stage coordinates) and returns a `Texture`: a height
map in tile pixels (slopes are dimensionless) and a material map in [0, 1] (a proxy for mean
atomic number: it sets backscatter yield and, weakly, secondary-electron yield). Several looks
per class, each with random parameters, give variety inside a class; some looks are deliberate
look-alikes of other classes (sparse film defects vs particles, powder clumps vs polydisperse
particles vs foam, thin fibres vs nanowires, pillar arrays vs MEMS pads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Rng = np.random.Generator


@dataclass
class Texture:
    """A periodic tile: `height` (px units), `material` in [0, 1], and the look's name."""

    height: np.ndarray
    material: np.ndarray
    look: str


class Canvas:
    """A periodic height/material canvas onto which shapes are stamped (top surface wins)."""

    def __init__(self, size: int, material: float, height: np.ndarray | None = None) -> None:
        self.size = size
        self.height = np.zeros((size, size), np.float32) if height is None else height
        self.material = np.full((size, size), material, np.float32)

    def window(self, cx: float, cy: float, shape: tuple[int, int]) -> tuple:
        """Index of the `shape` window centred at (cx, cy), wrapping around the tile."""
        ph, pw = shape
        y0 = (int(round(cy)) - ph // 2) % self.size
        x0 = (int(round(cx)) - pw // 2) % self.size
        if y0 + ph <= self.size and x0 + pw <= self.size:  # no wrap: a cheap view
            return (slice(y0, y0 + ph), slice(x0, x0 + pw))
        return np.ix_((np.arange(ph) + y0) % self.size, (np.arange(pw) + x0) % self.size)

    def stamp(self, cx: float, cy: float, patch: np.ndarray, material: float,
              lift: float = 0.0) -> None:
        """Place `patch` (height > 0 inside the shape) centred at (cx, cy), wrapping around.

        `lift` raises the shape by that fraction of the highest surface already under it, so
        later shapes rest on earlier ones (agglomerates, fibre mats).
        """
        idx = self.window(cx, cy, patch.shape)
        inside = patch > 0
        current = self.height[idx]
        base = lift * float(current[inside].max()) if lift and inside.any() else 0.0
        top = inside & (patch + base > current)
        self.height[idx] = np.where(top, patch + base, current)
        self.material[idx] = np.where(top, material, self.material[idx])

    def texture(self, look: str) -> Texture:
        return Texture(self.height.astype(np.float32), np.clip(self.material, 0, 1), look)


# --- shape patches (height profiles, 0 outside) ----------------------------------------------
def _grid(half: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(-half, half + 1, dtype=np.float32)
    return r[None, :], r[:, None]


def sphere(radius: float) -> np.ndarray:
    """Hemispherical cap of the given radius (px)."""
    x, y = _grid(int(np.ceil(radius)) + 1)
    return np.sqrt(np.maximum(radius**2 - x * x - y * y, 0.0))


def capsule(length: float, radius: float, angle: float) -> np.ndarray:
    """A cylinder lying along `angle` with rounded ends (rods, fibres, wires)."""
    half = int(np.ceil(length / 2 + radius)) + 1
    x, y = _grid(half)
    ux, uy = np.cos(angle), np.sin(angle)
    t = np.clip(x * ux + y * uy, -length / 2, length / 2)
    d2 = (x - t * ux) ** 2 + (y - t * uy) ** 2
    return np.sqrt(np.maximum(radius**2 - d2, 0.0))


def facets(radii: np.ndarray, angle: float, slope: float, top: float | None = None) -> np.ndarray:
    """A faceted grain: a polygon with one facet per entry of `radii` (px), roof of `slope`,
    optionally cut flat at height `top` (cubes, platelets, irregular powder grains)."""
    n = len(radii)
    half = int(np.ceil(radii.max())) + 1
    x, y = _grid(half)
    h = np.full((2 * half + 1, 2 * half + 1), np.inf, np.float32)
    for k in range(n):
        a = angle + 2 * np.pi * k / n
        h = np.minimum(h, (radii[k] - (x * np.cos(a) + y * np.sin(a))) * slope)
    h = np.maximum(h, 0.0)
    return np.minimum(h, top) if top is not None else h


def rect(w: float, h: float, height: float, bevel: float = 1.5) -> np.ndarray:
    """Flat-topped rectangle with slightly bevelled sides (MEMS structures, pillars)."""
    hw, hh = w / 2, h / 2
    half = int(np.ceil(max(hw, hh))) + 2
    x, y = _grid(half)
    d = np.minimum(hw - np.abs(x), hh - np.abs(y))
    return np.clip(d / bevel, 0, 1) * height


# --- periodic fields -------------------------------------------------------------------------
def band_noise(rng: Rng, size: int, scale: float, bandwidth: float = 0.5) -> np.ndarray:
    """Periodic Gaussian random field with features of about `scale` px; zero mean, unit std."""
    f = np.fft.fftfreq(size)
    fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    f0 = 1.0 / scale
    spectrum = np.exp(-((np.log(fr + 1e-9) - np.log(f0)) ** 2) / (2 * bandwidth**2))
    spectrum[0, 0] = 0.0
    noise = rng.standard_normal((size, size))
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * spectrum))
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def worley(rng: Rng, size: int, cell: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Periodic Voronoi distances: (nearest, second nearest, cell id) for jittered seeds about
    `cell` px apart."""
    n = max(2, int(round(size / cell)))
    c = size / n
    px = (np.arange(n)[None, :] + rng.random((n, n))) * c
    py = (np.arange(n)[:, None] + rng.random((n, n))) * c
    coords = np.arange(size, dtype=np.float32) + 0.5
    gx, gy = coords[None, :], coords[:, None]
    ci = (coords // c).astype(int)
    d1 = np.full((size, size), np.inf, np.float32)
    d2 = np.full((size, size), np.inf, np.float32)
    ids = np.zeros((size, size), np.int32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            iy = (ci[:, None] + dy) % n
            ix = (ci[None, :] + dx) % n
            sx = px[iy, ix] + ((ci[None, :] + dx) - ix) * c  # unwrapped seed position
            sy = py[iy, ix] + ((ci[:, None] + dy) - iy) * c
            d = np.sqrt((gx - sx) ** 2 + (gy - sy) ** 2).astype(np.float32)
            closer = d < d1
            d2 = np.where(closer, d1, np.minimum(d2, d))
            ids = np.where(closer, iy * n + ix, ids)
            d1 = np.where(closer, d, d1)
    return d1, d2, ids


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(a, sigma, mode="wrap")


def _count(rng: Rng, lo: int, hi: int, size: int, power: int = 2) -> int:
    """A count drawn for a 1024-px tile, scaled to a `size`-px one (area: power 2)."""
    return max(1, int(rng.integers(lo, hi) * (size / 1024) ** power))


def _uniform_points(rng: Rng, size: int, count: int) -> np.ndarray:
    return rng.random((count, 2)) * size


def _clustered_points(rng: Rng, size: int, clusters: int, per: int, spread: float) -> np.ndarray:
    centres = rng.random((clusters, 1, 2)) * size
    return (centres + rng.normal(0, spread, (clusters, per, 2))).reshape(-1, 2) % size


# --- class generators: each returns a Texture for one randomly chosen look ------------------
def biological(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["rods", "tissue", "cocci"]))
    canvas = Canvas(size, material=rng.uniform(0.25, 0.35))
    mat = rng.uniform(0.1, 0.22)
    if look == "rods":
        length, radius = rng.uniform(25, 60), rng.uniform(6, 11)
        for x, y in _uniform_points(rng, size, int(rng.uniform(0.25, 0.6) * size**2
                                                   / (length * radius * 6))):
            canvas.stamp(x, y, capsule(length * rng.uniform(0.7, 1.3), radius, rng.uniform(0,
                                                                                 np.pi)), mat)
        canvas.height = _smooth(canvas.height, 1.2)
    elif look == "tissue":
        d1, d2, _ = worley(rng, size, rng.uniform(50, 110))
        canvas.height = 14 * np.tanh((d2 - d1) / 12) + 1.5 * band_noise(rng, size, 8)
        canvas.material[:] = mat
    else:
        r = rng.uniform(7, 12)
        pts = _clustered_points(rng, size, _count(rng, 25, 45, size), int(rng.integers(15, 35)),
                                r * 3)
        for x, y in pts:
            canvas.stamp(x, y, sphere(r * rng.uniform(0.85, 1.15)), mat, lift=0.3)
        canvas.height = _smooth(canvas.height, 1.0)
    return canvas.texture(f"biological/{look}")


def _polyline(rng: Rng, canvas: Canvas, start: np.ndarray, angle: float, steps: int,
              step: float, radius: float, wiggle: float, material: float, base: float) -> None:
    """A curved cylinder of capsule segments, its underside raised by `base` px."""
    pos = start.astype(float)
    for _ in range(steps):
        angle += rng.normal(0, wiggle)
        seg = capsule(step * 1.1, radius, angle)
        canvas.stamp(pos[0], pos[1], np.where(seg > 0, seg + base, 0.0), material)
        pos += step * np.array([np.cos(angle), np.sin(angle)])


def fibres(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["mat", "curly", "aligned"]))
    canvas = Canvas(size, material=rng.uniform(0.25, 0.4))
    mat = rng.uniform(0.18, 0.35)
    if look == "mat":
        radius, count, wiggle, spread = rng.uniform(7, 14), (20, 40), 0.04, np.pi
    elif look == "curly":
        radius, count, wiggle, spread = rng.uniform(3, 5.5), (40, 80), 0.25, np.pi
    else:
        radius, count, wiggle, spread = rng.uniform(5, 11), (25, 45), 0.02, 0.2
    base_angle = rng.uniform(0, np.pi)
    step = radius * 4.0
    for i in range(_count(rng, *count, size, power=1)):  # fibres cross the whole tile
        angle = base_angle + rng.uniform(-spread, spread)
        _polyline(rng, canvas, rng.random(2) * size, angle, int(size / step) + 1, step,
                  radius * rng.uniform(0.8, 1.2), wiggle, mat,
                  base=(i // 8) * radius)  # later fibres lie on top of earlier ones
    return canvas.texture(f"fibres/{look}")


def films(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["granular", "cracked", "smooth_defects"]))
    canvas = Canvas(size, material=rng.uniform(0.4, 0.75))
    if look == "granular":
        d1, d2, ids = worley(rng, size, rng.uniform(12, 30))
        grain = rng.random(ids.max() + 1).astype(np.float32)[ids]
        canvas.height = 4.0 * np.tanh((d2 - d1) / 4) + 1.5 * grain
        canvas.material += 0.05 * (grain - 0.5)
    elif look == "cracked":
        d1, d2, _ = worley(rng, size, rng.uniform(90, 220))
        gap = d2 - d1
        width = rng.uniform(1.5, 4)
        canvas.height = np.where(gap < width, -10.0, 1.5 * np.exp(-gap / 15)) + \
            0.6 * band_noise(rng, size, 6)
    else:
        canvas.height = 1.5 * band_noise(rng, size, rng.uniform(10, 30))
        mat = float(canvas.material[0, 0])
        for x, y in _uniform_points(rng, size, _count(rng, 10, 40, size)):
            canvas.stamp(x, y, sphere(rng.uniform(2, 6)), mat + 0.05)
        for x, y in _uniform_points(rng, size, _count(rng, 5, 25, size)):
            pit = sphere(rng.uniform(2, 5))
            canvas.height[canvas.window(x, y, pit.shape)] -= pit
    return canvas.texture(f"films/{look}")


def mems(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["comb", "pads", "serpentine"]))
    canvas = Canvas(size, material=0.35)
    canvas.height += 0.3 * band_noise(rng, size, 20)
    metal, t = rng.uniform(0.7, 0.95), rng.uniform(10, 20)
    if look == "comb":
        pitch = size / int(rng.integers(16, 28))
        finger_w, length = pitch * rng.uniform(0.25, 0.4), size * rng.uniform(0.3, 0.4)
        canvas.stamp(size / 2, size * 0.08, rect(size, size * 0.08, t), metal)
        canvas.stamp(size / 2, size * 0.58, rect(size, size * 0.08, t), metal)
        for k in range(int(round(size / pitch))):
            x = k * pitch
            canvas.stamp(x, size * 0.08 + length / 2, rect(finger_w, length, t), metal)
            canvas.stamp(x + pitch / 2, size * 0.58 - length / 2, rect(finger_w, length, t), metal)
    elif look == "pads":
        n = int(rng.integers(2, 4))
        cell = size / n
        pad = cell * rng.uniform(0.35, 0.55)
        holes = rng.random() < 0.5
        for i in range(n):
            for j in range(n):
                cx, cy = (j + 0.5) * cell, (i + 0.5) * cell
                canvas.stamp(cx, cy, rect(pad, pad, t), metal)
                canvas.stamp(cx + cell / 2, cy, rect(cell - pad, pad * 0.12, t * 0.8), metal)
                canvas.stamp(cx, cy + cell / 2, rect(pad * 0.12, cell - pad, t * 0.8), metal)
                if holes:
                    hp = pad / 6  # a 5 x 5 array of square release holes
                    side = max(int(hp * 0.4), 1)
                    for a in range(-2, 3):
                        for b in range(-2, 3):
                            idx = canvas.window(cx + b * hp, cy + a * hp, (side, side))
                            canvas.height[idx] = -2.0
                            canvas.material[idx] = 0.35
    else:
        n = int(rng.integers(6, 12))
        pitch = size / n
        w = pitch * rng.uniform(0.2, 0.35)
        for k in range(n):
            canvas.stamp(k * pitch, size / 2, rect(w, size * 0.6, t), metal)
            yy = size * 0.2 if k % 2 == 0 else size * 0.8
            canvas.stamp(k * pitch + pitch / 2, yy, rect(pitch + w, w, t), metal)
        canvas.stamp(size / 2, size * 0.95, rect(size, size * 0.1, t), metal)
    return canvas.texture(f"mems/{look}")


def nanowires(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["lying", "forest", "vls"]))
    canvas = Canvas(size, material=rng.uniform(0.3, 0.4))
    mat = rng.uniform(0.5, 0.85)
    if look == "lying":
        radius = rng.uniform(2, 3.5)
        for x, y in _uniform_points(rng, size, _count(rng, 150, 300, size)):
            canvas.stamp(x, y, capsule(rng.uniform(80, 350), radius, rng.uniform(0, np.pi)), mat,
                         lift=0.8)
    elif look == "forest":
        for x, y in _uniform_points(rng, size, _count(rng, 800, 2000, size)):
            r = rng.uniform(2.5, 5)
            if rng.random() < 0.25:
                canvas.stamp(x, y, capsule(rng.uniform(10, 40), r * 0.8, rng.uniform(0, np.pi)),
                             mat, lift=0.5)
            else:
                cap = sphere(r)
                canvas.stamp(x, y, np.where(cap > 0, cap + 6, 0), mat)
    else:
        radius = rng.uniform(2, 3.5)
        for x, y in _uniform_points(rng, size, _count(rng, 15, 40, size)):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(150, 450)
            canvas.stamp(x, y, capsule(length, radius, angle), mat, lift=0.8)
            tip = np.array([x, y]) + length / 2 * np.array([np.cos(angle), np.sin(angle)])
            canvas.stamp(tip[0], tip[1], sphere(radius * 1.8), 0.95, lift=0.8)
    return canvas.texture(f"nanowires/{look}")


def particles(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["mono", "poly", "faceted"]))
    canvas = Canvas(size, material=rng.uniform(0.25, 0.4))
    mat = rng.uniform(0.6, 0.95)
    r0 = rng.uniform(5, 13)
    count = int(rng.uniform(0.08, 0.3) * size**2 / (np.pi * r0**2))
    if look == "mono":
        for x, y in _uniform_points(rng, size, count):
            canvas.stamp(x, y, sphere(r0 * rng.uniform(0.95, 1.05)), mat)
    elif look == "poly":
        pts = np.concatenate([_uniform_points(rng, size, count // 2),
                              _clustered_points(rng, size, 15, max(1, count // 30), r0 * 3)])
        for x, y in pts:
            canvas.stamp(x, y, sphere(r0 * rng.lognormal(0, 0.45)), mat, lift=0.3)
    else:
        sides = int(rng.choice([4, 6]))
        for x, y in _uniform_points(rng, size, count):
            radii = np.full(sides, r0 * rng.uniform(0.9, 1.1))
            canvas.stamp(x, y, facets(radii, rng.uniform(0, np.pi), 1.5, top=r0 * 0.8), mat)
    return canvas.texture(f"particles/{look}")


def patterned(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["holes", "grating", "pillars", "copolymer"]))
    canvas = Canvas(size, material=rng.uniform(0.4, 0.8))
    n = int(rng.integers(14, 40))
    pitch = size / n
    jitter = rng.uniform(0.0, 0.04) * pitch
    if look == "holes":
        r = pitch * rng.uniform(0.2, 0.35)
        canvas.height[:] = 6.0
        rows = n if n % 2 == 0 else n + 1
        dy = size / rows
        for i in range(rows):
            for j in range(n):
                x = (j + 0.5 * (i % 2)) * pitch + rng.normal(0, jitter)
                y = i * dy + rng.normal(0, jitter)
                hole = sphere(r * rng.uniform(0.95, 1.05))
                idx = canvas.window(x, y, hole.shape)
                canvas.height[idx] = np.where(hole > 0, 6.0 - 3 * np.sqrt(hole), canvas.height[idx])
                canvas.material[idx] = np.where(hole > 0, 0.3, canvas.material[idx])  # Si floor
    elif look == "grating":
        x = np.arange(size, dtype=np.float32)
        duty = rng.uniform(0.3, 0.7)
        edge = 1.5 * band_noise(rng, size, 6)
        phase = ((x[None, :] + edge) % pitch) / pitch
        lines = phase < duty
        canvas.height = _smooth(np.where(lines, 8.0, 0.0).astype(np.float32), 0.8)
        canvas.material = np.where(lines, canvas.material, 0.3).astype(np.float32)
        if rng.random() < 0.5:
            canvas.height = canvas.height.T.copy()
            canvas.material = canvas.material.T.copy()
    elif look == "copolymer":  # self-assembled lamellae: a fingerprint, close to a sponge
        field = band_noise(rng, size, pitch / 2, bandwidth=0.08)
        canvas.height = _smooth(np.where(field > 0, 6.0, 0.0).astype(np.float32), 1.0)
        canvas.material -= np.where(field > 0, 0.0, 0.15).astype(np.float32)  # two blocks
    else:
        w = pitch * rng.uniform(0.3, 0.55)
        square = rng.random() < 0.5
        for i in range(n):
            for j in range(n):
                shape = rect(w, w, 8.0) if square else sphere(w / 2)
                canvas.stamp((j + 0.5) * pitch + rng.normal(0, jitter),
                             (i + 0.5) * pitch + rng.normal(0, jitter), shape,
                             float(canvas.material[0, 0]) + 0.1)
    return canvas.texture(f"patterned/{look}")


def porous(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["bicontinuous", "foam", "cheese"]))
    canvas = Canvas(size, material=rng.uniform(0.5, 0.85))
    if look == "bicontinuous":
        field = band_noise(rng, size, rng.uniform(8, 20), bandwidth=0.35)
        level = rng.uniform(-0.3, 0.3)
        canvas.height = np.where(field > level, 4 * np.tanh(2 * (field - level)), -12.0)
        canvas.height = _smooth(canvas.height.astype(np.float32), 1.0)
    elif look == "foam":
        d1, d2, _ = worley(rng, size, rng.uniform(25, 70))
        wall = rng.uniform(2, 6)
        canvas.height = np.where(d2 - d1 < wall, 6 - (d2 - d1), -8 - 0.1 * d1).astype(
            np.float32)
        canvas.height = _smooth(canvas.height, 1.0)
    else:
        canvas.height[:] = 5.0
        r0 = rng.uniform(5, 14)
        for x, y in _uniform_points(rng, size, int(rng.uniform(0.4, 0.9) * size**2
                                                   / (np.pi * r0**2))):
            hole = sphere(r0 * rng.lognormal(0, 0.3))
            idx = canvas.window(x, y, hole.shape)
            canvas.height[idx] = np.minimum(canvas.height[idx], 5.0 - 2.0 * hole)
    return canvas.texture(f"porous/{look}")


def powder(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["agglomerate", "flakes", "clumps"]))
    canvas = Canvas(size, material=rng.uniform(0.25, 0.35))
    mat = rng.uniform(0.3, 0.6)
    if look == "agglomerate":
        for x, y in _clustered_points(rng, size, _count(rng, 14, 24, size), 70, 60):
            r = rng.lognormal(np.log(12), 0.5)
            radii = r * rng.uniform(0.6, 1.3, int(rng.integers(5, 9)))
            canvas.stamp(x, y, facets(radii, rng.uniform(0, 6.3), rng.uniform(0.8, 2)),
                         mat + rng.uniform(-0.05, 0.05), lift=0.6)
    elif look == "flakes":
        for x, y in _uniform_points(rng, size, _count(rng, 150, 350, size)):
            r = rng.lognormal(np.log(25), 0.4)
            radii = r * rng.uniform(0.6, 1.2, int(rng.integers(5, 8)))
            canvas.stamp(x, y, facets(radii, rng.uniform(0, 6.3), 3.0, top=3.0), mat, lift=1.0)
    else:
        for x, y in _clustered_points(rng, size, _count(rng, 25, 40, size), 150, 40):
            canvas.stamp(x, y, sphere(rng.lognormal(np.log(5), 0.4)), mat, lift=0.7)
    return canvas.texture(f"powder/{look}")


def _tip(rng: Rng, size: int, look: str, mat: float, background: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """One tip on a `size`-px square: a top-view pyramid, or a side-view cone/needle."""
    coords = np.arange(size, dtype=np.float32) - size / 2
    x, y = coords[None, :], coords[:, None]
    if look == "pyramid":
        half = size * rng.uniform(0.25, 0.42)
        h = np.maximum(half - np.maximum(np.abs(x), np.abs(y)), 0) * rng.uniform(0.8, 1.5)
        return h.astype(np.float32), np.where(h > 0, mat, background).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    u = x * ca + y * sa + size * 0.3  # along the tip axis, apex at u = 0
    v = -x * sa + y * ca
    length = size * rng.uniform(0.6, 0.8)
    base = size * (rng.uniform(0.12, 0.22) if look == "cone" else rng.uniform(0.04, 0.08))
    power = 1.0 if look == "cone" else rng.uniform(1.3, 2.0)
    frac = np.clip(u / length, 0, 1)
    width = 1.5 + base * frac ** (1 / power)
    inside = (u >= 0) & (np.abs(v) < width)
    h = np.where(inside, np.sqrt(np.maximum(width**2 - v**2, 0)), 0) + 20 * inside
    h = h + 0.4 * band_noise(rng, size, 5) * inside
    return h.astype(np.float32), np.where(inside, mat, background).astype(np.float32)


def tips(rng: Rng, size: int) -> Texture:
    look = str(rng.choice(["cone", "pyramid", "needle"]))
    background = 0.05 if look != "pyramid" else 0.35
    canvas = Canvas(size, material=background)
    half = size // 2
    for i in range(2):
        for j in range(2):
            h, m = _tip(rng, half, look, rng.uniform(0.6, 0.9), background)
            canvas.height[i * half:(i + 1) * half, j * half:(j + 1) * half] = h
            canvas.material[i * half:(i + 1) * half, j * half:(j + 1) * half] = m
    return canvas.texture(f"tips/{look}")


GENERATORS: dict[str, Callable[[Rng, int], Texture]] = {
    "Biological": biological,
    "Fibres": fibres,
    "Films_Coated_Surface": films,
    "MEMS_devices_and_electrodes": mems,
    "Nanowires": nanowires,
    "Particles": particles,
    "Patterned_surface": patterned,
    "Porous_Sponge": porous,
    "Powder": powder,
    "Tips": tips,
}


def substrate(rng: Rng, size: int) -> Texture:
    """Bare silicon: flat, faint roughness."""
    canvas = Canvas(size, material=0.35)
    canvas.height = 0.4 * band_noise(rng, size, 6)
    return canvas.texture("substrate")


def generate(label: str, rng: Rng, size: int = 1024) -> Texture:
    """Draw one look of class `label` on a `size`-px periodic tile."""
    return GENERATORS[label](rng, size)
