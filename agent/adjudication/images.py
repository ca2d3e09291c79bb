"""Frames as PNG for prompts and thumbnails."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from instruments.utils.image8 import to_uint8


def png_bytes(image: np.ndarray, max_side: int = 256) -> bytes:
    pil = Image.fromarray(to_uint8(image))
    if max(pil.size) > max_side:
        pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def png_data_url(image: np.ndarray, max_side: int = 256) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, max_side)).decode()
