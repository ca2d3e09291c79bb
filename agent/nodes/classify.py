"""classify: calibrated probabilities, conformal set and embedding of the frame."""

from __future__ import annotations

import time
from typing import Any

from agent.runtime import Runtime
from agent.state import AgentState
from instruments.session_file.decision_record import DecisionRecord, PredictionRecord


def make(rt: Runtime):
    def classify(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        frame = rt.scratch.get(current.frame_id)
        t0 = time.perf_counter()
        prediction = rt.classifier.classify([frame.image])[0]
        timings = current.timings.model_copy(update={
            "classify_s": (current.timings.classify_s or 0.0) + time.perf_counter() - t0})
        record = current.model_copy(update={
            "prediction": PredictionRecord.model_validate(prediction.as_record()),
            "timings": timings})
        return {"current": record,
                "embedding": [float(v) for v in prediction.embedding.ravel()]}
    return classify
