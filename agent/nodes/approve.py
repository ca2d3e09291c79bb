"""approve: a human decides, through `interrupt` with a LabelRequest; the graph resumes with
a HumanDecision (agent/approval_request.py), and one that does not fit is asked again. The
proposal is the policy's ruling on the frame; what the decision makes of it is the policy's
too (`agent.policy.rule_human`). In a learning session the request accepts a new class name,
and an answer that gives the frame a class (approved or relabelled) teaches the learner
(agent/learning.py): the new support set and head go into the state."""

from __future__ import annotations

import time
from typing import Any

from langgraph.types import interrupt

from agent.approval_request import DecisionRefused, HumanDecision, LabelRequest
from agent.context import SessionContext
from agent.learning import stage_block
from agent.nodes._common import thumbnail
from agent.policy import UNKNOWN, rule_human, ruling_of
from agent.state import AgentState
from instruments.session_file.decision_record import (
    Decision,
    DecisionRecord,
    HumanRecord,
    Proposal,
    RescanChange,
)


def human_labels(class_names: list[str]) -> list[str]:
    """The labels a human may give: the model's classes, or unknown (none of them)."""
    return [*class_names, UNKNOWN]


def _reason(current: DecisionRecord, mode: str, taught: dict[str, int] | None) -> str:
    if current.proposal.source == "learning":
        return (f"the session is learning: it decides alone the frames it reads as a class "
                f"with enough examples, once two classes have them (so far {taught or 'none'}); "
                f"name the class, a new one if need be")
    if current.proposal.source == "neighbours":
        named = sorted({n.label for n in current.context.neighbours})
        return (f"the frames of its region named before disagree ({', '.join(named)}); "
                f"name its class")
    if current.proposal.source == "ood":
        ood = current.prediction.ood
        return (f"the frame is unlike every class the classifier knows (out-of-distribution "
                f"score {ood.score:.3g} > threshold {ood.threshold:.3g})")
    if mode == "all":
        return "every frame is reviewed in this session (--approve all)"
    if current.proposal.source == "contested":
        return "the classifier and the adjudicator disagree"
    if current.adjudication:
        return "the classifier was unsure; the adjudicator answered"
    return "the classifier was unsure and no adjudication was possible"


def request_for(ctx: SessionContext, state: AgentState,
                current: DecisionRecord) -> LabelRequest:
    """What a human sees: the frame (thumbnail path), the record (the evidence), the
    proposal and why a human is asked."""
    frame = ctx.scratch.get(current.frame_id)
    return LabelRequest(
        session_id=state["session_id"], record=current, thumbnail=str(thumbnail(ctx, frame)),
        previous_thumbnail=current.rescans[-1].thumbnail if current.rescans else None,
        proposal=current.proposal.label, proposal_source=current.proposal.source,
        reason=_reason(current, ctx.policy.approve,
                       ctx.learner.counts() if ctx.learner is not None else None),
        on_approve=f"record this frame as {current.proposal.label}",
        labels=tuple(human_labels(ctx.class_names)), new_labels=ctx.learner is not None)


def _effect(proposal: str | None, label: str | None, decision: HumanDecision) -> str:
    """What the act changes, in words (a rescan's actual change is written when it is made,
    by the rescan node)."""
    if decision.decision == Decision.RESCAN:
        return f"rescan asked ({decision.rescan_change or RescanChange.AUTO})"
    if decision.decision == Decision.SKIP:
        return "frame left without a label"
    if label != proposal:
        return f"label {proposal} -> {label}"
    return f"recorded as proposed ({proposal})"


def human_record(proposal: str | None, label: str | None,
                 decision: HumanDecision) -> HumanRecord:
    """The stored act: who, when, what was proposed, the answer and what it changed."""
    rescan = decision.decision == Decision.RESCAN
    return HumanRecord(operator=decision.operator, time=time.time(), proposal=proposal,
                       decision=decision.decision, label=label, note=decision.note,
                       changed=label != proposal,
                       rescan_change=(decision.rescan_change or RescanChange.AUTO)
                       if rescan else None,
                       effect=_effect(proposal, label, decision))


def _block(record: DecisionRecord, survey_fov: float) -> str:
    """The stage block of a frame a human named, in fields of the session's survey (a rescan
    may have changed the frame's own): its calibration group in the support set."""
    where = record.position
    return stage_block(where.x if where else None, where.y if where else None, survey_fov)


def make(ctx: SessionContext):
    def approve(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        if ctx.learner is not None:
            ctx.learner.sync(state.get("learning"))
        ruling = ruling_of(ctx.policy, state)
        current = current.model_copy(update={"proposal": Proposal(label=ruling["label"],
                                                                  source=ruling["source"])})
        request = request_for(ctx, state, current)
        answer = interrupt(request)
        while True:
            try:
                decision = request.accept(answer)
                break
            except DecisionRefused as exc:
                answer = interrupt(request.model_copy(update={"error": str(exc)}))
        proposal = current.proposal.label
        ruling = rule_human(proposal, decision)
        human = human_record(proposal, ruling["label"], decision)
        update = {"current": current.model_copy(update={"human": human}), "ruling": ruling}
        if ctx.learner is not None and ruling["step"] == "record" \
                and ruling["label"] not in (None, UNKNOWN):
            update["learning"] = ctx.learner.teach(state["embedding"], ruling["label"],
                                                   _block(current, ctx.imaging.fov))
        return update
    return approve
