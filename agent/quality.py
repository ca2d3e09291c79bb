"""Frame quality: sharpness (focus), SNR and drift, measured with scikit-image.

Measures run on a centre crop (at most `CROP` px a side) so that a 1024x1024 frame costs a few
milliseconds; drift is measured between two frames taken at the same stage position (a frame
and its rescan), by phase correlation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.ndimage import convolve
from skimage.filters import gaussian, sobel
from skimage.registration import phase_cross_correlation

CROP = 256


@dataclass(frozen=True)
class QualityThresholds:
    """A frame is good when sharpness >= min_sharpness, snr >= min_snr, drift <= max_drift_px."""

    min_sharpness: float = 0.02
    min_snr: float = 3.0
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


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def noise_sigma(image: np.ndarray) -> float:
    """Immerkaer's (1996) noise std estimate: the mean absolute response to a kernel that
    cancels smooth structure (skimage's wavelet estimate needs PyWavelets, absent here)."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    response = np.abs(convolve(img, _IMMERKAER, mode="reflect"))[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * response.sum() / (6 * (w - 2) * (h - 2)))


def snr(image: np.ndarray) -> float:
    """Signal std over the estimated noise std, on the centre crop."""
    crop = centre_crop(image).astype(np.float64)
    sigma = noise_sigma(crop)
    return float(crop.std() / sigma) if sigma > 0 else float("inf")


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
    return {"sharpness": s, "snr": n if np.isfinite(n) else 1e6, "drift_px": d,
            "ok": not failures, "failures": failures}
