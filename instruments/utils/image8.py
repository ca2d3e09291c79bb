"""The one conversion of a frame to 8 bits (PNG exports, thumbnails, prompts, web page,
twin datasets)."""

from __future__ import annotations

import numpy as np

AUTO_CONTRAST = (0.5, 99.5)       # percentiles, as an SEM's auto contrast
MIN_MAX = (0.0, 100.0)


def to_uint8(image: np.ndarray, percentiles: tuple[float, float] = AUTO_CONTRAST
             ) -> np.ndarray:
    """Contrast-stretch the finite values between two percentiles (MIN_MAX: the full range)
    to 0..255, clipping beyond and rounding to nearest; non-finite pixels and constant or
    all-non-finite images become 0."""
    arr = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(arr[finite], percentiles))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = np.clip((np.where(finite, arr, lo) - lo) / (hi - lo), 0.0, 1.0)
    return np.floor(scaled * 255.0 + 0.5).astype(np.uint8)
