"""Typed errors of the models layer (bad input, checkpoints, text encoders)."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by `models`."""


class ModelInputError(ModelError, ValueError):
    """Images, labels, class names or descriptions that the model cannot accept."""


class ConfigError(ModelError, ValueError):
    """A FusionConfig that describes no valid architecture."""


class EncoderFilesError(ModelError, FileNotFoundError):
    """The text encoder's files (config, tokenizer, weights) are missing or unreadable."""


class EncoderMismatchError(ModelError):
    """The text encoder found on disk is not the one the checkpoint was trained with."""


class CheckpointError(ModelError):
    """A checkpoint folder that is missing, incomplete or corrupt."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose class names or descriptions differ from what the caller passes."""


class StemWeightsError(ModelError):
    """The pretrained stem's weights package is missing, altered or cannot be mapped."""


class StemMismatchError(CheckpointError):
    """A checkpoint trained on other stem weights than the installed ones."""
