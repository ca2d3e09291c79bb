"""The route policy: what to do with a classified frame, on calibrated probabilities."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

ApproveMode = Literal["none", "uncertain", "all"]
APPROVE_MODES: tuple[str, ...] = ("none", "uncertain", "all")


@dataclass(frozen=True)
class RoutePolicy:
    """Thresholds and limits of routing.

    confident: top probability >= `confidence` and conformal set size <= `max_set_size`.
    Unsure frames of poor quality are rescanned (at most `max_rescans` per frame); unsure frames
    of good quality (or still poor after the rescans) go to adjudication. With `zoom_unsure`
    an unsure frame of good quality is first rescanned once with a smaller FOV (a closer look,
    as a microscopist would zoom in) before it is adjudicated.
    """

    confidence: float = 0.9
    max_set_size: int = 1
    max_rescans: int = 2
    approve: ApproveMode = "none"
    zoom_unsure: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_confident(self, prediction: dict[str, Any]) -> bool:
        return (prediction["confidence"] >= self.confidence
                and len(prediction["conformal_set"]) <= self.max_set_size)


def decide(policy: RoutePolicy, prediction: dict[str, Any], quality: dict[str, Any],
           rescans_done: int, budgets: dict[str, float], used: dict[str, float]) -> str:
    """Next step for a classified frame: "record" | "rescan" | "adjudicate" | "approve".

    `prediction` is `Prediction.as_record()`; `quality` the assessment of the frame.
    """
    if policy.approve == "all":
        return "approve"
    if policy.is_confident(prediction):
        return "record"
    can_rescan = (rescans_done < policy.max_rescans
                  and used.get("rescans", 0) < budgets.get("rescans", 0))
    if not quality["ok"] and can_rescan:
        return "rescan"
    if policy.zoom_unsure and quality["ok"] and can_rescan and rescans_done == 0:
        return "rescan"
    if within_adjudication_budget(budgets, used):
        return "adjudicate"
    return "approve" if policy.approve == "uncertain" else "record"


def within_adjudication_budget(budgets: dict[str, float], used: dict[str, float]) -> bool:
    """True while both the adjudication count and the token budget have room."""
    return (used.get("adjudications", 0) < budgets.get("adjudications", 0)
            and used.get("tokens", 0) < budgets.get("tokens", float("inf")))
