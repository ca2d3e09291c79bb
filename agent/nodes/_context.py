"""What the context steps (relook, zoom_out) share: the frame in flight with the new evidence in
its context, the context pooled again, and the policy's ruling on it."""

from __future__ import annotations

from typing import Any

from agent import context_evidence
from agent.context import SessionContext
from agent.policy import Ruling, rule_classified, rule_in_context
from agent.state import AgentState
from instruments.session_file.decision_record import ContextRecord, DecisionRecord


def ruled_with(ctx: SessionContext, state: AgentState, evidence: dict[str, Any]
               ) -> tuple[DecisionRecord, Ruling]:
    """The frame in flight with `evidence` (fields of its `ContextRecord`) added, pooled with
    what its context already held (its remembered neighbours among them), and the ruling."""
    current: DecisionRecord = state["current"]
    context = current.context or ContextRecord()
    near = {n.frame_id for n in context.neighbours}
    memory = [e for e in state.get("neighbourhood") or () if e["frame_id"] in near]
    record = current.model_copy(update={"context": context.model_copy(update=evidence)})
    pooled = context_evidence.fused(record, memory)
    record = record.model_copy(update={"context": record.context.model_copy(
        update={"fused": pooled})})
    ruling = rule_in_context(
        ctx.policy, record, rule_classified(ctx.policy, record, state["budgets"],
                                            state["used"], state.get("ineffective") or ()),
        state["budgets"], state["used"])
    return record, ruling
