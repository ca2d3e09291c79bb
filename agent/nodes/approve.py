"""approve: a human decides, through `interrupt`; the graph resumes with the decision
({"decision": approve|relabel|rescan|skip, "label", "operator", "note"}). The proposal is the
policy's ruling on the frame; what the decision makes of it is the policy's too
(`agent.policy.rule_human`)."""

from __future__ import annotations

import time
from typing import Any

from langgraph.types import interrupt

from agent.context import SessionContext
from agent.nodes._common import thumbnail
from agent.policy import UNKNOWN, rule_human, ruling_of
from agent.state import AgentState
from instruments.session_file.decision_record import (
    DECISIONS,
    DecisionRecord,
    HumanRecord,
    Proposal,
)


def human_labels(class_names: list[str]) -> list[str]:
    """The labels a human may give: the model's classes, or unknown (none of them)."""
    return [*class_names, UNKNOWN]


def decision_error(decision: Any, labels: list[str]) -> str:
    """Why a decision is unusable, or "" when it is fine."""
    if not isinstance(decision, dict) or decision.get("decision") not in DECISIONS:
        return f"decision must be a dict with 'decision' in {DECISIONS}"
    if decision["decision"] == "relabel" and decision.get("label") not in labels:
        return f"relabel needs a label from {labels}"
    return ""


def _reason(current: DecisionRecord, mode: str) -> str:
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


def payload(ctx: SessionContext, state: AgentState, current: DecisionRecord) -> dict[str, Any]:
    """What a human sees: the frame (thumbnail path), the typed record as JSON (`record`,
    which the web page reads) and the keys the terminal prompt shows."""
    frame = ctx.scratch.get(current.frame_id)
    adjudication = current.adjudication
    answer = adjudication.answer if adjudication else None
    return {"kind": "label", "session_id": state["session_id"], "frame_id": frame.frame_id,
            "sequence": current.sequence, "thumbnail": str(thumbnail(ctx, frame)),
            "previous_thumbnail": current.rescans[-1].thumbnail if current.rescans else None,
            "record": current.model_dump(mode="json"),
            "top_k": [list(pair) for pair in current.prediction.top_k],
            "adjudicator": answer.model_dump() if answer else None,
            "adjudicator_name": adjudication.adjudicator if adjudication else None,
            "proposal": current.proposal.label, "proposal_source": current.proposal.source,
            "reason": _reason(current, ctx.policy.approve),
            "on_approve": f"record this frame as {current.proposal.label}",
            "choices": list(DECISIONS), "labels": human_labels(ctx.class_names)}


def make(ctx: SessionContext):
    def approve(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        ruling = ruling_of(ctx.policy, state)
        current = current.model_copy(update={"proposal": Proposal(label=ruling["label"],
                                                                  source=ruling["source"])})
        request = payload(ctx, state, current)
        decision = interrupt(request)
        while (error := decision_error(decision, human_labels(ctx.class_names))):
            decision = interrupt({**request, "error": error})
        proposal = current.proposal.label
        ruling = rule_human(proposal, decision)
        human = HumanRecord(operator=decision.get("operator", "?"), time=time.time(),
                            proposal=proposal, decision=decision["decision"],
                            label=ruling["label"], note=decision.get("note", ""),
                            changed=ruling["label"] != proposal)
        return {"current": current.model_copy(update={"human": human}), "ruling": ruling}
    return approve
