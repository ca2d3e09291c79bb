"""Frame quality: sharpness (focus), SNR and drift, measured with scikit-image.

Measures run on a centre crop (at most `CROP` px a side) so that a 1024x1024 frame costs a few
milliseconds; drift is measured between two frames taken at the same stage position (a frame
and its rescan), by phase correlation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from skimage.filters import gaussian, sobel
from skimage.registration import phase_cross_correlation

CROP = 256


@dataclass(frozen=True)
class QualityThresholds:
    """A frame is good when sharpness >= min_sharpness, snr >= min_snr, drift <= max_drift_px."""

    min_sharpness: float = 0.02
    min_snr: float = 0.25
    max_drift_px: float = 3.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def centre_crop(image: np.ndarray, size: int = CROP) -> np.ndarray:
    h, w = image.shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[top:top + size, left:left + size]


def _normalised(image: np.ndarray) -> np.ndarray:
    img = image.astype(np.float64)
    std = img.std()
    return (img - img.mean()) / (std if std > 0 else 1.0)


def sharpness(image: np.ndarray) -> float:
    """Tenengrad-style focus measure: mean squared Sobel gradient of the lightly smoothed,
    contrast-normalised centre crop (smoothing keeps shot noise from posing as detail)."""
    z = gaussian(_normalised(centre_crop(image)), sigma=1.0)
    return float(np.mean(sobel(z) ** 2))


def snr(image: np.ndarray) -> float:
    """Single-image SNR of an SEM frame by the autocorrelation method (Thong et al., Scanning
    2001): along scan lines, the noise-free signal variance is the lag-0 autocorrelation
    linearly extrapolated from lags 1 and 2; the remainder of the lag-0 value is white noise.
    Returns sqrt(signal variance / noise variance) on the centre crop."""
    x = centre_crop(image).astype(np.float64)
    x = x - x.mean()
    r0 = float(np.mean(x * x))
    r1 = float(np.mean(x[:, :-1] * x[:, 1:]))
    r2 = float(np.mean(x[:, :-2] * x[:, 2:]))
    signal = max(2.0 * r1 - r2, 0.0)
    noise = r0 - signal
    if noise <= 1e-12 * max(r0, 1e-30):
        return 1e6
    return float(np.sqrt(signal / noise))


def snr_ratio_scatter(shape: tuple[int, ...]) -> float:
    """Standard error of the variance ratio (`snr` squared) that `snr` estimates on a frame of
    this shape when the signal is weak: for white noise 2*r1 - r2 averages M lag pairs of the
    centre crop, so its scatter is sqrt(5 / M) of the lag-0 value. Near zero SNR this is
    what makes two frames of one place differ (0.0 and 0.2 on a 128 px frame)."""
    rows, cols = (min(side, CROP) for side in shape[-2:])
    return float(np.sqrt(5.0 / max(rows * (cols - 2), 1)))


NO_SIGNAL_Z = 3.0
ELEMENTARY_CHARGE = 1.602176634e-19    # C
MIN_ELECTRONS_PER_PIXEL = 1.0
"""Below this beam dose most pixels of a frame record no electron: nothing of the specimen
shows, whatever it is. At or above it a frame without structure shows a smooth specimen (a
coating, a flat film), which is what it is, not a missing signal."""


def electrons_per_pixel(beam_current: float, dwell: float) -> float:
    """The primary electrons that reach one pixel: probe current x dwell / e."""
    return beam_current * dwell / ELEMENTARY_CHARGE


def no_signal(snr_value: float | None, pixels: int, electrons: float | None = None) -> bool:
    """True when a frame's SNR (`snr`) is indistinguishable from none: the variance ratio it
    estimates lies within NO_SIGNAL_Z standard errors (`snr_ratio_scatter`) of zero. Given
    the frame's dose (`electrons` per pixel), a frame at MIN_ELECTRONS_PER_PIXEL or more has
    signal even without structure (a smooth specimen): only a starved beam means none."""
    if snr_value is None:
        return False
    if electrons is not None and electrons >= MIN_ELECTRONS_PER_PIXEL:
        return False
    return snr_value * snr_value <= NO_SIGNAL_Z * snr_ratio_scatter((pixels, pixels))


def drift_px(reference: np.ndarray, moving: np.ndarray) -> float:
    """Shift in pixels between two frames of the same place (phase correlation)."""
    a, b = centre_crop(reference), centre_crop(moving)
    if a.shape != b.shape:
        return 0.0
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=4, normalization=None)
    return float(np.hypot(*shift))


def assess(image: np.ndarray, thresholds: QualityThresholds,
           reference: np.ndarray | None = None) -> dict[str, Any]:
    """The quality record of a frame: {"sharpness", "snr", "drift_px", "ok"} plus failures."""
    s, n = sharpness(image), snr(image)
    d = drift_px(reference, image) if reference is not None else 0.0
    failures = []
    if s < thresholds.min_sharpness:
        failures.append("blur")
    if n < thresholds.min_snr:
        failures.append("noise")
    if d > thresholds.max_drift_px:
        failures.append("drift")
    return {"sharpness": s, "snr": min(n, 1e6), "drift_px": d,
            "ok": not failures, "failures": failures}
