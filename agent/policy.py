"""The route policy: what to do with a classified frame, on calibrated probabilities."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any, Literal

from agent.rescan_effect import kinds_planned
from instruments.session_file.decision_record import (
    DecisionRecord,
    PredictionRecord,
    Proposal,
    QualityRecord,
    Route,
)

ApproveMode = Literal["none", "uncertain", "all"]
APPROVE_MODES: tuple[str, ...] = ("none", "uncertain", "all")
UNKNOWN = Route.UNKNOWN.value
"""The label (and route) of a frame the classifier flags as unlike every class it knows."""


@dataclass(frozen=True)
class RoutePolicy:
    """Thresholds and limits of routing.

    confident: top probability >= `confidence` and conformal set size <= `max_set_size`.
    Unsure frames of poor quality are rescanned (at most `max_rescans` per frame); unsure frames
    of good quality (or still poor after the rescans) go to adjudication. With `zoom_unsure`
    an unsure frame of good quality is first rescanned once with a smaller FOV (a closer look,
    as a microscopist would zoom in) before it is adjudicated.

    unknown (with `reject_unknown`): the prediction's out-of-distribution test flagged the
    frame (`prediction.ood.unknown`; records without an OOD fit never are). Such a frame
    is neither confident nor adjudicated as a class: it is recorded as unknown, or proposed as
    unknown to a human when the policy asks for approvals. A poor-quality unknown frame is
    still rescanned first (a better frame may show a known class); a good one is not zoomed.
    """

    confidence: float = 0.9
    max_set_size: int = 1
    max_rescans: int = 2
    approve: ApproveMode = "none"
    zoom_unsure: bool = False
    reject_unknown: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_unknown(self, prediction: PredictionRecord) -> bool:
        """True when the policy rejects unknowns and the classifier flagged this frame."""
        return self.reject_unknown and bool(prediction.ood and prediction.ood.unknown)

    def is_confident(self, prediction: PredictionRecord) -> bool:
        return (not self.is_unknown(prediction)
                and (prediction.confidence or 0.0) >= self.confidence
                and len(prediction.conformal_set) <= self.max_set_size)


Step = Literal["record", "rescan", "adjudicate", "approve"]


def decide(policy: RoutePolicy, prediction: PredictionRecord, quality: QualityRecord,
           rescans_done: int, budgets: dict[str, float], used: dict[str, float],
           ineffective: Collection[str] = ()) -> Step:
    """Next step for a classified frame: "record" | "rescan" | "adjudicate" | "approve".

    An unknown frame (see `RoutePolicy`) is rescanned while its quality is poor, then recorded
    or sent for approval, never adjudicated. A rescan is chosen only while it would make a
    kind of change that has not already changed nothing this session (`ineffective`).
    """
    if policy.approve == "all":
        return "approve"
    if policy.is_confident(prediction):
        return "record"
    last_chance = rescans_done > 0 and rescans_done + 1 >= policy.max_rescans
    can_rescan = (rescans_done < policy.max_rescans
                  and used.get("rescans", 0) < budgets.get("rescans", 0)
                  and bool(kinds_planned(quality.failures, last_chance) - set(ineffective)))
    if not quality.ok and can_rescan:
        return "rescan"
    if policy.is_unknown(prediction):
        return "approve" if policy.approve == "uncertain" else "record"
    if policy.zoom_unsure and quality.ok and can_rescan and rescans_done == 0:
        return "rescan"
    if within_adjudication_budget(budgets, used):
        return "adjudicate"
    return "approve" if policy.approve == "uncertain" else "record"


def within_adjudication_budget(budgets: dict[str, float], used: dict[str, float]) -> bool:
    """True while both the adjudication count and the token budget have room."""
    return (used.get("adjudications", 0) < budgets.get("adjudications", 0)
            and used.get("tokens", 0) < budgets.get("tokens", float("inf")))


def verdict(policy: RoutePolicy, prediction: PredictionRecord) -> Proposal:
    """The classifier's proposal: its top class, or unknown when the OOD test flagged it."""
    if policy.is_unknown(prediction):
        return Proposal(label=UNKNOWN, source="ood")
    return Proposal(label=prediction.label, source="classifier")


def standing_route(policy: RoutePolicy, record: DecisionRecord) -> Route:
    """The route a frame is recorded under when the classifier's verdict stands."""
    if policy.is_unknown(record.prediction):
        return Route.UNKNOWN
    if policy.is_confident(record.prediction):
        return Route.RESCAN if record.rescans else Route.CONFIDENT
    return Route.QUALITY_FAILED if not record.quality.ok else Route.UNRESOLVED
