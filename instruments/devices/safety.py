"""The safety envelope and the guard that enforces it below every caller.

Two tiers: hard limits (stage travel, FOV, dwell, dose per frame and per area over the
session, move count) are always refused; a *free zone* inside the stage limits may be set for
live sessions, and a move outside it needs a recorded human approval granted on the guard for
that exact target. Before every acquisition the guard reads the instrument's settings back
(beam current, energy, dwell: an operator may have changed them) and refuses the frame, with
an incident, if they break the envelope; the frame's own metadata is checked again. Every frame
leaving the guard has passed `check_image`. The guard's counters (moves, frames, exposures)
are a snapshot (`counters`/`restore`) a resumed session carries over.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from instruments.devices.dose_ledger import DoseLedger
from instruments.devices.errors import (
    ApprovalRequired,
    BadFrame,
    InstrumentError,
    InstrumentTimeout,
    InstrumentUnreachable,
    ProtocolError,
    RemoteError,
    SafetyRefused,
)
from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.devices.frame_checks import check_image
from instruments.devices.microscope import Capabilities, InstrumentStatus, Microscope

ELEMENTARY_CHARGE = 1.602176634e-19


@dataclass(frozen=True)
class SafetyEnvelope:
    """Limits for one session. Lengths in m, dwell in s, dose in electrons per nm^2."""

    stage_x: tuple[float, float] = (-1e-3, 1e-3)
    stage_y: tuple[float, float] = (-1e-3, 1e-3)
    stage_z: tuple[float, float] = (-1e-3, 1e-3)
    tilt: tuple[float, float] = (-10.0, 10.0)
    fov: tuple[float, float] = (0.5e-6, 200e-6)
    dwell: tuple[float, float] = (1e-8, 1e-4)
    max_dose_per_nm2: float = 1e6            # one frame
    max_dose_per_nm2_total: float = 1e8      # any point of the specimen, over the session
    max_moves: int = 10_000
    free_zone: tuple[tuple[float, float], tuple[float, float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_RANGES = ("stage_x", "stage_y", "stage_z", "tilt", "fov", "dwell")
_SCALARS = {"max_dose_per_nm2": float, "max_dose_per_nm2_total": float, "max_moves": int}


def _range(name: str, value: Any) -> tuple[float, float]:
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in value)
            or value[0] > value[1]):
        raise ValueError(f"envelope {name}: expected [min, max] with min <= max, got {value!r}")
    return float(value[0]), float(value[1])


def envelope_from_dict(values: dict[str, Any]) -> SafetyEnvelope:
    """A SafetyEnvelope from JSON-shaped values (lists for ranges; `free_zone` as
    [[x0, x1], [y0, y1]] or null); ValueError naming the bad key."""
    known = set(_RANGES) | set(_SCALARS) | {"free_zone"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown envelope keys {unknown}; known: {sorted(known)}")
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in _RANGES:
            out[name] = _range(name, value)
        elif name in _SCALARS:
            try:
                out[name] = _SCALARS[name](value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"envelope {name}: {value!r} is not a number") from exc
        elif value is not None:
            if not isinstance(value, list | tuple) or len(value) != 2:
                raise ValueError(f"envelope free_zone: expected [[x0, x1], [y0, y1]], got "
                                 f"{value!r}")
            out[name] = (_range("free_zone x", value[0]), _range("free_zone y", value[1]))
    return SafetyEnvelope(**out)


def dose_per_nm2(settings: ImagingSettings) -> float:
    """Electrons per nm^2 delivered by one scan with these settings."""
    electrons_per_pixel = settings.beam_current * settings.dwell / ELEMENTARY_CHARGE
    pixel_area_nm2 = (settings.pixel_size * 1e9) ** 2
    return electrons_per_pixel / pixel_area_nm2


def _inside(value: float, bounds: tuple[float, float], tolerance: float = 0.0) -> bool:
    """Within `bounds`, each widened by `tolerance` of its own size."""
    return (bounds[0] - tolerance * abs(bounds[0]) <= value
            <= bounds[1] + tolerance * abs(bounds[1]))


def check_settings(env: SafetyEnvelope, settings: ImagingSettings, where: str = "",
                   tolerance: float = 0.0) -> None:
    """FOV, dwell and the dose of one frame within `env` (`tolerance`: relative slack for
    values read back from an instrument), else SafetyRefused naming `where`. A session's
    settings are checked so before it starts, and every scan's by the guard."""
    if not _inside(settings.fov, env.fov, tolerance):
        raise SafetyRefused(f"FOV {settings.fov:.3g} m outside envelope {env.fov}", where)
    if not _inside(settings.dwell, env.dwell, tolerance):
        raise SafetyRefused(f"dwell {settings.dwell:.3g} s outside envelope {env.dwell}",
                            where)
    dose = dose_per_nm2(settings)
    if not dose <= env.max_dose_per_nm2 * (1 + tolerance):
        raise SafetyRefused(
            f"dose {dose:.3g} e/nm^2 per frame (beam current {settings.beam_current:.3g} A, "
            f"dwell {settings.dwell:.3g} s) exceeds envelope {env.max_dose_per_nm2:.3g}",
            where)


@dataclass(frozen=True)
class Approval:
    """A human approval of one stage target: who, when, and why."""

    target: StagePosition
    operator: str
    note: str = ""
    timestamp: float = field(default_factory=time.time)


STAGE_TOLERANCE_M = 1e-9          # a stage further than this from its target did not get there
SLOW_FRAME_MARGIN_S = 0.1         # a frame later than twice its scan time plus this is slow
READBACK_TOLERANCE = 1e-6         # settings read back may differ from those set by rounding


def fault_kind(exc: InstrumentError) -> str:
    """The incident kind of an instrument error."""
    if isinstance(exc, BadFrame):
        return exc.fault
    return {InstrumentTimeout: "timeout", InstrumentUnreachable: "disconnect",
            ProtocolError: "protocol_error", RemoteError: "remote_error"}.get(
        type(exc), type(exc).__name__)


class GuardedMicroscope:
    """Wraps any Microscope; enforces the envelope and validates frames. Every fault it sees
    (a bad frame, a timeout, a dropped connection, a stage that did not reach its target, a
    slow frame) is reported to `on_incident(kind, message, **extra)` (the session file's
    incident log), whether or not the caller recovers from it; faults met before a receiver
    is set are kept and handed over when it is."""

    def __init__(self, inner: Microscope, envelope: SafetyEnvelope | None = None,
                 on_incident: Callable[..., None] | None = None) -> None:
        self._on_incident = on_incident
        self._held: list[tuple[str, str, dict[str, Any]]] = []
        self.inner = inner
        self.envelope = envelope or SafetyEnvelope()
        self.instrument_id = inner.instrument_id
        self.moves = 0
        self.frames = 0
        self.dose = DoseLedger()
        self._counting = threading.Lock()     # a prefetching thread scans while a node snapshots
        self._pending: list[Approval] = []
        self.approvals_used: list[Approval] = []
        self._settings: ImagingSettings | None = None
        self._stage: StagePosition | None = None
        self._beam: bool | None = None

    # --- counters a resumed session carries over -------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Moves, frames scanned and the dose ledger's exposures, as plain values."""
        with self._counting:
            return {"moves": self.moves, "frames": self.frames,
                    "exposures": self.dose.snapshot()}

    def restore(self, counters: dict[str, Any] | None) -> None:
        """Continue from a snapshot of `counters` (None or empty: nothing to continue)."""
        if not counters:
            return
        with self._counting:
            self.moves = int(counters.get("moves", 0))
            self.frames = int(counters.get("frames", 0))
            self.dose = DoseLedger(counters.get("exposures") or [])

    # --- checks ---------------------------------------------------------------------------
    def check_settings(self, settings: ImagingSettings, tolerance: float = 0.0) -> None:
        """FOV, dwell and the dose of one frame within the envelope (`tolerance`: relative
        slack for values read back from an instrument), else SafetyRefused."""
        check_settings(self.envelope, settings, self.instrument_id, tolerance)

    def check_dose_budget(self, stage: StagePosition, settings: ImagingSettings) -> None:
        """The dose already given to the frame's footprint plus this frame's within the
        session's per-area budget, else SafetyRefused."""
        env = self.envelope
        with self._counting:
            before = self.dose.peak(stage.x, stage.y, settings.fov)
        after = before + dose_per_nm2(settings)
        if after > env.max_dose_per_nm2_total:
            raise SafetyRefused(
                f"dose budget: this area has received {before:.3g} e/nm^2; a frame of "
                f"{after - before:.3g} more exceeds max_dose_per_nm2_total "
                f"{env.max_dose_per_nm2_total:.3g}", self.instrument_id)

    def check_move(self, target: StagePosition) -> None:
        env, where = self.envelope, self.instrument_id
        for name, value, bounds in (("x", target.x, env.stage_x), ("y", target.y, env.stage_y),
                                    ("z", target.z, env.stage_z),
                                    ("tilt", target.tilt, env.tilt)):
            if not (math.isfinite(value) and _inside(value, bounds)):
                raise SafetyRefused(f"stage {name}={value:.6g} outside envelope {bounds}", where)
        if self.moves >= env.max_moves:
            raise SafetyRefused(f"move budget of {env.max_moves} stage moves used up", where)
        if env.free_zone is not None:
            (x0, x1), (y0, y1) = env.free_zone
            if not (x0 <= target.x <= x1 and y0 <= target.y <= y1) and not self._approved(
                    target):
                raise ApprovalRequired(
                    f"stage target ({target.x:.6g}, {target.y:.6g}) m is outside the free zone"
                    " and needs a recorded human approval",
                    request={"action": "move_stage", "target": target.as_dict()}, where=where)

    def _approved(self, target: StagePosition) -> bool:
        for approval in self._pending:
            if approval.target == target:
                return True
        return False

    def grant(self, approval: Approval) -> None:
        """Record a human approval for exactly one stage target (consumed by the move)."""
        self._pending.append(approval)

    @property
    def on_incident(self) -> Callable[..., None] | None:
        return self._on_incident

    @on_incident.setter
    def on_incident(self, receiver: Callable[..., None] | None) -> None:
        self._on_incident = receiver
        held, self._held = self._held, []
        for kind, message, extra in held:
            self._incident(kind, message, **extra)

    def _incident(self, kind: str, message: str, **extra: Any) -> None:
        if self._on_incident is None:
            self._held.append((kind, message, extra))
        else:
            self._on_incident(kind, message, **extra)

    def _call(self, what: str, func: Callable[..., Any], *args: Any) -> Any:
        """Run one instrument call; its instrument error is reported, then raised."""
        try:
            return func(*args)
        except SafetyRefused:
            raise
        except InstrumentError as exc:
            self._incident(fault_kind(exc), str(exc), call=what)
            raise

    # --- Microscope ---------------------------------------------------------------------
    def status(self) -> InstrumentStatus:
        return self._call("status", self.inner.status)

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def set_imaging(self, settings: ImagingSettings) -> ImagingSettings:
        self.check_settings(settings)
        applied = self._call("set_imaging", self.inner.set_imaging, settings)
        self._settings = applied
        return applied

    def imaging(self) -> ImagingSettings:
        return self._call("imaging", self.inner.imaging)

    def move_stage(self, position: StagePosition) -> StagePosition:
        self.check_move(position)
        self._stage = None                # unknown until the instrument says where it is
        reached = self._call("move_stage", self.inner.move_stage, position)
        with self._counting:
            self.moves += 1
        self._stage = reached
        if max(abs(reached.x - position.x), abs(reached.y - position.y)) > STAGE_TOLERANCE_M:
            self._incident("stage_not_reached",
                           f"stage asked to ({position.x:.6g}, {position.y:.6g}) m reports "
                           f"({reached.x:.6g}, {reached.y:.6g}) m",
                           target=position.as_dict(), reached=reached.as_dict())
        for approval in list(self._pending):
            if approval.target == position:
                self._pending.remove(approval)
                self.approvals_used.append(approval)
        return reached

    def _has_beam(self) -> bool:
        """Whether acquiring exposes a specimen: not so where stored frames are replayed, or a
        stage-less server serves a stored overview (DTMicroscope's STEM dataset)."""
        if self._beam is None:
            caps = self.inner.capabilities()
            self._beam = not (caps.replays_stored
                              or (caps.has_overview and not caps.can_move_stage))
        return self._beam

    def _refuse(self, check: str, settings: ImagingSettings, exc: SafetyRefused) -> NoReturn:
        self._incident("safety_refused", str(exc), call="acquire", check=check,
                       settings=settings.as_dict())
        raise exc

    def _check_before_scan(self) -> None:
        """The instrument's settings read back, and the area's dose budget, before a scan."""
        reported = self.imaging()
        try:
            self.check_settings(reported, READBACK_TOLERANCE)
        except SafetyRefused as exc:
            self._refuse("readback", reported, exc)
        if self._stage is None:
            self._stage = self.status().stage
        try:
            self.check_dose_budget(self._stage, reported)
        except SafetyRefused as exc:
            self._refuse("dose_budget", reported, exc)

    def _account(self, frame: Frame) -> None:
        """Count a scanned frame and its exposure; refuse it if its own metadata shows
        settings outside the envelope (changed after the readback)."""
        s = frame.settings
        with self._counting:
            self.frames += 1
            self.dose.add(frame.stage.x, frame.stage.y, s.fov, dose_per_nm2(s))
        try:
            self.check_settings(s, READBACK_TOLERANCE)
        except SafetyRefused as exc:
            self._refuse("frame_metadata", s, exc)

    def acquire(self) -> Frame:
        beam = self._has_beam()
        if beam:
            self._check_before_scan()
        started = time.perf_counter()
        frame = self._call("acquire", self.inner.acquire)
        took = time.perf_counter() - started
        if beam:
            self._account(frame)
        expected = self._settings.pixels if self._settings is not None else None
        try:
            frame.image = check_image(frame.image, expected, where=self.instrument_id)
        except BadFrame as exc:
            self._incident(exc.fault, str(exc), call="acquire")
            raise
        s = frame.settings
        scan_s = s.pixels * s.pixels * s.dwell
        if took > 2 * scan_s + SLOW_FRAME_MARGIN_S:
            self._incident("slow_frame", f"frame took {took:.3f} s for a {scan_s:.3f} s scan "
                           f"(over twice the scan time + {SLOW_FRAME_MARGIN_S} s: the "
                           "instrument, its link or a twin's rendering was slow; frame kept)",
                           frame_id=frame.frame_id, seconds=round(took, 4))
        return frame

    def close(self) -> None:
        self.inner.close()
