"""The per-frame decision record: one typed document, built by the agent's nodes, stored as one
JSON text beside each frame of a session file, read back (and migrated) by every reader.

It lives in instruments/ although the agent fills it in: the session file stores it and the
readers (`instruments.session_file.reader`, replay) return it, and ARCHITECTURE.md lets
instruments import neither agent nor models; the record is part of the file format, as the
frame is. It holds plain values only (ids, labels, numbers), never pixels or tensors.

Versions: 1 = the untyped dict of files written before this module (no `version` key);
2 = the first typed schema (open: sub-records kept keys beyond their fields, the rescan's
`effect` among them; checkpoints also carried the working-only `started`); 3 = the closed
schema (`extra="forbid"`); 4 = the audit trail of human acts (a rescan a human
asked for keeps that act in its `RescanRecord.human`; each `HumanRecord` says what the act
changed, `effect`, and for a rescan which change was asked, `rescan_change`); 5 adds the
context the decision used (`context`: a zoom-out, the neighbourhood) and `head_version` (the
version of the head a learning session classified the frame with; None elsewhere); 6 = the
schema whose prediction says how many dihedral views of the frame it averages (`views`,
test-time augmentation of an unsure frame) and, with more than one, the label of the frame as
taken alone (`as_taken`); 7 = the schema whose prediction also says how many frames of the
same field it averages (`frames`: a rescanned frame pools its attempts' readings); 8 = this
schema, whose context also holds the frame's relooks (`context.looks`: the same field imaged
again at shifted centres) and whose routes include `relooked`.
`DecisionRecord.from_stored` migrates older versions on read, and a
record validated with an explicit older `version` (a checkpoint written before) is migrated too.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticSerializationError

from instruments.devices.frame import ImagingSettings

RECORD_VERSION = 8


class Route(StrEnum):
    """How a frame's label was decided."""

    CONFIDENT = "confident"            # the classifier was sure of the first frame
    RESCAN = "rescan"                  # the classifier was sure after one or more rescans
    ADJUDICATED = "adjudicated"        # the adjudicator's answer stood
    CONTESTED = "contested"            # the re-classification overruled the adjudicator
    UNRESOLVED = "unresolved"          # unsure, nothing (budget, answer) could settle it
    QUALITY_FAILED = "quality_failed"  # unsure on a frame that stayed poor
    HUMAN = "human"                    # a human decided
    UNKNOWN = "unknown"                # out-of-distribution: unlike every class
    ZOOMED_OUT = "zoomed_out"          # sure once a wider field at the same centre was fused
    NEIGHBOURHOOD = "neighbourhood"    # sure once the same region's decided tiles were fused
    RELOOKED = "relooked"              # sure once looks at shifted centres, same field, were fused


# routes whose label stands on the evidence (a hunt counts only these frames as found)
DECIDED_ROUTES = (Route.CONFIDENT, Route.RESCAN, Route.ADJUDICATED, Route.HUMAN,
                  Route.ZOOMED_OUT, Route.NEIGHBOURHOOD, Route.RELOOKED)
ESCALATED_ROUTES = (Route.RESCAN, Route.ADJUDICATED, Route.HUMAN, Route.CONTESTED,
                    Route.ZOOMED_OUT, Route.RELOOKED)


class Decision(StrEnum):
    """What a human may answer to an approval request."""

    APPROVE = "approve"
    RELABEL = "relabel"
    RESCAN = "rescan"
    SKIP = "skip"


DECISIONS: tuple[str, ...] = tuple(d.value for d in Decision)


class RescanChange(StrEnum):
    """What a human's "reject and rescan" asks the rescan to change."""

    AUTO = "auto"                      # the agent's choice (from the frame's quality failures)
    DWELL = "dwell"                    # a longer dwell: less noise
    FOCUS = "focus"                    # a focus sweep: sharper
    ZOOM = "zoom"                      # a smaller field of view around the centre


class RecordFormatError(ValueError):
    """A stored record that no version of the schema describes."""


class _Part(BaseModel):
    """Closed: a key no field declares is a schema error, not a silent passenger."""

    model_config = ConfigDict(extra="forbid")


class MoveApproval(_Part):
    """The human approval a stage move outside the free zone needed: who, when, and why."""

    decision: Decision
    operator: str = "?"
    note: str = ""
    time: float | None = None               # epoch seconds
    reason: str = ""


class Position(_Part):
    """Where the frame was planned; `approval`: the human approval the move there needed,
    when it needed one."""

    x: float | None = None
    y: float | None = None
    approval: MoveApproval | None = None


class Tile(_Part):
    row: int
    col: int


class OodVerdict(_Part):
    score: float | None = None
    threshold: float | None = None
    unknown: bool = False
    method: str | None = None


class PredictionRecord(_Part):
    """The classifier's calibrated verdict (`models.prediction.Prediction.as_record`)."""

    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = Field(default_factory=dict)
    top_k: list[tuple[str, float]] = Field(default_factory=list)
    conformal_set: list[str] = Field(default_factory=list)
    entropy: float | None = None
    lmm_label: str | None = None
    ood: OodVerdict | None = None
    views: int = 1                     # dihedral views averaged (1: the frame as taken)
    frames: int = 1                    # frames of the field averaged (a rescan and before)
    as_taken: str | None = None        # views or frames > 1: this frame's label taken alone


class QualityRecord(_Part):
    sharpness: float | None = None
    snr: float | None = None
    drift_px: float | None = None
    ok: bool | None = None
    failures: list[str] = Field(default_factory=list)


class HumanRecord(_Part):
    """One human act on a frame: who, when, the proposal answered, the decision (approve,
    relabel, rescan, skip), the label it gives, the note, and what it changed (`changed`: the
    label differs from the proposal; `effect`: the change in words, e.g. "label porous ->
    dense" or "dwell 2e-06 s -> 8e-06 s"; `rescan_change`: the change a rescan was asked to
    make)."""

    operator: str = "?"
    time: float | str | None = None       # epoch seconds (ISO text in some version-1 files)
    proposal: str | None = None
    decision: Decision
    label: str | None = None
    note: str = ""
    changed: bool = False
    rescan_change: RescanChange | None = None
    effect: str = ""


AUTOFOCUS = "autofocus"
"""The reason of an attempt replaced by a focus search (agent/autofocus): not an escalation."""


class RescanRecord(_Part):
    """One earlier attempt of the frame and what was changed for the next."""

    settings: ImagingSettings | None = None
    new_settings: ImagingSettings | None = None
    reason: str = ""
    quality: QualityRecord | None = None
    prediction: PredictionRecord | None = None
    adaptation: dict[str, Any] = Field(default_factory=dict)
    adapt_s: float | None = None
    thumbnail: str | None = None
    frame_id: str | None = None
    # whether the frame this attempt led to was better: set when that frame is assessed
    # (agent/rescan_effect.py); None until then
    effect: Literal["improved", "none"] | None = None
    human: HumanRecord | None = None          # the human act that asked for this rescan


class AnswerRecord(_Part):
    label: str
    confidence: float | None = None
    rationale: str = ""


class AdjudicationRecord(_Part):
    adjudicator: str | None = None
    demonstrations: list[str] = Field(default_factory=list)
    prompt_hash: str | None = None
    answer: AnswerRecord | None = None
    error: str | None = None
    tokens: int = 0
    cached: bool = False
    attempts: list[str] = Field(default_factory=list)
    reclassified: PredictionRecord | None = None


class ZoomOutRecord(_Part):
    """A wider field at the same centre: its settings, its frame (not stored: its id and
    thumbnail), its own prediction, or why it could not be taken (`error`)."""

    settings: ImagingSettings | None = None
    frame_id: str | None = None
    thumbnail: str | None = None
    prediction: PredictionRecord | None = None
    acquire_s: float | None = None
    error: str | None = None


class LookRecord(_Part):
    """One more look at the frame's field: the same settings, the centre shifted (`x`, `y`,
    stage metres); its frame (not stored: its id), its own prediction, or why it could not be
    taken (`error`)."""

    x: float
    y: float
    frame_id: str | None = None
    prediction: PredictionRecord | None = None
    acquire_s: float | None = None
    error: str | None = None


class NeighbourRecord(_Part):
    """A decided frame taken for the same region: by stage distance and embedding similarity."""

    frame_id: str | None = None
    label: str
    distance_m: float
    similarity: float


class ContextRecord(_Part):
    """What the frame's decision saw beyond the frame: its relooks, a zoom-out, the
    neighbourhood, and the prediction fused from the frame's and theirs
    (agent/context_evidence.py)."""

    looks: list[LookRecord] = Field(default_factory=list)
    zoom_out: ZoomOutRecord | None = None
    neighbours: list[NeighbourRecord] = Field(default_factory=list)
    fused: PredictionRecord | None = None


class Proposal(_Part):
    """What the agent proposes to a human: a label and where it came from
    (classifier | ood | adjudicated | contested)."""

    label: str
    source: str


class Timings(_Part):
    """Seconds spent on the frame (None: not measured)."""

    acquire_s: float | None = None
    classify_s: float | None = None
    total_s: float | None = None


class DecisionRecord(_Part):
    """Everything the agent decided about one frame, and why.

    `label` is the final label (None: skipped by a human), `route` how it was reached,
    `prediction` the classifier's verdict on the frame as stored, `rescans` the earlier
    attempts, `adjudication` and `human` the escalations. Stored values only: working state
    (when the frame's decision started, ...) lives in the agent's state, not here.
    """

    version: int = RECORD_VERSION
    frame_id: str | None = None
    sequence: int | None = None
    position: Position | None = None
    tile: Tile | None = None
    settings: ImagingSettings | None = None
    prediction: PredictionRecord | None = None
    quality: QualityRecord | None = None
    label: str | None = None
    route: Route | None = None
    rescans: list[RescanRecord] = Field(default_factory=list)
    adjudication: AdjudicationRecord | None = None
    proposal: Proposal | None = None
    human: HumanRecord | None = None
    timings: Timings = Field(default_factory=Timings)
    point_data: dict[str, Any] | None = None
    context: ContextRecord | None = None
    head_version: int | None = None    # --learn: the answers the deciding head had learned

    @model_validator(mode="before")
    @classmethod
    def _migrate_older(cls, data: Any) -> Any:
        """A record that names an older version (a checkpoint written before) is migrated."""
        if isinstance(data, dict) and isinstance(data.get("version"), int) \
                and data["version"] < RECORD_VERSION:
            return migrate(data)
        return data

    @property
    def human_acts(self) -> list[HumanRecord]:
        """Every human act on the frame, in order: the rescans humans asked for, then the
        final decision."""
        acts = [attempt.human for attempt in self.rescans if attempt.human is not None]
        return [*acts, self.human] if self.human is not None else acts

    @property
    def escalations(self) -> list[RescanRecord]:
        """The rescans made to decide the frame (a focus search's attempt is not one)."""
        return [r for r in self.rescans if r.reason != AUTOFOCUS]

    @property
    def classifier_label(self) -> str | None:
        """The classifier's own label of the stored frame as taken (one view, before any
        escalation)."""
        if self.prediction is None:
            return None
        return self.prediction.as_taken or self.prediction.label

    def to_json(self, fallback: Any = None) -> str:
        """The record as one JSON document (NaN/inf as null); RecordFormatError when a value
        cannot be expressed (`fallback` converts values JSON lacks, e.g. numpy scalars)."""
        try:
            return self.model_dump_json(fallback=fallback)
        except (PydanticSerializationError, TypeError, ValueError) as exc:
            raise RecordFormatError(f"record is not JSON-serialisable: {exc}") from exc

    @classmethod
    def from_stored(cls, data: Any) -> DecisionRecord:
        """A record from its stored JSON value, migrated from older versions."""
        if not isinstance(data, dict):
            raise RecordFormatError(f"a decision record is a JSON object, got "
                                    f"{type(data).__name__}")
        version = data.get("version", 1)
        if not isinstance(version, int) or not 1 <= version <= RECORD_VERSION:
            raise RecordFormatError(f"record version {version!r} is not one this software "
                                    f"reads (1..{RECORD_VERSION})")
        data = migrate(data)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecordFormatError(f"record does not match schema {RECORD_VERSION}: "
                                    f"{exc.errors()[0]}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> DecisionRecord:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordFormatError(f"record is not valid JSON: {exc}") from exc
        return cls.from_stored(data)


_SUB_RECORDS = ("position", "tile", "prediction", "quality", "adjudication", "human",
                "settings", "point_data")


def _absent_if_empty(value: Any) -> Any:
    """Version 1 wrote `{}` for a sub-record that was not there."""
    return None if value == {} else value


def _epoch(value: Any) -> Any:
    """ISO-8601 text as epoch seconds (version 1 front-ends wrote either)."""
    if not isinstance(value, str):
        return value
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return value


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A stored record of any version in the current schema (version 1: no `version` key)."""
    version = data.get("version", 1)
    if version == 1:
        data = migrate_v1(data)
    if data.get("version") == 2:
        data = migrate_v2(data)
    if data.get("version") == 3:
        data = {**data, "version": 4}     # 4 only adds optional fields
    if data.get("version") == 4:
        data = {**data, "version": 5}     # 5 adds `context`, `head_version` (absent: None)
    if data.get("version") == 5:
        data = {**data, "version": 6}     # 6 adds the prediction's `views`, `as_taken`
    if data.get("version") == 6:
        data = {**data, "version": 7}     # 7 adds the prediction's `frames` (absent: 1)
    if data.get("version") == 7:
        data = {**data, "version": 8}     # 8 adds `context.looks` and route relooked
    return data


def migrate_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A version-2 record in schema 3: the working-only `started` (which checkpoints carried)
    leaves the record; every other key of version 2 is a field of version 3 (then 4)."""
    out = {key: value for key, value in data.items() if key != "started"}
    out["version"] = 3
    return out


def migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record (the untyped dict) in schema 2: `{}` for an absent sub-record becomes
    null, timings drop null values, human times become epoch seconds, `version` is set."""
    out = dict(data)
    for key in _SUB_RECORDS:
        if key in out:
            out[key] = _absent_if_empty(out[key])
    rescans = []
    for attempt in out.get("rescans") or []:
        attempt = dict(attempt) if isinstance(attempt, dict) else {}
        for key in ("settings", "new_settings", "quality", "prediction"):
            if key in attempt:
                attempt[key] = _absent_if_empty(attempt[key])
        rescans.append(attempt)
    out["rescans"] = rescans
    adjudication = out.get("adjudication")
    if isinstance(adjudication, dict):
        out["adjudication"] = {**adjudication,
                               "reclassified": _absent_if_empty(adjudication.get("reclassified")),
                               "answer": _absent_if_empty(adjudication.get("answer"))}
    if isinstance(out.get("human"), dict):
        out["human"] = {**out["human"], "time": _epoch(out["human"].get("time"))}
    if isinstance(out.get("timings"), dict):
        out["timings"] = {k: v for k, v in out["timings"].items() if v is not None}
    elif "timings" in out:
        out.pop("timings")
    if out.get("route") in ("", None):
        out["route"] = None
    out["version"] = 2
    return out


def accuracy(labels: Iterable[str | None], truths: Iterable[str | None]) -> tuple[float | None,
                                                                                   int]:
    """(fraction of frames with a ground-truth label whose label equals it, how many frames
    had one); (None, 0) when none had. The one place session accuracy is computed."""
    scored = [(label, truth) for label, truth in zip(labels, truths, strict=True) if truth]
    if not scored:
        return None, 0
    return sum(label == truth for label, truth in scored) / len(scored), len(scored)
