"""adjudicate: K demonstrations (similar or random), the adjudicator's answer, and the frame
re-classified with that answer as the LMM prediction embedding.

The answer stands (route adjudicated) when the re-classification agrees with it, or when the
classifier had already said the same before it saw the answer: two independent sources that
agree are not overturned by the fused re-classification (on the twin, the LMM embedding, trained
on few and noisy answers, sometimes flipped an agreed label). Otherwise the re-classification
and the answer disagree: a human decides, or the frame is recorded as contested.
"""

from __future__ import annotations

from typing import Any

from agent.nodes.classify import prediction_for
from agent.runtime import Runtime
from agent.state import AgentState


def make(rt: Runtime):
    def adjudicate(state: AgentState) -> dict[str, Any]:
        current = dict(state["current"])
        frame = rt.scratch.get(current["frame_id"])
        prediction = prediction_for(rt, frame.frame_id, frame.image)
        demos = (rt.bank.select(prediction.embedding, rt.demo_k, rt.demo_strategy, rt.rng)
                 if rt.bank is not None else [])
        verdict = rt.adjudicator.adjudicate(frame.image, demos, rt.class_names,
                                            embedding=prediction.embedding)
        used = dict(state["used"])
        used["adjudications"] = used.get("adjudications", 0) + 1
        used["tokens"] = used.get("tokens", 0) + verdict.tokens
        record = verdict.as_record()
        record["reclassified"] = None
        attended = rt.policy.approve != "none"
        if verdict.answer is None:
            current.update(adjudication=record, label=prediction.label, route="unresolved")
            if attended:
                current["proposal"] = {"label": prediction.label, "source": "classifier"}
                return {"current": current, "used": used, "next": "approve"}
            return {"current": current, "used": used, "next": "record"}
        again = rt.classifier.classify([frame.image], lmm_labels=[verdict.answer.label])[0]
        record["reclassified"] = again.as_record()
        answer = verdict.answer.label
        agree = answer in (again.label, prediction.label)
        label = answer if agree else again.label
        current["adjudication"] = record
        if agree and rt.policy.approve != "uncertain":
            current.update(label=label, route="adjudicated")
            return {"current": current, "used": used, "next": "record"}
        if attended:
            current["proposal"] = {"label": label, "source": "adjudicated" if agree
                                   else "contested"}
            return {"current": current, "used": used, "next": "approve"}
        current.update(label=label, route="contested")
        return {"current": current, "used": used, "next": "record"}
    return adjudicate
