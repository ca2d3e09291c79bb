"""Class textures: several looks per class, every one a finite tile with structure."""

from __future__ import annotations

import numpy as np

from twins import physics, textures
from twins.classes import SEM_CLASSES


def test_every_class_has_several_looks_with_structure():
    for label in SEM_CLASSES:
        looks = set()
        for seed in range(12):
            tex = textures.generate(label, np.random.default_rng(seed), 256)
            se, bse = physics.yields(tex.height, tex.material)
            family, _, name = tex.look.partition("/")      # e.g. "films/cracked"
            assert family == label.split("_")[0].lower() and name, (label, tex.look)
            assert tex.height.shape == (256, 256)
            assert np.isfinite(se).all() and np.isfinite(bse).all()
            assert se.std() > 0.01 * se.mean(), tex.look
            looks.add(tex.look)
        assert len(looks) >= 3, (label, looks)


def test_generation_is_a_function_of_the_seed():
    a = textures.generate("Powder", np.random.default_rng(4), 128)
    b = textures.generate("Powder", np.random.default_rng(4), 128)
    np.testing.assert_array_equal(a.height, b.height)
    assert a.look == b.look
