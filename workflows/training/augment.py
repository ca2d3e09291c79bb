"""Training-time augmentation: the eight flips and quarter turns of the square image.

Micrographs have no preferred orientation (a fibre mat, a powder or a tip is the same class
turned by 90 degrees or mirrored), so the dihedral group D4 is label-preserving and adds no
interpolation artefacts. Off for the `paper` profile (the papers train without augmentation);
on for `quick`, where a from-scratch model sees few images.
"""

from __future__ import annotations

import torch


def dihedral(images: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry k in 0..7 of the square: mirrored left-right when k >= 4, then turned k % 4
    quarter turns (k = 0 is the identity). Works on (C, H, W) and (B, C, H, W)."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral augmentation needs square images, got {tuple(images.shape)}")
    if k >= 4:
        images = images.flip(-1)
    return torch.rot90(images, k % 4, dims=(-2, -1))


def random_dihedral(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) with H == W -> each image under one of the 8 symmetries of the square,
    drawn uniformly from `generator`."""
    if batch.shape[-1] != batch.shape[-2]:
        raise ValueError(f"dihedral augmentation needs square images, got {tuple(batch.shape)}")
    choice = torch.randint(0, 8, (batch.shape[0],), generator=generator)
    out = torch.empty_like(batch)
    for i, k in enumerate(choice.tolist()):
        out[i] = dihedral(batch[i], k)
    return out
