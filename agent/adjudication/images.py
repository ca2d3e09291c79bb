"""Frames as PNG for prompts and thumbnails."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Contrast-stretch to 8 bit between the 0.5th and 99.5th percentiles."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def png_bytes(image: np.ndarray, max_side: int = 256) -> bytes:
    pil = Image.fromarray(to_uint8(image))
    if max(pil.size) > max_side:
        pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def png_data_url(image: np.ndarray, max_side: int = 256) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, max_side)).decode()
