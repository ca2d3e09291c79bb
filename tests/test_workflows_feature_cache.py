"""The frozen-stem feature cache: computed once per image and view, found again by the same
images, stem and size, missed by anything else, and never trusted when half-written."""

import pytest
import torch

from models.stem import PretrainedStem
from workflows.training import feature_cache
from workflows.training.augment import dihedral
from workflows.training.feature_cache import VIEW_ORDER, FeatureCache, compute_features

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stem():
    return PretrainedStem().eval()


@pytest.fixture
def images():
    return torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_views_are_computed_once_then_read_back_equal(tmp_path, stem, images):
    first = FeatureCache(tmp_path)
    levels = first.views(stem, images, 2)
    assert (first.hits, first.misses) == (0, 2)
    assert [tuple(level.shape) for level in levels] == [(2, 3, 40, 8, 8), (2, 3, 112, 4, 4),
                                                        (2, 3, 320, 2, 2)]
    assert all(level.dtype == torch.float16 for level in levels)
    again = FeatureCache(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(levels, again.views(stem, images, 2),
                                                 strict=True))
    assert (again.hits, again.misses) == (2, 0)


def test_view_k_holds_the_features_of_the_transformed_images(tmp_path, stem, images):
    levels = FeatureCache(tmp_path).views(stem, images, 2)
    mirrored = compute_features(stem, dihedral(images, VIEW_ORDER[1]))
    assert VIEW_ORDER[:2] == (0, 4)  # identity first, then the mirror image
    assert all(torch.equal(level[1], m) for level, m in zip(levels, mirrored, strict=True))


def test_another_image_size_or_other_images_miss_the_cache(tmp_path, stem, images):
    FeatureCache(tmp_path).views(stem, images, 1)
    bigger = torch.nn.functional.interpolate(images, size=96)
    for other in (bigger, images.flip(0), images + 0.01):
        cache = FeatureCache(tmp_path)
        cache.views(stem, other, 1)
        assert cache.misses == 1


def test_another_stem_misses_the_cache(tmp_path, stem, images, monkeypatch):
    FeatureCache(tmp_path).views(stem, images, 1)
    monkeypatch.setattr(feature_cache, "STEM_SHA256", "f" * 64)
    cache = FeatureCache(tmp_path)
    cache.views(stem, images, 1)
    assert cache.misses == 1


def test_a_truncated_cache_file_is_recomputed_not_trusted(tmp_path, stem, images):
    levels = FeatureCache(tmp_path).views(stem, images, 1)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(path.read_bytes()[:100])
    cache = FeatureCache(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(levels, cache.views(stem, images, 1),
                                                 strict=True))
    assert cache.misses == 1 and not list(tmp_path.glob("*.tmp*"))


def test_the_default_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MICAGENT_FEATURE_CACHE", str(tmp_path / "here"))
    assert FeatureCache().folder == tmp_path / "here"


def test_an_unwritable_cache_folder_costs_the_reuse_not_the_features(tmp_path, stem, images):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    cache = FeatureCache(blocker / "cache")
    levels = cache.views(stem, images, 1)
    assert levels[0].shape == (1, 3, 40, 8, 8)
    assert cache.write_error is not None and cache.misses == 1
