"""approve: a human decides, through `interrupt`; the graph resumes with the decision
({"decision": approve|relabel|rescan|skip, "label", "operator", "note"})."""

from __future__ import annotations

import time
from typing import Any

from langgraph.types import interrupt

from agent.nodes._common import thumbnail
from agent.policy import UNKNOWN
from agent.runtime import Runtime
from agent.state import AgentState
from instruments.decision_record import DECISIONS


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


def _reason(current: dict[str, Any], mode: str) -> str:
    if current["proposal"].get("source") == "ood":
        ood = current["prediction"]["ood"]
        return (f"the frame is unlike every class the classifier knows (out-of-distribution "
                f"score {ood['score']:.3g} > threshold {ood['threshold']:.3g})")
    if mode == "all":
        return "every frame is reviewed in this session (--approve all)"
    adjudication = current.get("adjudication") or {}
    if current["proposal"].get("source") == "contested":
        return "the classifier and the adjudicator disagree"
    if adjudication:
        return "the classifier was unsure; the adjudicator answered"
    return "the classifier was unsure and no adjudication was possible"


def payload(rt: Runtime, state: AgentState, current: dict[str, Any]) -> dict[str, Any]:
    """What a human sees: the frame (thumbnail path), the evidence and the proposal. Keys are
    those the terminal prompt and the web page (workflows/web_approval.py) read."""
    frame = rt.scratch.get(current["frame_id"])
    thumb = thumbnail(rt, frame)
    previous = current["rescans"][-1].get("thumbnail") if current["rescans"] else None
    adjudication = current.get("adjudication") or {}
    proposal = current["proposal"]
    return {"kind": "label", "session_id": state["session_id"], "frame_id": frame.frame_id,
            "sequence": current["sequence"], "thumbnail": str(thumb),
            "previous_thumbnail": previous,
            "position": current["position"], "prediction": current["prediction"],
            "top_k": current["prediction"]["top_k"],
            "conformal_set": current["prediction"]["conformal_set"],
            "quality": current["quality"], "rescans": current["rescans"],
            "adjudication": adjudication or None, "adjudicator": adjudication.get("answer"),
            "adjudicator_name": adjudication.get("adjudicator"),
            "proposal": proposal["label"], "proposal_source": proposal.get("source"),
            "reason": _reason(current, rt.policy.approve),
            "on_approve": f"record this frame as {proposal['label']}",
            "choices": list(DECISIONS), "labels": human_labels(rt.class_names)}


def make(rt: Runtime):
    def approve(state: AgentState) -> dict[str, Any]:
        current = dict(state["current"])
        request = payload(rt, state, current)
        decision = interrupt(request)
        while (error := decision_error(decision, human_labels(rt.class_names))):
            decision = interrupt({**request, "error": error})
        proposal = current["proposal"]["label"]
        label = decision["label"] if decision["decision"] == "relabel" else proposal
        if decision["decision"] == "skip":
            label = None
        current["human"] = {"operator": decision.get("operator", "?"), "time": time.time(),
                            "proposal": proposal, "decision": decision["decision"],
                            "label": label, "note": decision.get("note", ""),
                            "changed": label != proposal}
        if decision["decision"] == "rescan":
            return {"current": current, "next": "rescan"}
        current.update(label=label, route="human")
        return {"current": current, "next": "record"}
    return approve
