"""The Microscope protocol every instrument implementation meets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from instruments.devices.frame import Frame, ImagingSettings, StagePosition


@dataclass(frozen=True)
class Capabilities:
    """What an instrument can do. Ranges are (min, max) in SI units."""

    detectors: tuple[str, ...] = ("SE",)
    fov_range: tuple[float, float] = (1e-6, 100e-6)
    pixel_options: tuple[int, ...] = (128, 224, 256, 512, 1024)
    dwell_range: tuple[float, float] = (1e-7, 1e-4)
    defocus_range: tuple[float, float] = (-50e-6, 50e-6)
    can_move_stage: bool = True
    stage_range: tuple[tuple[float, float], tuple[float, float]] = ((-1e-3, 1e-3), (-1e-3, 1e-3))
    has_overview: bool = False
    has_spectra: bool = False
    spectrum_channel: str | None = None   # key of a spectrum image served with the overview
    replays_stored: bool = False          # serves stored frames in order: cannot image again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InstrumentStatus:
    """A snapshot of the instrument's state; `vacuum_ok`/`beam_on` None when not reported."""

    instrument_id: str
    connected: bool
    stage: StagePosition
    settings: ImagingSettings
    vacuum_ok: bool | None = None
    beam_on: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Microscope(Protocol):
    """Status and capabilities, imaging settings (set, and read back), stage moves,
    acquisition, close.

    Implementations raise the typed errors of `instruments.devices.errors`; none may hang past its
    configured timeout.
    """

    instrument_id: str

    def status(self) -> InstrumentStatus: ...

    def capabilities(self) -> Capabilities: ...

    def set_imaging(self, settings: ImagingSettings) -> ImagingSettings: ...

    def imaging(self) -> ImagingSettings:
        """The settings the next frame will be taken with, as the instrument reports them now
        (beam current and energy included: an operator may have changed them at the
        console); the last applied settings where the instrument reports none."""
        ...

    def move_stage(self, position: StagePosition) -> StagePosition: ...

    def acquire(self) -> Frame: ...

    def close(self) -> None: ...
