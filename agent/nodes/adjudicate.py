"""adjudicate: K demonstrations (similar or random), the adjudicator's answer, and the frame
re-classified with that answer as the LMM prediction embedding.

The answer stands (route adjudicated) when the re-classification agrees with it, or when the
classifier had already said the same before it saw the answer: two independent sources that
agree are not overturned by the fused re-classification (on the twin, the LMM embedding, trained
on few and noisy answers, sometimes flipped an agreed label). Otherwise the re-classification
and the answer disagree: a human decides, or the frame is recorded as contested.

A frame that goes on to a human leaves with a proposal and no route; the router sends it on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.runtime import Runtime
from agent.state import AgentState
from instruments.session_file.decision_record import (
    AdjudicationRecord,
    DecisionRecord,
    PredictionRecord,
    Proposal,
    Route,
)


def make(rt: Runtime):
    def adjudicate(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        frame = rt.scratch.get(current.frame_id)
        embedding = np.asarray(state["embedding"], dtype=np.float32)
        demos = (rt.bank.select(embedding, rt.demo_k, rt.demo_strategy, rt.rng)
                 if rt.bank is not None else [])
        verdict = rt.adjudicator.adjudicate(frame.image, demos, rt.class_names,
                                            embedding=embedding)
        used = {"adjudications": 1, "tokens": verdict.tokens}
        record = AdjudicationRecord.model_validate(verdict.as_record())
        attended = rt.policy.approve != "none"
        first = current.prediction.label
        if verdict.answer is None:
            update = {"adjudication": record, "label": first}
            if attended:
                update["proposal"] = Proposal(label=first, source="classifier")
            else:
                update["route"] = Route.UNRESOLVED
            return {"current": current.model_copy(update=update), "used": used}
        again = rt.classifier.classify([frame.image], lmm_labels=[verdict.answer.label])[0]
        record.reclassified = PredictionRecord.model_validate(again.as_record())
        answer = verdict.answer.label
        agree = answer in (again.label, first)
        label = answer if agree else again.label
        update = {"adjudication": record, "label": label}
        if agree and rt.policy.approve != "uncertain":
            update["route"] = Route.ADJUDICATED
        elif attended:
            update["proposal"] = Proposal(label=label,
                                          source="adjudicated" if agree else "contested")
        else:
            update["route"] = Route.CONTESTED
        return {"current": current.model_copy(update=update), "used": used}
    return adjudicate
