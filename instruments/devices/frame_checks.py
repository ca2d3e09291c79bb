"""Validation of acquired images: every implementation's frames pass through here."""

from __future__ import annotations

import numpy as np

from instruments.devices.errors import BadFrame


def check_image(image: np.ndarray, expected_pixels: int | None = None, where: str = "",
                saturation_fraction: float = 0.5) -> np.ndarray:
    """Return `image` as float32 (H, W) or raise BadFrame saying what is wrong.

    Rejects: wrong rank, a shape other than (expected_pixels, expected_pixels), non-finite
    values, an empty (constant) image, and more than `saturation_fraction` of pixels at the
    maximum value of a non-constant image (detector saturation).
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise BadFrame(f"frame must be 2-D (H, W), got shape {arr.shape}", where, "wrong_shape")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise BadFrame(f"frame dtype {arr.dtype} is not numeric", where, "bad_dtype")
    if expected_pixels is not None and arr.shape != (expected_pixels, expected_pixels):
        raise BadFrame(
            f"frame shape {arr.shape} != requested ({expected_pixels}, {expected_pixels})", where,
            "wrong_shape")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        nan = int(np.isnan(arr).sum())
        found = [f"{n} {name} pixels" for n, name in ((nan, "NaN"),
                                                        (int((~finite).sum()) - nan, "inf"))
                 if n]
        raise BadFrame(f"frame has non-finite values: {' and '.join(found)}", where,
                       "nan_frame" if nan else "inf_frame")
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        raise BadFrame(f"frame is empty (constant value {lo})", where, "empty_frame")
    at_max = float((arr == hi).mean())
    if at_max > saturation_fraction:
        raise BadFrame(f"frame saturated: {at_max:.0%} of pixels at maximum {hi}", where,
                       "saturated_frame")
    return arr
