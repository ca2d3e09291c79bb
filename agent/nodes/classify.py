"""classify: calibrated probabilities, conformal set and embedding of the frame, and the
policy's ruling on it (`agent.policy.rule_classified`): where it goes next, under which label
and route. In a learning session the learner first takes up the checkpointed state (what was
learned so far), and the record keeps the head version that classified the frame."""

from __future__ import annotations

import time
from typing import Any

from agent.context import SessionContext
from agent.policy import rule_classified
from agent.state import AgentState
from instruments.session_file.decision_record import DecisionRecord, PredictionRecord


def make(ctx: SessionContext):
    def classify(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        frame = ctx.scratch.get(current.frame_id)
        taught, version = None, None
        if ctx.learner is not None:
            ctx.learner.sync(state.get("learning"))
            taught, version = ctx.learner.counts(), ctx.learner.version
        t0 = time.perf_counter()
        prediction = ctx.classifier.classify([frame.image])[0]
        timings = current.timings.model_copy(update={
            "classify_s": (current.timings.classify_s or 0.0) + time.perf_counter() - t0})
        record = current.model_copy(update={
            "prediction": PredictionRecord.model_validate(prediction.as_record()),
            "timings": timings, "head_version": version})
        ruling = rule_classified(ctx.policy, record, state["budgets"], state["used"],
                                 state.get("ineffective") or (), taught)
        return {"current": record, "ruling": ruling,
                "embedding": [float(v) for v in prediction.embedding.ravel()]}
    return classify
