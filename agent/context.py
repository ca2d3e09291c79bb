"""The context of a session: everything heavy or live that the graph's nodes use and the
checkpointer must not store (the acquirer, classifier, writer, adjudicator, pixels). Named
apart from LangGraph's own `Runtime`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.acquirer import Acquirer
from agent.adjudication.base import Adjudicator
from agent.adjudication.demonstrations import DemonstrationBank
from agent.autofocus import AutofocusSettings
from agent.policy import RoutePolicy
from agent.quality import QualityThresholds
from agent.scratch import FrameScratch
from agent.survey_plan import SurveyPlan
from instruments.devices.frame import Frame, ImagingSettings
from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.overview import StoredOverview


class ClassifierLike(Protocol):
    class_names: list[str]

    def classify(self, images: Any, lmm_labels: list[str | None] | None = None,
                 imaging: list[dict | None] | None = None, views: int = 1) -> list: ...


class WriterLike(Protocol):
    def write_frame(self, frame: Frame, record: DecisionRecord,
                    record_json: str | None = None) -> bool: ...

    def has_frame(self, frame_id: str) -> bool: ...

    def update_provenance(self, **kw: Any) -> None: ...

    def write_overview(self, stored: StoredOverview) -> None: ...

    def overview(self) -> StoredOverview | None: ...

    def records(self) -> list[DecisionRecord]: ...

    def close(self, status: str, reason: str = "") -> None: ...


@dataclass
class SessionContext:
    acquirer: Acquirer              # the only caller of the microscope during the session
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
    demo_k: int = 8
    demo_strategy: str = "similar"
    focus_step: float = 2e-6
    autofocus: AutofocusSettings | None = None   # None: no focus search at new positions
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    stream: Any = None              # agent.event_stream.EventStream: what happens, for all
    recorder: Any = None            # agent.recorder.Recorder: session writes off the main path
    learner: Any = None             # agent.learning.SessionLearner under --learn (the classifier)
    last_tick: float = field(default_factory=time.monotonic)

    def tick(self) -> float:
        """Seconds since the previous tick (the wall-time budget accumulates these)."""
        now = time.monotonic()
        elapsed, self.last_tick = now - self.last_tick, now
        return elapsed

    @property
    def class_names(self) -> list[str]:
        return list(self.classifier.class_names)
