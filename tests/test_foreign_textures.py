"""The foreign texture dataset (twins/foreign_textures.py): layout, determinism, contrast, and
classes that differ in their spectra."""

from __future__ import annotations

import numpy as np
from PIL import Image

from twins.foreign_textures import CLASSES, render, write_foreign_dataset


def _images(root, kind):
    return [np.asarray(Image.open(p)) for p in sorted((root / kind).glob("*.png"))]


def test_writes_ten_class_folders_deterministically(tmp_path):
    a = write_foreign_dataset(tmp_path / "a", per_class=2, size=64, seed=3)
    b = write_foreign_dataset(tmp_path / "b", per_class=2, size=64, seed=3)
    c = write_foreign_dataset(tmp_path / "c", per_class=2, size=64, seed=4)
    assert len(CLASSES) == 10
    assert sorted(p.name for p in a.iterdir()) == sorted(CLASSES)
    for kind in CLASSES:
        first, again, other = _images(a, kind), _images(b, kind), _images(c, kind)
        assert len(first) == 2
        for img, same, different in zip(first, again, other, strict=True):
            assert img.shape == (64, 64) and img.dtype == np.uint8
            assert img.std() > 10, kind
            np.testing.assert_array_equal(img, same)
            assert not np.array_equal(img, different)


def _mean_power_spectrum(kind: str, n: int = 4, size: int = 64) -> np.ndarray:
    spectra = []
    for i in range(n):
        img = render(kind, size, np.random.default_rng([0, 99, i])).astype(np.float64)
        spectra.append(np.abs(np.fft.fft2(img - img.mean())) ** 2)
    mean = np.fft.fftshift(np.mean(spectra, axis=0))
    return mean / mean.sum()


def test_families_differ_in_their_mean_power_spectrum():
    spectra = {kind: _mean_power_spectrum(kind) for kind in CLASSES}
    for i, one in enumerate(CLASSES):
        for two in CLASSES[i + 1:]:
            assert np.abs(spectra[one] - spectra[two]).sum() > 0.3, (one, two)
