"""Training-time augmentation: the eight flips and quarter turns of the square image.

Micrographs have no preferred orientation (a fibre mat, a powder or a tip is the same class
turned by 90 degrees or mirrored), so the dihedral group D4 is label-preserving and adds no
interpolation artefacts. Off for the `paper` profile (the papers train without augmentation);
on for `quick`, where a from-scratch model sees few images.
"""

from __future__ import annotations

import torch


def random_dihedral(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) with H == W -> each image under one of the 8 symmetries of the square,
    drawn uniformly from `generator`."""
    if batch.shape[-1] != batch.shape[-2]:
        raise ValueError(f"dihedral augmentation needs square images, got {tuple(batch.shape)}")
    choice = torch.randint(0, 8, (batch.shape[0],), generator=generator)
    out = torch.empty_like(batch)
    for i, k in enumerate(choice.tolist()):
        image = batch[i]
        if k >= 4:
            image = image.flip(-1)
        out[i] = torch.rot90(image, k % 4, dims=(-2, -1))
    return out
