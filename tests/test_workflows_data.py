"""Folder datasets: formats, crop, near-duplicate groups, splits, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from workflows_synth import CLASSES, write_dataset

from workflows.training.data import DatasetError, load_folder_dataset, parse_crop
from workflows.training.splits import SplitError, holdout_split, kfold_splits

NSID_SAMPLE = Path("/work/shared/data/nsid/PTO_Funakubo0001.h5")


def test_png_gray_and_rgb_of_mixed_sizes_load_as_resized_gray(tmp_path):
    write_dataset(tmp_path, per_class=6, size=40)
    ds = load_folder_dataset(tmp_path, size=32)
    assert ds.class_names == sorted(CLASSES)
    assert ds.images.shape == (24, 32, 32) and ds.images.dtype == np.float32
    assert np.bincount(ds.labels).tolist() == [6, 6, 6, 6]
    assert ds.sources[0].endswith(".png") and len(set(ds.digests)) == 24


def test_jpeg_and_16_bit_tiff_are_read(tmp_path):
    for name, arr, ext in (("A", np.full((20, 30), 200, np.uint8), "jpg"),
                           ("B", np.full((20, 30), 40000, np.uint16), "tif")):
        (tmp_path / name).mkdir()
        Image.fromarray(arr).save(tmp_path / name / f"x.{ext}")
    ds = load_folder_dataset(tmp_path, size=16)
    assert ds.images[0].mean() == pytest.approx(200, abs=2)
    assert ds.images[1].mean() == pytest.approx(40000, abs=1)


def test_crop_bottom_removes_the_info_bar(tmp_path):
    img = np.zeros((100, 100), np.uint8)
    img[80:] = 255  # info bar
    for c in ("A", "B"):
        (tmp_path / c).mkdir()
        Image.fromarray(img).save(tmp_path / c / "x.png")
    assert load_folder_dataset(tmp_path, size=20).images[0].max() == 255
    for crop in (parse_crop("20"), parse_crop("0.2")):
        assert load_folder_dataset(tmp_path, size=20, crop=crop).images[0].max() == 0
    with pytest.raises(DatasetError, match="removes all"):
        load_folder_dataset(tmp_path, size=20, crop=100)
    with pytest.raises(DatasetError):
        parse_crop("2.5")


@pytest.mark.skipif(not NSID_SAMPLE.exists(), reason="shared NSID sample not present")
def test_nsid_file_in_a_class_folder_gives_one_image_per_image_dataset(tmp_path):
    write_dataset(tmp_path, per_class=2, size=32, classes=("A", "B"))
    (tmp_path / "A" / "pto.h5").symlink_to(NSID_SAMPLE)
    before = NSID_SAMPLE.stat().st_mtime
    ds = load_folder_dataset(tmp_path, size=32)
    nsid = [s for s in ds.sources if s.startswith("A/pto.h5#")]
    assert len(nsid) == 4 and len(ds) == 8
    assert NSID_SAMPLE.stat().st_mtime == before  # read from a copy, never opened for writing


def test_near_duplicates_share_a_group_and_stay_on_one_side_of_every_split(tmp_path):
    write_dataset(tmp_path, per_class=10, size=48, rgb_every=0)
    rng = np.random.default_rng(1)
    for c in CLASSES:
        src = np.asarray(Image.open(tmp_path / c / f"{c.lower()}_000.png"), np.float64)
        for j in range(3):  # slightly noisy re-acquisitions of the same field
            dup = np.clip(src + rng.normal(0, 2, src.shape), 0, 255).astype(np.uint8)
            Image.fromarray(dup).save(tmp_path / c / f"dup_{j}.png")
    ds = load_folder_dataset(tmp_path, size=48)
    for c in CLASSES:
        members = [i for i, s in enumerate(ds.sources)
                   if s.startswith(f"{c}/dup_") or s == f"{c}/{c.lower()}_000.png"]
        assert len({int(ds.groups[i]) for i in members}) == 1
    for split in [holdout_split(ds.labels, ds.groups, seed=0),
                  *kfold_splits(ds.labels, ds.groups, k=3, seed=0)]:
        parts = [set(ds.groups[p].tolist()) for p in (split.train, split.val, split.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and \
            not (parts[1] & parts[2])
        assert set(np.bincount(ds.labels[split.test], minlength=4).nonzero()[0]) == {0, 1, 2, 3}
    assert len(np.unique(load_folder_dataset(tmp_path, size=48,
                                             group_duplicates=False).groups)) == len(ds)


def test_empty_class_folder_is_refused_by_name(tmp_path):
    write_dataset(tmp_path, per_class=3, size=32, classes=("A", "B"))
    (tmp_path / "Empty").mkdir()
    with pytest.raises(DatasetError, match="Empty"):
        load_folder_dataset(tmp_path)


def test_one_class_only_is_refused(tmp_path):
    write_dataset(tmp_path, per_class=3, size=32, classes=("A",))
    with pytest.raises(DatasetError, match="at least two class folders"):
        load_folder_dataset(tmp_path)


def test_truncated_and_unreadable_images_are_listed_by_file(tmp_path):
    write_dataset(tmp_path, per_class=3, size=32, classes=("A", "B"))
    good = (tmp_path / "A" / "a_000.png").read_bytes()
    (tmp_path / "A" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "B" / "garbage.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError) as err:
        load_folder_dataset(tmp_path)
    assert "A/truncated.png" in str(err.value) and "B/garbage.jpg" in str(err.value)


def test_class_folders_outside_the_expected_class_set_are_refused(tmp_path):
    write_dataset(tmp_path, per_class=3, size=32, classes=("A", "Other"))
    with pytest.raises(DatasetError, match="another class set"):
        load_folder_dataset(tmp_path, class_names=["A", "B"])


def test_splits_refuse_too_few_images(tmp_path):
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(SplitError):
        holdout_split(labels, np.arange(4))
    with pytest.raises(SplitError):
        kfold_splits(np.array([0] * 20), np.arange(20), k=5)
    shutil.rmtree(tmp_path)
