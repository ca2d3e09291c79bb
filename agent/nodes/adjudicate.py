"""adjudicate: K demonstrations (similar or random), the adjudicator's answer, and the frame
re-classified with that answer as the LMM prediction embedding (not after an abstention).
What the answer makes of the frame is the policy's ruling (`agent.policy.rule_adjudicated`);
this node records the adjudication and the label the ruling gives."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.context import SessionContext
from agent.policy import rule_adjudicated
from agent.state import AgentState
from instruments.session_file.decision_record import (
    AdjudicationRecord,
    DecisionRecord,
    PredictionRecord,
)


def make(ctx: SessionContext):
    def adjudicate(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        frame = ctx.scratch.get(current.frame_id)
        embedding = np.asarray(state["embedding"], dtype=np.float32)
        demos = (ctx.bank.select(embedding, ctx.demo_k, ctx.demo_strategy, ctx.rng)
                 if ctx.bank is not None else [])
        verdict = ctx.adjudicator.adjudicate(frame.image, demos, ctx.class_names,
                                             embedding=embedding)
        record = AdjudicationRecord.model_validate(verdict.as_record())
        answer = verdict.answer.label if verdict.answer is not None else None
        again = None
        if answer is not None and not verdict.answer.abstained:
            again = ctx.classifier.classify([frame.image], lmm_labels=[answer])[0]
            record.reclassified = PredictionRecord.model_validate(again.as_record())
        ruling = rule_adjudicated(ctx.policy, current, answer,
                                  again.label if again is not None else None,
                                  verdict.adjudicator)
        return {"current": current.model_copy(update={"adjudication": record,
                                                      "label": ruling["label"]}),
                "ruling": ruling, "used": {"adjudications": 1, "tokens": verdict.tokens}}
    return adjudicate
