"""The route policy, the one place that decides: what to do with a classified frame (on
calibrated probabilities), what an adjudicator's answer or a human's decision makes of it, and
under which label and route the frame is recorded. Each decision is a `Ruling` kept in the
checkpointed state; the graph's routers (at the end of this module) follow its step and the
nodes carry it out."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypedDict

from agent.adjudication.base import ABSTAIN
from agent.approval_request import HumanDecision
from agent.quality import electrons_per_pixel, no_signal
from agent.rescan_effect import kinds_planned
from instruments.session_file.decision_record import (
    Decision,
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
    Nothing overrides the flag: no adjudicator is asked, and only a human gives it a class.

    trusted_adjudicators: the adjudicators that may overrule the classifier, those whose
    measured accuracy on unsure held-out frames beats the classifier's on the same frames
    (agent/adjudication/trust.py; the session sets it from the model's measurement). None:
    no measurement applies (routing alone, as in the policy's own tests). An unsure frame with
    no trusted adjudicator, or one the adjudicator abstains on, goes to the human (approvals
    on) or is recorded unresolved: under the classifier's own label with `unsure_label`
    "classifier" (route unresolved says it was never confirmed; it is not a decided frame),
    with no label under "none". Measured (benchmarks/results/default_run.md,
    survey_quality.md): with no label the final accuracy over all frames falls below the
    classifier's own wherever the classifier was right on such a frame.

    escalations_off: escalation kinds this policy does not use (rescan kinds dwell, focus,
    fov; adjudication; relook): under a target risk, those that measured no gain
    (agent/risk_policy).
    A frame without signal (failing the SNR bar, with an SNR agent/quality.no_signal cannot
    tell from none, taken with under one electron per pixel) that no rescan (a longer dwell
    first) can help any more is recorded with no class (quality_failed, label None), never
    under the classifier's guess. A frame with no structure at a real dose shows a smooth
    specimen: it keeps the classifier's label under quality_failed (not a decided frame).

    Context (`rule_in_context`): with `neighbourhood` an unsure frame of good quality is
    pooled with the decided frames of its region; with `relook` one still read below
    `relook_below` is imaged four more times at its own field and settings, the centre
    shifted a quarter field along each diagonal, each look classified and averaged with the
    frame (measured, benchmarks/results/survey_quality.md "Relooks in the agent": on twin
    surveys the looks fixed frames read below 0.7 only, and relooking frames that stayed
    poor fixed as many as it broke); with `zoom_out` one still unsure is imaged once more at the
    same centre with a wider field, classified on its own and pooled too
    (agent/context_evidence.py). Sure once pooled, it is recorded under the pooled label;
    still unsure, the pooled label is the one its next step starts from.

    learning (`learn_min` > 0, `micagent run --learn`): until two classes have `learn_min`
    examples each, the head decides no frame (`rule_classified`, `taught`); then it decides
    none it reads as a class with fewer (`learned_enough`). A frame read as a
    class with enough examples whose conformal set is a single class (and not unknown) is
    recorded, whatever its top probability, and every other frame goes to the human, without
    adjudication: the human's answer is what the session learns from. With
    `neighbourhood` a frame whose taught neighbours agree is recorded under their label
    (`rule_on_taught`), from the first answers on.

    unsure_views (> 1): a frame the classifier is unsure of (not confident, not unknown) is
    classified again on that many dihedral views of itself, probabilities averaged
    (`Classifier.classify(views=...)`), before anything else is ruled on it: no dose, no stage
    move, ~0.1 s a view on one CPU thread. The averaged prediction gives the frame's label
    but never makes it confident (`is_confident`): it goes on to the escalations, or is
    recorded unresolved under that label. Measured (benchmarks/results/survey_views.md): on
    600 survey tiles of 20 twin seeds, top-1 on the 97 unsure frames 0.670 -> 0.753; in the
    agent, 20 seeds x 20 tiles, final 0.9225 -> 0.9325.
    """

    confidence: float = 0.9
    max_set_size: int = 1
    max_rescans: int = 2
    approve: ApproveMode = "none"
    zoom_unsure: bool = False
    reject_unknown: bool = True
    trusted_adjudicators: tuple[str, ...] | None = None
    escalations_off: tuple[str, ...] = ()
    unsure_label: Literal["classifier", "none"] = "classifier"
    unsure_views: int = 1

    def may_adjudicate(self) -> bool:
        """True when some adjudicator may overrule the classifier."""
        return self.trusted_adjudicators is None or bool(self.trusted_adjudicators)

    def may_overrule(self, adjudicator: str | None) -> bool:
        """True when the adjudicator named `adjudicator` may overrule the classifier."""
        return self.trusted_adjudicators is None or adjudicator in self.trusted_adjudicators
    zoom_out: bool = False
    neighbourhood: bool = False
    learn_min: int = 0
    relook: bool = False
    relook_below: float = 0.7

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_unknown(self, prediction: PredictionRecord) -> bool:
        """True when the policy rejects unknowns and the classifier flagged this frame."""
        return self.reject_unknown and bool(prediction.ood and prediction.ood.unknown)

    def is_confident(self, prediction: PredictionRecord) -> bool:
        """Sure enough to decide alone. A prediction averaged over several views never is:
        the confidence threshold and the conformal set were calibrated on single views, and
        the views once made an unsure right frame surely wrong (survey_views.md)."""
        return (prediction.views == 1 and not self.is_unknown(prediction)
                and (self.learn_min > 0 or (prediction.confidence or 0.0) >= self.confidence)
                and len(prediction.conformal_set) <= self.max_set_size)


Step = Literal["record", "rescan", "adjudicate", "approve", "zoom_out", "relook"]


class Ruling(TypedDict):
    """The policy's decision on the frame in flight (plain values: it is checkpointed).

    step: where the frame goes next. label and source: the label the frame is recorded (or
    proposed to a human) under and who proposes it (classifier, ood, adjudicated, contested,
    human). route: the route it is recorded under when it goes to record (None otherwise)."""

    step: Step
    label: str | None
    source: str
    route: str | None


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
    skip = set(ineffective) | set(policy.escalations_off)
    can_rescan = (rescans_done < policy.max_rescans
                  and used.get("rescans", 0) < budgets.get("rescans", 0)
                  and bool(kinds_planned(quality.failures, last_chance) - skip))
    if not quality.ok and can_rescan:
        return "rescan"
    if policy.is_unknown(prediction):
        return "approve" if policy.approve == "uncertain" else "record"
    if policy.learn_min > 0:
        return "approve"
    if policy.zoom_unsure and quality.ok and can_rescan and rescans_done == 0:
        return "rescan"
    if ("adjudication" not in policy.escalations_off and policy.may_adjudicate()
            and within_adjudication_budget(budgets, used)):
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
        return Route.RESCAN if record.escalations else Route.CONFIDENT
    return Route.QUALITY_FAILED if not record.quality.ok else Route.UNRESOLVED


def learned_enough(taught: Mapping[str, int], learn_min: int, label: str | None) -> bool:
    """Whether a learning session's head may decide alone a frame it reads as `label`: two
    classes or more have `learn_min` examples each, and `label` is one of them. A class with
    fewer (one named late, or met rarely) holds back only the frames the head gives it, not
    every frame: measured with the scripted operator (benchmarks/results/teach.md, "Which
    frames an under-taught class holds back"), on three twin seeds the unattended accuracy
    reached 0.95 after 53-71 answers (every frame held back: after 75-80, or never)."""
    enough = {name for name, count in taught.items() if count >= learn_min}
    return len(enough) >= 2 and label in enough


def rule_classified(policy: RoutePolicy, record: DecisionRecord, budgets: dict[str, float],
                    used: dict[str, float], ineffective: Collection[str] = (),
                    taught: Mapping[str, int] | None = None) -> Ruling:
    """The ruling on a frame just classified: the next step, the classifier's verdict and the
    route that verdict is recorded under. `taught`: in a learning session, the examples per
    class learned so far; too few send the frame to the human (source `learning`)."""
    if policy.learn_min > 0 and not learned_enough(taught or {}, policy.learn_min,
                                                   record.prediction.label):
        label = record.prediction.label if record.prediction.label in (taught or {}) \
            else UNKNOWN
        return Ruling(step="approve", label=label, source="learning", route=None)
    step = decide(policy, record.prediction, record.quality, len(record.escalations),
                  budgets, used, ineffective)
    if (step != "rescan" and policy.approve != "all" and record.settings is not None
            and "noise" in record.quality.failures
            and no_signal(record.quality.snr, record.settings.pixels,
                          electrons_per_pixel(record.settings.beam_current,
                                              record.settings.dwell))
            and not policy.is_confident(record.prediction)):      # still no signal
        return Ruling(step="record", label=None, source="quality",
                      route=Route.QUALITY_FAILED.value)
    proposal = verdict(policy, record.prediction)
    route = standing_route(policy, record)
    label = proposal.label
    if (step == "record" and route == Route.UNRESOLVED and not policy.may_adjudicate()
            and policy.unsure_label == "none"):
        label = None            # unsure, and no adjudicator measured better than the classifier
    return Ruling(step=step, label=label, source=proposal.source, route=route.value)


def rule_in_context(policy: RoutePolicy, record: DecisionRecord, ruling: Ruling,
                    budgets: dict[str, float], used: dict[str, float]) -> Ruling:
    """The classifier's `ruling` once the frame's context is weighed (`record.context`).

    Only an unsure frame of good quality that is not unknown, ruled for neither a rescan nor
    approval of every frame nor a learning session's question, is concerned: when its pooled
    prediction is sure it is recorded under the pooled label (route zoomed_out when a
    zoom-out was pooled, else relooked when relooks were, else neighbourhood); otherwise it
    is relooked once (a frame with a known stage position, read below `relook_below`), then
    zoomed out once, where the policy and the budgets allow; otherwise the ruling's next step
    stands, with the pooled label where there is one. A learning session rules on its taught
    neighbours instead (`rule_on_taught`)."""
    prediction = record.prediction
    if policy.learn_min > 0:
        return rule_on_taught(policy, record, ruling)
    if (ruling["step"] == "rescan" or policy.approve == "all" or not record.quality.ok
            or policy.is_confident(prediction) or policy.is_unknown(prediction)):
        return ruling
    context = record.context
    pooled = context.fused if context is not None else None
    zoomed = context is not None and context.zoom_out is not None
    relooked = context is not None and bool(context.looks)
    if pooled is not None and (pooled.confidence or 0.0) >= policy.confidence:
        route = (Route.ZOOMED_OUT if zoomed else Route.RELOOKED if relooked
                 else Route.NEIGHBOURHOOD)
        return Ruling(step="record", label=pooled.label, source="context", route=route.value)
    if (policy.relook and "relook" not in policy.escalations_off and not relooked
            and (prediction.confidence or 0.0) < policy.relook_below
            and record.position is not None
            and record.position.x is not None
            and used.get("relooks", 0) < budgets.get("relooks", 0)):
        return Ruling(step="relook", label=ruling["label"], source=ruling["source"],
                      route=None)
    if (policy.zoom_out and not zoomed
            and used.get("zoom_outs", 0) < budgets.get("zoom_outs", 0)):
        return Ruling(step="zoom_out", label=ruling["label"], source=ruling["source"],
                      route=None)
    if pooled is None or ruling["label"] is None:      # None: unsure_label "none" holds
        return ruling
    return Ruling(step=ruling["step"], label=pooled.label, source="context",
                  route=ruling["route"])


def rule_on_taught(policy: RoutePolicy, record: DecisionRecord, ruling: Ruling) -> Ruling:
    """A learning session's `ruling` once the frame's taught neighbours are weighed (frames of
    its region a human named, or named after such a neighbour: agent/context_evidence.py).

    A frame of good quality that is not unknown is recorded under its neighbours' label when
    they all name one class (route neighbourhood), whatever the head says: the human's answer
    on the region outweighs a head fitted on a few examples. That holds while the session is
    still learning its classes too (source `learning`: a class short of `learn_min` examples):
    the label is the human's, given on the same region, not the head's guess. Measured with
    the scripted operator on twin seeds 0-5 (benchmarks/results/teach.md, "Taught neighbours
    while the session learns"): the unattended accuracy over 50 frames reached 0.95 after
    fewer answers on every seed. Neighbours that disagree send the frame to the human (source
    `neighbours`). Otherwise the ruling stands."""
    near = record.context.neighbours if record.context is not None else []
    if (not near or ruling["step"] == "rescan"
            or policy.approve == "all" or not record.quality.ok
            or policy.is_unknown(record.prediction)):
        return ruling
    labels = {n.label for n in near}
    if len(labels) > 1:
        return Ruling(step="approve", label=ruling["label"], source="neighbours", route=None)
    return Ruling(step="record", label=labels.pop(), source="context",
                  route=Route.NEIGHBOURHOOD.value)


def rule_adjudicated(policy: RoutePolicy, record: DecisionRecord, answer: str | None,
                     reclassified: str | None, adjudicator: str | None = None) -> Ruling:
    """The ruling once the adjudicator answered (`answer`, None: no answer) and the frame was
    re-classified with that answer (`reclassified`).

    The answer stands (route adjudicated) when the re-classification agrees with it, or when
    the classifier had already said the same before it saw the answer: two independent
    sources that agree are not overturned by the fused re-classification. Otherwise they
    disagree: a human decides, or the frame is recorded as contested. With no answer, an
    abstention ("none of these / unsure") or an answer from an adjudicator that may not
    overrule the classifier (`adjudicator`, e.g. a failed VLM's offline fallback), the
    classifier's label goes to a human, or the frame is recorded unresolved (under the
    classifier's label or none, as `unsure_label` says)."""
    first = record.prediction.label
    attended = policy.approve != "none"
    if answer is None or answer == ABSTAIN or not policy.may_overrule(adjudicator):
        if attended:
            return Ruling(step="approve", label=first, source="classifier", route=None)
        return Ruling(step="record", label=first if policy.unsure_label == "classifier"
                      else None, source="classifier", route=Route.UNRESOLVED.value)
    agree = answer in (reclassified, first)
    label = answer if agree else reclassified
    source = "adjudicated" if agree else "contested"
    if agree and policy.approve != "uncertain":
        return Ruling(step="record", label=label, source=source, route=Route.ADJUDICATED.value)
    if attended:
        return Ruling(step="approve", label=label, source=source, route=None)
    return Ruling(step="record", label=label, source=source, route=Route.CONTESTED.value)


def rule_human(proposal: str | None, decision: HumanDecision) -> Ruling:
    """The ruling a human's decision on `proposal` makes: recorded as proposed (approve),
    under another label (relabel) or with none (skip), or rescanned (rescan)."""
    kind = decision.decision
    label = decision.label if kind == Decision.RELABEL else proposal
    if kind == Decision.SKIP:
        label = None
    if kind == Decision.RESCAN:
        return Ruling(step="rescan", label=label, source="human", route=None)
    return Ruling(step="record", label=label, source="human", route=Route.HUMAN.value)


def ruling_of(policy: RoutePolicy, state: Mapping[str, Any]) -> Ruling:
    """The ruling on the frame in flight. A checkpoint written before rulings were stored
    holds the decision in its record (route, or proposal awaiting a human) or, right after
    classification, nowhere yet: it is read from there, or made now."""
    if state.get("ruling"):
        return state["ruling"]
    current: DecisionRecord = state["current"]
    if current.route is not None:
        return Ruling(step="record", label=current.label, source="record",
                      route=current.route.value)
    if current.proposal is not None:
        return Ruling(step="approve", label=current.proposal.label,
                      source=current.proposal.source, route=None)
    return rule_classified(policy, current, state.get("budgets") or {},
                           state.get("used") or {}, state.get("ineffective") or ())


# --- the graph's routers: where the graph goes after a node, pure functions of the state
# (LangGraph conditional edges). Nodes write what happened (a planned position or the end of
# the plan, a frame or an abandoned position, a failure); after a decision the ruling above
# names the next step and the router follows it.

FINISH = "finish"


def _failed(state: Mapping[str, Any]) -> bool:
    return state.get("status", "running") == "failed"


def after_setup(target: str):
    """connect and check_instrument: on to `target`, or finish when the node failed."""
    def route(state: Mapping[str, Any]) -> str:
        return FINISH if _failed(state) else target
    route.__name__ = f"to_{target}"
    return route


def after_plan(state: Mapping[str, Any]) -> Literal["acquire", "finish"]:
    """A planned position is acquired; at the end of the plan the session finishes."""
    return "acquire" if state.get("progress") == "planned" else FINISH


def after_acquire(state: Mapping[str, Any]) -> Literal["assess_quality", "plan", "finish"]:
    """A frame is assessed; an abandoned position (refused, bad frames) goes back to plan."""
    if _failed(state):
        return FINISH
    return "assess_quality" if state.get("progress") == "acquired" else "plan"


def follow_ruling(state: Mapping[str, Any]) -> Step:
    """After classify, adjudicate and approve: the step the policy's ruling names."""
    return state["ruling"]["step"]


def after_look(state: Mapping[str, Any]) -> Step | Literal["finish"]:
    """After a relook or a zoom-out: the ruling's step, or finish when the instrument
    failed."""
    return FINISH if _failed(state) else state["ruling"]["step"]


def after_rescan(state: Mapping[str, Any]) -> Literal["acquire", "finish"]:
    return FINISH if _failed(state) else "acquire"
