"""Raw micrographs -> normalised model input tensors, as in the papers' setup.

The papers resize to 224x224 and normalise with mean 0.5 / std 0.5 per channel, so pixels lie in
[-1, 1] (CM-EMRL appendix; MultiFusion-LLM 6.1). Their SEM images are 8-bit, so [0, 1] came from
dividing by 255. Instrument frames arrive in any range (counts, floats), so here each image is
resized first (bilinear with antialiasing, in float64), then scaled to [0, 1] robustly by its
own 0.5th/99.5th percentiles (clipped) before that normalisation; a constant image maps to 0.5.
Scaling after resizing normalises exactly what the model sees and is ~10x cheaper on large
frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.errors import ModelInputError

LOW_PCT, HIGH_PCT = 0.5, 99.5


def _as_hwc(image: np.ndarray, index: int) -> np.ndarray:
    """Validate one image and return it as float64 (H, W, C) with C in {1, 3}."""
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ModelInputError(f"image {index}: dtype {arr.dtype} is not numeric")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3 and arr.shape[2] in (1, 3):
        pass
    elif arr.ndim == 3:
        raise ModelInputError(
            f"image {index}: shape {arr.shape} has {arr.shape[2]} channels; expected (H, W), "
            "(H, W, 1) or (H, W, 3)"
        )
    else:
        raise ModelInputError(
            f"image {index}: rank {arr.ndim} (shape {arr.shape}); expected (H, W) or (H, W, 3)"
        )
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ModelInputError(f"image {index}: shape {arr.shape} is too small (need >= 2x2)")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ModelInputError(f"image {index}: {bad} non-finite pixel(s) (NaN or inf)")
    return arr


def robust_unit_scale(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the image's 0.5/99.5 percentiles (clipped); constant -> 0.5."""
    lo, hi = np.percentile(arr, [LOW_PCT, HIGH_PCT])
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.full_like(arr, 0.5)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def preprocess_image(image: np.ndarray, channels: int = 1, size: int = 224,
                     index: int = 0) -> torch.Tensor:
    """One frame (H, W) / (H, W, 1) / (H, W, 3), any range -> float32 (channels, size, size).

    A grayscale frame is replicated when the model takes 3 channels; an RGB frame given to a
    1-channel model is refused (convert it to grayscale first), unless its channels are equal.
    """
    if channels not in (1, 3):
        raise ModelInputError(f"channels must be 1 or 3, got {channels}")
    arr = _as_hwc(image, index)
    if arr.shape[2] == 3 and channels == 1:
        if not (np.allclose(arr[..., 0], arr[..., 1]) and np.allclose(arr[..., 0], arr[..., 2])):
            raise ModelInputError(
                f"image {index}: RGB input but the model takes 1 channel (grayscale); convert "
                "the frame to grayscale first"
            )
        arr = arr[..., :1]
    tensor = torch.from_numpy(arr).permute(2, 0, 1)[None]  # float64: keeps small contrasts
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)
    tensor = torch.from_numpy(robust_unit_scale(tensor[0].numpy())).float()
    if tensor.shape[0] == 1 and channels == 3:
        tensor = tensor.expand(3, -1, -1)
    return ((tensor - 0.5) / 0.5).contiguous()


def preprocess_batch(images: np.ndarray | Sequence[np.ndarray], channels: int = 1,
                     size: int = 224) -> torch.Tensor:
    """(N, H, W) array, (N, H, W, 3) array or a list of frames -> (N, channels, size, size)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ModelInputError(
                f"a batch array must be (N, H, W) or (N, H, W, C); got shape {images.shape}"
            )
        frames = list(images)
    else:
        frames = list(images)
    if not frames:
        raise ModelInputError("empty batch: no images given")
    return torch.stack([preprocess_image(f, channels, size, i) for i, f in enumerate(frames)])


DIHEDRAL_VIEWS = 8


def dihedral_views(image: np.ndarray, views: int) -> list[np.ndarray]:
    """The first `views` of an image's eight dihedral transforms (rotations by 0/90/180/270
    degrees, then the same of its mirror image), the frame as taken first."""
    if not 1 <= views <= DIHEDRAL_VIEWS:
        raise ModelInputError(f"views must lie in 1..{DIHEDRAL_VIEWS}, got {views}")
    arr = np.asarray(image)
    out = [np.rot90(arr, k) for k in range(4)] + [np.rot90(arr[:, ::-1], k) for k in range(4)]
    return [np.ascontiguousarray(v) for v in out[:views]]
