"""classify: calibrated probabilities, conformal set and embedding of the frame, and the
policy's ruling on it (`agent.policy.rule_classified`): where it goes next, under which label
and route."""

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
        t0 = time.perf_counter()
        taken = ({"fov": frame.settings.fov, "detector": frame.settings.detector}
                 if frame.settings is not None else None)
        prediction = ctx.classifier.classify([frame.image], imaging=[taken])[0]
        timings = current.timings.model_copy(update={
            "classify_s": (current.timings.classify_s or 0.0) + time.perf_counter() - t0})
        record = current.model_copy(update={
            "prediction": PredictionRecord.model_validate(prediction.as_record()),
            "timings": timings})
        ruling = rule_classified(ctx.policy, record, state["budgets"], state["used"],
                                 state.get("ineffective") or ())
        return {"current": record, "ruling": ruling,
                "embedding": [float(v) for v in prediction.embedding.ravel()]}
    return classify
