"""The Frame: one acquired image plus everything the session file needs to describe it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np


def dataclass_from(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of dataclass `cls` from the keys of `values` it knows (others ignored,
    missing ones default)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class StagePosition:
    """Stage coordinates: x, y, z in metres, tilt in degrees."""

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    tilt: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ImagingSettings:
    """Scan settings: field of view (m, square), pixels per side, dwell (s), detector,
    defocus (m, 0 = in focus), beam energy (eV) and probe current (A)."""

    fov: float = 20e-6
    pixels: int = 256
    dwell: float = 2e-6
    detector: str = "SE"
    defocus: float = 0.0
    beam_energy: float = 5e3
    beam_current: float = 100e-12

    @property
    def pixel_size(self) -> float:
        """Pixel edge length in metres."""
        return self.fov / self.pixels

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Frame:
    """A float32 (H, W) image and its acquisition metadata.

    `evaluation` holds twin ground truth (e.g. {"label": "Fibres"}) for scoring only: the
    classifier and the routing policy never read it.
    """

    image: np.ndarray
    instrument_id: str
    settings: ImagingSettings
    stage: StagePosition
    sequence: int = 0
    frame_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: float = field(default_factory=time.time)
    original_metadata: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    def metadata(self) -> dict[str, Any]:
        """Flat, JSON-serialisable metadata (no image, no evaluation truth)."""
        return {
            "frame_id": self.frame_id,
            "sequence": self.sequence,
            "instrument_id": self.instrument_id,
            "timestamp": self.timestamp,
            "stage": self.stage.as_dict(),
            "settings": self.settings.as_dict(),
            "pixel_size": self.settings.pixel_size,
            "units": {"fov": "m", "pixel_size": "m", "dwell": "s", "defocus": "m",
                      "stage_xyz": "m", "tilt": "deg", "beam_energy": "eV",
                      "beam_current": "A"},
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything but the pixels: `metadata()` plus the instrument's original metadata
        and the evaluation truth. The one dict form a Frame is stored and sent in."""
        return {**self.metadata(), "original_metadata": dict(self.original_metadata),
                "evaluation": dict(self.evaluation)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], image: np.ndarray,
                  **overrides: Any) -> Frame:
        """The Frame `to_dict` described, with `image`. "frame_id", "settings" and "stage"
        are required (KeyError); unknown keys are ignored, other missing ones default;
        `overrides` replace fields (e.g. the client's own instrument_id)."""
        fields_ = {
            "frame_id": str(values["frame_id"]),
            "settings": dataclass_from(ImagingSettings, values["settings"]),
            "stage": dataclass_from(StagePosition, values["stage"]),
            "instrument_id": str(values.get("instrument_id", "")),
            "sequence": int(values.get("sequence", 0)),
            "original_metadata": dict(values.get("original_metadata") or {}),
            "evaluation": dict(values.get("evaluation") or {}),
        }
        if values.get("timestamp") is not None:
            fields_["timestamp"] = float(values["timestamp"])
        return cls(image=image, **{**fields_, **overrides})
