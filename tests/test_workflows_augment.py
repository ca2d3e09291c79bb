"""Training augmentation (the eight symmetries of the square, reproducible by seed) and the
profiles' stabilisers."""

import pytest
import torch

from workflows.training.augment import random_dihedral
from workflows.training.train import TrainOptions


def symmetries(image: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(im, k, dims=(-2, -1)) for im in (image, image.flip(-1))
            for k in range(4)]


def test_every_image_becomes_one_of_its_eight_symmetries_and_all_eight_occur():
    batch = torch.randn(64, 1, 8, 8)
    out = random_dihedral(batch, torch.Generator().manual_seed(0))
    seen = set()
    for image, turned in zip(batch, out, strict=True):
        matches = [k for k, sym in enumerate(symmetries(image)) if torch.equal(sym, turned)]
        assert matches, "output is not a flip/rotation of its input"
        seen.add(matches[0])
    assert seen == set(range(8))


def test_same_seed_same_augmentation():
    batch = torch.randn(16, 3, 8, 8)
    first = random_dihedral(batch, torch.Generator().manual_seed(5))
    again = random_dihedral(batch, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)


def test_non_square_images_are_refused():
    with pytest.raises(ValueError, match="square"):
        random_dihedral(torch.zeros(2, 1, 8, 6), torch.Generator())


def test_augmentation_is_on_for_quick_off_for_the_paper_protocol_and_can_be_set():
    assert TrainOptions(profile="quick").resolved()["augment"] is True
    assert TrainOptions(profile="paper").resolved()["augment"] is False
    assert TrainOptions(profile="paper", augment=True).resolved()["augment"] is True


def test_gradient_clipping_is_on_for_quick_off_for_the_paper_protocol_and_zero_turns_it_off():
    assert TrainOptions(profile="quick").resolved()["grad_clip"] == 1.0
    assert TrainOptions(profile="paper").resolved()["grad_clip"] is None
    assert TrainOptions(profile="quick", grad_clip=0).resolved()["grad_clip"] is None
    assert TrainOptions(profile="paper", grad_clip=2.5).resolved()["grad_clip"] == 2.5
