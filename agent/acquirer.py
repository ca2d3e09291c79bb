"""The one way to acquire: during a session only the `Acquirer` talks to the microscope (as
Bluesky's RunEngine alone touches hardware). The acquire node, the pipelined prefetch, the
rescan's focus sweep and the connect/status checks all go through it, and every result comes
back as data (`Shot`): nothing else keeps or writes the instrument's stage or settings.

Pipelining (`prefetch`): on a plan whose next position does not depend on the current
decision (a survey's tiles), the next frame is acquired on a worker thread while the current
one is assessed, classified and recorded. Rules:
- one acquisition in flight at most, and the instrument is used by one thread at a time:
  every call on the main thread first waits for the acquisition in flight (`settle`); the
  worker gets the stage and settings as values and returns those it leaves, which the main
  thread adopts when it collects the shot;
- a frame taken ahead is used only for the position and imaging settings it was taken with;
  when the plan asks for anything else (a focus sweep changed the defocus, the session ended)
  it is handed back as discarded, and the caller counts and logs it as an event;
- a prefetch that failed stands for that position's acquisition failing: the fault is handled
  as it would be without pipelining (a bad frame skips the position, a lost instrument fails
  the session), except a move that needs a human's approval, which is asked for on the main
  path;
- a frame taken ahead is not part of the session until taken: it has no sequence number and
  is in neither the scratch store nor the checkpoint, so a kill loses nothing recorded and
  resuming acquires that position afresh.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from instruments.devices.errors import ApprovalRequired, BadFrame, InstrumentError
from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.devices.microscope import Capabilities, InstrumentStatus
from instruments.devices.safety import Approval, GuardedMicroscope, SafetyEnvelope


class TileSource(Protocol):
    """Frames cut from a stored overview (DTMicroscope STEM servers have no stage)."""

    def positions(self) -> list[dict[str, Any]]: ...

    def frame(self, position: dict[str, Any], sequence: int) -> Frame: ...

    def point_data(self, tile: dict[str, Any]) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Shot:
    """One acquisition at a position: the frame (None: `error` says why), the instrument's
    time for it, whether the stage moved, and the stage and settings it left behind."""

    position: tuple[float, float]
    settings: ImagingSettings
    frame: Frame | None
    acquire_s: float = 0.0
    moved: bool = False
    error: InstrumentError | None = None
    stage: StagePosition | None = field(default=None, compare=False)
    applied: ImagingSettings | None = field(default=None, compare=False)

    @property
    def what(self) -> str:
        """The shot, named as one taken ahead (for the event that discards it)."""
        return (f"speculative frame {self.frame.frame_id}" if self.frame is not None
                else f"failed speculative acquisition ({self.error})")

    def unusable_for(self, position: tuple[float, float], settings: ImagingSettings) -> str:
        """Why this shot taken ahead cannot stand for the planned acquisition ("" if it can;
        a failed one that can stands for that acquisition failing)."""
        if self.position != position or self.settings != settings:
            return (f"{self.what} was taken at {self.position} with {self.settings}; the plan "
                    f"asks {position} with {settings}")
        return ""


def _shoot(microscope: GuardedMicroscope, position: tuple[float, float],
           settings: ImagingSettings, stage: StagePosition | None,
           applied: ImagingSettings | None, can_move: bool) -> Shot:
    """Move (where needed), apply the settings (where they differ) and acquire, one bad frame
    retried; any instrument error comes back in the shot."""
    moved = False
    try:
        if can_move and (stage is None or (stage.x, stage.y) != position):
            stage = microscope.move_stage(StagePosition(*position))
            moved = True
        if applied != settings:
            applied = microscope.set_imaging(settings)
        t0 = time.perf_counter()
        try:
            frame = microscope.acquire()
        except BadFrame:
            frame = microscope.acquire()    # one retry; a second bad frame is reported
        return Shot(position, settings, frame, time.perf_counter() - t0, moved, None,
                    stage, applied)
    except InstrumentError as exc:          # incl. a move that needs an approval
        return Shot(position, settings, None, 0.0, moved, exc, stage, applied)


class Acquirer:
    """The session's only caller of the microscope (see the module's rules)."""

    def __init__(self, microscope: GuardedMicroscope, tiles: TileSource | None = None,
                 pipeline: bool = False) -> None:
        self._microscope = microscope
        self.tiles = tiles
        self._stage: StagePosition | None = None
        self._applied: ImagingSettings | None = None
        self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="micagent-prefetch")
                      if pipeline and tiles is None else None)
        self._ahead: Future[Shot] | None = None
        self._ahead_adopted = False

    # --- what the instrument is ---------------------------------------------------------
    @property
    def instrument_id(self) -> str:
        return self._microscope.instrument_id

    @property
    def envelope(self) -> SafetyEnvelope:
        return self._microscope.envelope

    # --- the envelope's counters as checkpointed state ---------------------------------
    # The guard below the agent counts stage moves, frames scanned and the dose each area
    # has received, in its process. Every node's update carries a snapshot of them
    # (`envelope` in the state, see `snapshotting`), so the checkpoint holds them after each
    # step, and a resumed session restores them into its new guard before its first step: a
    # kill and `--resume` renews no budget.
    def counters(self) -> dict[str, Any]:
        """The guard's envelope counters (moves, frames, dose per area) as they stand."""
        return self._microscope.counters()

    def restore(self, values: dict[str, Any]) -> None:
        """Continue the guard's counters from a checkpointed state (a fresh one: nothing)."""
        self._microscope.restore(values.get("envelope"))

    def snapshotting(self, node: Callable[[Any], dict[str, Any]]
                     ) -> Callable[[Any], dict[str, Any]]:
        """`node`, its update extended with the guard's counters as they stand after it."""

        @functools.wraps(node)
        def run(state: Any) -> dict[str, Any]:
            return {**(node(state) or {}), "envelope": self.counters()}

        return run

    def capabilities(self) -> Capabilities:
        self.settle()
        return self._microscope.capabilities()

    @functools.cached_property
    def can_move(self) -> bool:
        """Whether the instrument has a stage to move (asked once)."""
        return bool(self.capabilities().can_move_stage)

    @functools.cached_property
    def replays_stored(self) -> bool:
        """Whether the instrument serves the stored frames of a session (asked once)."""
        return bool(self.capabilities().replays_stored)

    def connect(self, imaging: ImagingSettings) -> Capabilities:
        """The instrument's capabilities, the session's imaging applied (not to tiles)."""
        caps = self.capabilities()
        if self.tiles is None:
            self._applied = self._microscope.set_imaging(imaging)
        return caps

    def status(self) -> InstrumentStatus:
        """The instrument's status; where its stage stands is taken as known."""
        self.settle()
        status = self._microscope.status()
        self._stage = status.stage
        return status

    # --- frames -------------------------------------------------------------------------
    def take(self, where: dict[str, Any], settings: ImagingSettings, sequence: int
             ) -> tuple[Shot, Shot | None]:
        """The frame at `where` ({"x", "y"}, "row"/"col" for a tile) with `settings`: the
        one taken ahead where it fits, else acquired now; and a shot taken ahead that did not
        fit (discarded: the caller accounts for it). A move that needs a human's approval
        comes back as the shot's `ApprovalRequired` error (see `grant`)."""
        position = (where["x"], where["y"])
        ahead = self._collect(position)
        if ahead is not None and ahead.unusable_for(position, settings):
            return self._now(where, position, settings, sequence), ahead
        if ahead is not None and not isinstance(ahead.error, ApprovalRequired):
            return ahead, None
        return self._now(where, position, settings, sequence), None

    def _now(self, where: dict[str, Any], position: tuple[float, float],
             settings: ImagingSettings, sequence: int) -> Shot:
        if self.tiles is None:
            return self._adopt(_shoot(self._microscope, position, settings, self._stage,
                                      self._applied, self.can_move))
        t0 = time.perf_counter()
        try:
            frame = self.tiles.frame(where, sequence)
        except InstrumentError as exc:
            return Shot(position, settings, None, 0.0, False, exc)
        return Shot(position, settings, frame, time.perf_counter() - t0)

    def look(self, where: dict[str, Any], settings: ImagingSettings) -> Shot:
        """A frame at `where` with `settings`, now (a zoom-out at a frame's centre); a shot
        taken ahead stays ahead, and the stage goes back to `where` if it left."""
        self.settle()
        return self._adopt(_shoot(self._microscope, (where["x"], where["y"]), settings,
                                  self._stage, self._applied, self.can_move))

    def grant(self, approval: Approval) -> None:
        """A human's approval of one stage target, used by the next move there."""
        self._microscope.grant(approval)

    def snap(self, settings: ImagingSettings,
             position: tuple[float, float] | None = None) -> Frame:
        """One frame with `settings` (a focus search's trial) at `position`: the stage is
        moved there first when it is not known to stand there (a resumed session's fresh
        acquirer knows nothing); None: where the stage stands."""
        self.settle()
        if position is not None and self.can_move and (
                self._stage is None or (self._stage.x, self._stage.y) != position):
            self._stage = self._microscope.move_stage(StagePosition(*position))
        self._applied = self._microscope.set_imaging(settings)
        return self._microscope.acquire()

    def point_data(self, tile: dict[str, Any]) -> dict[str, Any] | None:
        """The spectrum at a tile's centre (None without a tile source or spectra)."""
        return self.tiles.point_data(tile) if self.tiles is not None else None

    # --- pipelining ---------------------------------------------------------------------
    def prefetch(self, position: tuple[float, float], settings: ImagingSettings) -> None:
        """Begin acquiring at `position` on the worker (nothing when pipelining is off or a
        shot is already ahead)."""
        if self._pool is None or self._ahead is not None:
            return
        can_move = self.can_move
        self._ahead_adopted = False
        self._ahead = self._pool.submit(_shoot, self._microscope, position, settings,
                                        self._stage, self._applied, can_move)

    def _adopt(self, shot: Shot) -> Shot:
        """Take the stage and settings a shot left as the instrument's."""
        self._stage, self._applied = shot.stage, shot.applied
        return shot

    def settle(self) -> None:
        """Wait for the shot in flight; the instrument is the main thread's again, where
        that shot left it (adopted once: later calls may have changed it since)."""
        if self._ahead is not None and not self._ahead_adopted:
            self._adopt(self._ahead.result())
            self._ahead_adopted = True

    def _collect(self, position: tuple[float, float] | None) -> Shot | None:
        """The shot taken ahead, if it was for `position` (any, when None); it is the
        caller's from then on. One for another position stays ahead (e.g. while the
        current position is rescanned)."""
        if self._ahead is None:
            return None
        self.settle()
        shot = self._ahead.result()
        if position is not None and shot.position != position:
            return None
        self._ahead = None
        return shot

    def leftover(self) -> Shot | None:
        """The shot taken ahead that the session no longer needs (it ended)."""
        return self._collect(None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
