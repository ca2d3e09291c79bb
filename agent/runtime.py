"""The runtime context of a session: everything heavy or live that the graph's nodes use and
the checkpointer must not store (instrument, classifier, writer, adjudicator, pixels)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.adjudication.base import Adjudicator
from agent.adjudication.demonstrations import DemonstrationBank
from agent.policy import RoutePolicy
from agent.quality import QualityThresholds
from agent.scratch import FrameScratch
from agent.survey_plan import SurveyPlan
from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.devices.safety import GuardedMicroscope
from instruments.session_file.decision_record import DecisionRecord


class ClassifierLike(Protocol):
    class_names: list[str]

    def classify(self, images: Any, lmm_labels: list[str | None] | None = None) -> list: ...


class WriterLike(Protocol):
    def write_frame(self, frame: Frame, record: DecisionRecord,
                    record_json: str | None = None) -> bool: ...

    def has_frame(self, frame_id: str) -> bool: ...

    def update_provenance(self, **kw: Any) -> None: ...

    def close(self, status: str, reason: str = "") -> None: ...


class TileSource(Protocol):
    """Frames cut from a stored overview (DTMicroscope STEM servers have no stage)."""

    def positions(self) -> list[dict[str, Any]]: ...

    def frame(self, position: dict[str, Any], sequence: int) -> Frame: ...

    def point_data(self, tile: dict[str, Any]) -> dict[str, Any] | None: ...


@dataclass
class Runtime:
    microscope: GuardedMicroscope
    classifier: ClassifierLike
    writer: WriterLike
    adjudicator: Adjudicator
    bank: DemonstrationBank | None
    scratch: FrameScratch
    thumbnails: Path
    plan: SurveyPlan
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    survey_positions: list[dict[str, Any]] | None = None
    region: tuple[tuple[float, float], tuple[float, float]] | None = None
    tiles: TileSource | None = None
    demo_k: int = 8
    demo_strategy: str = "similar"
    focus_step: float = 2e-6
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    stream: Any = None              # agent.event_stream.EventStream: what happens, for all
    recorder: Any = None            # agent.recorder.Recorder: session writes off the main path
    prefetch: Any = None            # agent.pipeline.Prefetcher: the next survey frame, ahead
    # live, non-checkpointed caches
    applied: ImagingSettings | None = None
    stage: StagePosition | None = None
    last_tick: float = field(default_factory=time.monotonic)
    _can_move: bool | None = None

    @property
    def can_move(self) -> bool:
        """Whether the instrument has a stage to move (asked once)."""
        if self._can_move is None:
            self._can_move = bool(self.microscope.capabilities().can_move_stage)
        return self._can_move

    def tick(self) -> float:
        """Seconds since the previous tick (the wall-time budget accumulates these)."""
        now = time.monotonic()
        elapsed, self.last_tick = now - self.last_tick, now
        return elapsed

    @property
    def class_names(self) -> list[str]:
        return list(self.classifier.class_names)
