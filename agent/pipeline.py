"""Pipelined acquisition: on a plan whose next position does not depend on the current
decision (a survey's tiles), the next frame is acquired on a worker thread while the current
one is assessed, classified and recorded.

Rules:
- one acquisition in flight at most; the instrument is used by one thread at a time: a node
  that needs the instrument (rescan, a move that waits for approval, the end of the session)
  first waits for the acquisition in flight (`settle`);
- a speculative frame is used only for the position and imaging settings it was taken with
  (`collect`); when the plan asks for anything else (a focus sweep changed the defocus, the
  session ended) it is discarded, and the caller counts and logs the discard as an event;
- a speculative acquisition that failed stands for that position's acquisition failing: the
  fault is handled as it would be without pipelining (a bad frame skips the position, a lost
  instrument fails the session), except a move that needs a human's approval, which is asked
  for on the main path;
- a speculative frame is not part of the session until taken: it has no sequence number and
  is in neither the scratch store nor the checkpoint, so a kill loses nothing recorded and
  resuming acquires that position afresh.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from instruments.devices.errors import BadFrame, InstrumentError
from instruments.devices.frame import Frame, ImagingSettings, StagePosition


@dataclass(frozen=True)
class Speculation:
    """A frame taken ahead of its decision: for which position and settings, how long the
    instrument took, whether the stage moved for it (None frame: why it failed)."""

    position: tuple[float, float]
    settings: ImagingSettings
    frame: Frame | None
    acquire_s: float
    moved: bool
    error: InstrumentError | None = None

    def unusable_for(self, position: tuple[float, float], settings: ImagingSettings) -> str:
        """Why this speculation cannot stand for the planned acquisition ("" if it can; a
        failed one that can stands for that acquisition failing)."""
        what = (f"speculative frame {self.frame.frame_id}" if self.frame is not None
                else f"failed speculative acquisition ({self.error})")
        if self.position != position or self.settings != settings:
            return (f"{what} was taken at {self.position} with {self.settings}; the plan "
                    f"asks {position} with {settings}")
        return ""


class Prefetcher:
    """Acquires one frame ahead on its own thread (see the module's rules)."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="micagent-prefetch")
        self._future: Future[Speculation] | None = None

    @property
    def pending(self) -> bool:
        """A speculation is in flight or waits for its position."""
        return self._future is not None

    def start(self, position: tuple[float, float], settings: ImagingSettings) -> None:
        """Begin acquiring at `position` with `settings` (nothing may be pending)."""
        if self._future is not None:
            raise RuntimeError("one speculative acquisition at a time")
        self._future = self._pool.submit(self._acquire, position, settings)

    def _acquire(self, position: tuple[float, float], settings: ImagingSettings) -> Speculation:
        rt = self.rt
        moved = False
        try:
            if rt.can_move and (rt.stage is None or (rt.stage.x, rt.stage.y) != position):
                rt.stage = rt.microscope.move_stage(StagePosition(*position))
                moved = True
            if rt.applied != settings:
                rt.applied = rt.microscope.set_imaging(settings)
            t0 = time.perf_counter()
            try:
                frame = rt.microscope.acquire()
            except BadFrame:
                frame = rt.microscope.acquire()
            return Speculation(position, settings, frame, time.perf_counter() - t0, moved)
        except InstrumentError as exc:       # incl. a move that needs an approval
            return Speculation(position, settings, None, 0.0, moved, exc)

    def settle(self) -> None:
        """Wait for the acquisition in flight (its result is kept for `collect`)."""
        if self._future is not None:
            self._future.result()

    def collect(self, position: tuple[float, float] | None = None) -> Speculation | None:
        """The speculation, once done, if it was taken for `position` (any, when None); it is
        the caller's from then on: used, or discarded and said so. One for another position
        stays pending (e.g. while the current position is rescanned)."""
        if self._future is None:
            return None
        speculation = self._future.result()
        if position is not None and speculation.position != position:
            return None
        self._future = None
        return speculation

    def close(self) -> None:
        self._pool.shutdown(wait=True)
