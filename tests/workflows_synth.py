"""Small synthetic folder datasets for the workflow tests: four visually distinct textures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Horizontal", "Vertical", "Dots", "Checker")


def texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One noisy image of `kind` with random phase and period, values in [0, 255]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(5, 9)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "Horizontal":
        base = np.sin(2 * np.pi * yy / period + phase)
    elif kind == "Vertical":
        base = np.sin(2 * np.pi * xx / period + phase)
    elif kind == "Dots":
        base = np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period + phase)
        base = (base > 0.5).astype(np.float64) * 2 - 1
    else:
        base = np.sign(np.sin(2 * np.pi * xx / (2 * period) + phase)
                       * np.sin(2 * np.pi * yy / (2 * period) + phase))
    img = 128 + 90 * base + rng.normal(0, 20, base.shape)
    return np.clip(img, 0, 255)


def write_dataset(root: Path, per_class: int = 12, size: int = 48, seed: int = 0,
                  classes: tuple[str, ...] = CLASSES, rgb_every: int = 5) -> Path:
    """PNG files in root/<class>/; every `rgb_every`-th image is RGB, sizes vary a little."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = size + (i % 3) * 4  # mixed sizes
            arr = texture(c, s, rng).astype(np.uint8)
            im = Image.fromarray(arr, "L")
            if rgb_every and i % rgb_every == 0:
                im = im.convert("RGB")
            im.save(root / c / f"{c.lower()}_{i:03d}.png")
    return root
