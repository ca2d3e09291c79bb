"""A session's run configuration: what `micagent run` was asked, JSON-able, so `--resume ID`
rebuilds the same session from it."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.autofocus import AutofocusSettings
from agent.policy import APPROVE_MODES, RoutePolicy
from agent.quality import QualityThresholds
from agent.targeting import STRATEGIES
from instruments.devices.frame import ImagingSettings
from instruments.utils import atomic_file


class RunConfigError(ValueError):
    """A run configuration that cannot work (unknown mode, no frames, ...)."""


@dataclass
class RunConfig:
    session_id: str
    instrument: str = "twin"
    objective: str = "survey"
    strategy: str = ""               # grid|spiral|overview|active; "": the objective's default
    frames: int = 36
    approve: str = "none"
    adjudicator: str = "offline"
    model: str | None = None
    out: str = ""
    seed: int = 0
    state_dir: str = ".micagent"
    imaging: dict[str, Any] = field(default_factory=lambda: ImagingSettings().as_dict())
    confidence: float = 0.9
    max_set_size: int = 1
    max_rescans: int = 2
    zoom_unsure: bool = False
    reject_unknown: bool = True
    zoom_out: bool = False
    relook: bool = True              # unsure frames: four more looks at shifted centres
    neighbourhood: bool | None = None  # context of the region; None: on with --learn only
    unsure_label: str = "classifier"  # an unresolved frame's label: classifier's or none
    unsure_views: int = 8            # dihedral views averaged for an unsure frame (1: off)
    demo_k: int = 8
    demo_strategy: str = "similar"
    bank: str | None = None
    budgets: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=lambda: QualityThresholds().as_dict())
    vlm_timeout_s: float = 30.0
    pipeline: bool = True            # survey: acquire the next tile while deciding this one
    envelope: dict[str, Any] = field(default_factory=dict)   # SafetyEnvelope values
    learn: bool = False              # learn from every human answer (agent/learning.py)
    learn_min: int = 3               # --learn: examples per class before it decides alone
    target_risk: float | None = None  # share of decided frames that may be wrong (risk_policy)
    autofocus: bool = False          # focus searches at new positions (agent/autofocus)
    autofocus_every: int = 0         # ... also every N stage moves (0: on sharpness only)

    def __post_init__(self) -> None:
        if self.approve not in APPROVE_MODES and self.approve != "web":
            raise RunConfigError(f"--approve must be one of {APPROVE_MODES} or web, "
                                 f"got {self.approve!r}")
        if self.adjudicator not in ("offline", "openai"):
            raise RunConfigError(f"--adjudicator must be offline or openai, "
                                 f"got {self.adjudicator!r}")
        if self.frames < 1:
            raise RunConfigError("--frames must be at least 1")
        if not self.vlm_timeout_s > 0:
            raise RunConfigError(f"the VLM timeout must be positive, got {self.vlm_timeout_s}")
        if self.learn and self.approve == "none":
            raise RunConfigError("--learn learns from a human's answers: add --approve "
                                 "uncertain or --approve all (--ui terminal or web)")
        if self.learn_min < 1:
            raise RunConfigError(f"--learn-min must be at least 1, got {self.learn_min}")
        if self.strategy and self.strategy not in STRATEGIES:
            raise RunConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, "
                                 f"got {self.strategy!r}")
        if self.demo_strategy not in ("similar", "random"):
            raise RunConfigError("demonstration strategy must be similar or random")
        if self.unsure_label not in ("classifier", "none"):
            raise RunConfigError(f"--unsure-label must be classifier or none, "
                                 f"got {self.unsure_label!r}")
        if not 1 <= self.unsure_views <= 8:
            raise RunConfigError(f"--unsure-views must lie in 1..8, got {self.unsure_views}")
        if self.target_risk is not None and not 0.0 < self.target_risk < 1.0:
            raise RunConfigError(f"--target-risk must lie in (0, 1), got {self.target_risk}")
        self.budgets = {**default_budgets(self.frames), **self.budgets}

    @property
    def approve_mode(self) -> str:
        """The policy's approval mode (`web` is the uncertain mode with a web front-end)."""
        return "uncertain" if self.approve == "web" else self.approve

    def policy(self) -> RoutePolicy:
        return RoutePolicy(confidence=self.confidence, max_set_size=self.max_set_size,
                           max_rescans=self.max_rescans, approve=self.approve_mode,
                           zoom_unsure=self.zoom_unsure, reject_unknown=self.reject_unknown,
                           zoom_out=self.zoom_out, relook=self.relook,
                           neighbourhood=self.learn if self.neighbourhood is None
                           else self.neighbourhood,
                           learn_min=self.learn_min if self.learn else 0,
                           unsure_label=self.unsure_label,  # type: ignore[arg-type]
                           unsure_views=1 if self.learn else self.unsure_views)

    def autofocus_settings(self) -> AutofocusSettings | None:
        return AutofocusSettings(every=self.autofocus_every) if self.autofocus else None

    def imaging_settings(self) -> ImagingSettings:
        return ImagingSettings(**self.imaging)

    def quality_thresholds(self) -> QualityThresholds:
        return QualityThresholds(**self.thresholds)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        atomic_file.write_text(path, json.dumps(self.as_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """The configuration saved at `path`; RunConfigError when it is not one (damaged
        JSON, unknown or missing keys)."""
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunConfigError(f"session registry {path} is unreadable: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known) if isinstance(values, dict) else []
        if not isinstance(values, dict) or unknown:
            raise RunConfigError(f"session registry {path} is not a run configuration"
                                 + (f" (unknown keys: {', '.join(unknown)})" if unknown else ""))
        try:
            return cls(**values)
        except TypeError as exc:
            raise RunConfigError(f"session registry {path}: {exc}") from exc


def default_budgets(frames: int) -> dict[str, float]:
    """Budgets that scale with the session: rescans, relooks, zoom-outs and adjudications for
    a fifth of the frames each, tokens for paid endpoints, 20 stage moves per frame, one
    hour."""
    return {"rescans": max(4, math.ceil(0.2 * frames)),
            "relooks": max(4, math.ceil(0.2 * frames)),
            "zoom_outs": max(4, math.ceil(0.2 * frames)),
            "adjudications": max(4, math.ceil(0.2 * frames)),
            "tokens": 500_000, "moves": 20 * frames, "wall_s": 3600.0}


def registry_path(state_dir: str | Path, session_id: str) -> Path:
    """Where a session's run configuration is kept for `--resume`."""
    return Path(state_dir) / "sessions" / f"{session_id}.json"


def checkpoint_path(out: str | Path) -> Path:
    return Path(f"{out}.ckpt.sqlite")


def work_dir(out: str | Path) -> Path:
    """Scratch frames and thumbnails of a session live beside its file."""
    return Path(f"{out}.work")
