"""Imaging physics of the SEM twin: signal yields, probe blur, shot noise, scan lines, charging,
drift. Everything is float32 and vectorised so a 1024 x 1024 frame renders in tens of ms.

Signal model. A texture's height map h (in tile pixels) and material map m give
- SE yield: (0.1 + 0.6 m) * sec(theta)^0.8 (tilt contrast, sec = sqrt(1 + |grad h|^2)), plus
  edge brightening from convex curvature (-Laplacian of the smoothed height) and a weak
  directional shading (Everhart-Thornley detector on the +x side);
- BSE yield: material (atomic-number) contrast with weak topography.
Both are precomputed per texture tile in stage coordinates, so the edge width is physical.

Noise model. A pixel receives n = I * dwell / e electrons; the detected count is
n * efficiency * yield. Its shot noise is drawn with the normal approximation of the Poisson
law (mean = variance = count, clipped at zero), which is accurate above a few counts per
pixel; the twin's sane imaging ranges stay above that. SNR therefore grows as
sqrt(dwell * current). The standard normals come from a per-microscope buffer sliced at a
random offset per frame (cheap, deterministic by seed, uncorrelated between pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from instruments.devices.safety import ELEMENTARY_CHARGE


@dataclass(frozen=True)
class PhysicsParams:
    """Tunable constants of the twin's image formation (SI units)."""

    se_efficiency: float = 0.1
    bse_efficiency: float = 0.04
    probe_sigma: float = 2e-9
    convergence: float = 10e-3
    line_noise: float = 0.015
    jitter_fraction: float = 0.01
    drift_settle: float = 30e-9
    drift_tau: float = 5.0
    drift_rate: float = 1e-9
    line_overhead: float = 1e-4
    charge_onset: float = 20.0
    charge_full: float = 500.0


def yields(height: np.ndarray, material: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(SE, BSE) yield maps of a periodic texture tile."""
    gy, gx = np.gradient(height)
    sec = np.minimum(np.sqrt(1.0 + gx * gx + gy * gy), 4.0)  # yield saturates near grazing
    curvature = -ndimage.laplace(ndimage.gaussian_filter(height, 1.2, mode="wrap"), mode="wrap")
    edge = np.tanh(np.maximum(curvature, 0.0) * 0.5)
    shade = gx / sec
    se = (0.1 + 0.6 * material) * sec**0.8 + 0.2 * edge + 0.08 * shade
    bse = material * (0.85 + 0.15 / sec) + 0.03 * shade
    return (np.maximum(se, 0.0).astype(np.float32), np.maximum(bse, 0.0).astype(np.float32))


def mipmaps(image: np.ndarray, min_size: int = 32) -> list[np.ndarray]:
    """[image, 2x box-downsampled, 4x, ...] down to `min_size` (anti-aliasing pyramid)."""
    levels = [np.ascontiguousarray(image, dtype=np.float32)]
    while min(levels[-1].shape) >= 2 * min_size:
        a = levels[-1]
        h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
        a = a[:h, :w]
        levels.append(((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25)
                      .astype(np.float32))
    return levels


def _down2(a: np.ndarray) -> np.ndarray:
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * np.float32(0.25)


def _up2_rows(a: np.ndarray) -> np.ndarray:
    """Linear 2x upsampling along axis 0 (edge-clamped)."""
    prev = np.concatenate([a[:1], a[:-1]], axis=0)
    nxt = np.concatenate([a[1:], a[-1:]], axis=0)
    out = np.empty((2 * a.shape[0], a.shape[1]), np.float32)
    out[0::2] = 0.75 * a + 0.25 * prev
    out[1::2] = 0.75 * a + 0.25 * nxt
    return out


def _up2_cols(a: np.ndarray) -> np.ndarray:
    """Linear 2x upsampling along axis 1 (edge-clamped)."""
    prev = np.concatenate([a[:, :1], a[:, :-1]], axis=1)
    nxt = np.concatenate([a[:, 1:], a[:, -1:]], axis=1)
    out = np.empty((a.shape[0], 2 * a.shape[1]), np.float32)
    out[:, 0::2] = 0.75 * a + 0.25 * prev
    out[:, 1::2] = 0.75 * a + 0.25 * nxt
    return out


def _binomial(a: np.ndarray, sigma: float, passes: int | None = None) -> np.ndarray:
    """Gaussian approximated by repeated [1, 2, 1] / 4 passes (variance 0.5 px^2 each)."""
    out = np.array(a, dtype=np.float32)
    for _ in range(passes if passes is not None else int(round(2 * sigma * sigma))):
        for view in (out, out.T):
            inner = view[1:-1] * np.float32(0.5)
            inner += (view[:-2] + view[2:]) * np.float32(0.25)
            view[1:-1] = inner
    return out


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian probe blur of `sigma` pixels. Small sigma: binomial passes in place; larger:
    box-average by a power of two f <= 1.5 sigma, blur the small image with what is left of the
    variance (box + linear interpolation contribute about (f / 2)^2), interpolate back."""
    if sigma < 0.4:
        return image
    h, w = image.shape
    f = 1
    while 2 * f <= 1.5 * sigma and h % (2 * f) == 0 and w % (2 * f) == 0 and min(h, w) >= 8 * f:
        f *= 2
    if f == 1:
        return _binomial(image, sigma, max(1, int(round(2 * sigma * sigma))))
    small = image.astype(np.float32, copy=False)
    for _ in range(int(np.log2(f))):
        small = _down2(small)
    small = _binomial(small, np.sqrt(max(sigma * sigma - f * f / 4.0, 0.0)) / f)
    for _ in range(int(np.log2(f))):
        small = _up2_cols(_up2_rows(small))
    return small


def blur_sigma_px(defocus_error: float, pixel: float, params: PhysicsParams) -> float:
    """Probe sigma in pixels: in-focus probe plus the defocus disc (convergence * |df|)."""
    return float(np.hypot(params.probe_sigma, 0.5 * params.convergence * abs(defocus_error))
                 / pixel)


class NoiseSource:
    """A buffer of standard normals, sliced at a random offset for each frame."""

    def __init__(self, seed: int, size: int = 1 << 21) -> None:
        self.buffer = np.random.default_rng([seed, 7919]).standard_normal(size,
                                                                          dtype=np.float32)

    def normals(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        n = shape[0] * shape[1]
        if n > self.buffer.size:
            return rng.standard_normal(shape, dtype=np.float32)
        start = int(rng.integers(0, self.buffer.size - n + 1))
        return self.buffer[start:start + n].reshape(shape)


def electrons_per_pixel(dwell: float, current: float) -> float:
    return current * dwell / ELEMENTARY_CHARGE


def shot_noise(signal: np.ndarray, detected_per_unit: float, normals: np.ndarray) -> np.ndarray:
    """Add Poisson-like shot noise to `signal` (yield units), where one unit of yield gives
    `detected_per_unit` counts; returns the noisy image in the same units."""
    scale = np.float32(1.0 / np.sqrt(max(detected_per_unit, 1e-12)))
    out = np.sqrt(np.maximum(signal, 0.0))
    out *= normals
    out *= scale
    out += signal
    return np.maximum(out, 0.0, out=out)


def scan_line_noise(image: np.ndarray, rng: np.random.Generator,
                    params: PhysicsParams) -> np.ndarray:
    """Row-to-row gain/offset fluctuations and a few rows jittered by one pixel."""
    n_rows = image.shape[0]
    level = float(image.mean()) if image.size else 0.0
    image += (rng.standard_normal(n_rows).astype(np.float32) * params.line_noise
              * level)[:, None]
    jittered = np.flatnonzero(rng.random(n_rows) < params.jitter_fraction)
    for row in jittered:
        image[row] = np.roll(image[row], 1 if rng.random() < 0.5 else -1)
    return image


def charging_strength(dose_per_nm2: float, params: PhysicsParams) -> float:
    """0 below the onset dose, rising log-linearly to 1 at `charge_full` (e/nm^2)."""
    if dose_per_nm2 <= params.charge_onset:
        return 0.0
    span = np.log(params.charge_full / params.charge_onset)
    return float(min(1.0, np.log(dose_per_nm2 / params.charge_onset) / span))


def _glow(image: np.ndarray, sigma: float) -> np.ndarray:
    """A wide blur; for a smooth result it is enough to blur at quarter resolution and
    expand (cheaper than interpolating back to full size)."""
    h, w = image.shape
    if h % 4 or w % 4 or min(h, w) < 64:
        return blur(image, sigma)
    small = blur(_down2(_down2(image)), sigma / 4)
    return np.repeat(np.repeat(small, 4, axis=1), 4, axis=0)


def charging(image: np.ndarray, mask: np.ndarray, strength: float,
             rng: np.random.Generator) -> np.ndarray:
    """Charging of insulating areas (`mask` 1 there): a bright glow around the insulator,
    horizontal bands from charge built up along the slow scan, and a few bright streaks
    where the charge discharges along a scan line."""
    if strength <= 0.0 or not mask.any():
        return image
    h, w = image.shape
    charged = image * mask
    image += np.float32(0.8 * strength) * _glow(charged, 0.03 * max(h, w))
    row_charge = charged.mean(axis=1)
    build = np.empty_like(row_charge)
    acc = 0.0
    for i, value in enumerate(row_charge):  # charge accumulates and leaks along the slow scan
        acc = 0.97 * acc + 0.03 * float(value)
        build[i] = acc
    image += (0.6 * strength * (build - build.mean()))[:, None] * mask
    for row in np.flatnonzero(rng.random(h) < 0.01 * strength):
        start = int(rng.integers(0, w))
        image[row, start:] += 0.5 * strength * mask[row, start:]
    return image


def drift_offset(t: float, direction: np.ndarray, params: PhysicsParams) -> np.ndarray:
    """Stage/beam drift (m, (dx, dy)) after `t` s since the last stage move: a settling term
    that saturates after a few `drift_tau` plus a slow thermal creep."""
    settle = params.drift_settle * (1.0 - np.exp(-t / params.drift_tau))
    return (settle + params.drift_rate * t) * direction
