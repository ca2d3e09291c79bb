"""classify: calibrated probabilities, conformal set and embedding of the frame."""

from __future__ import annotations

import time
from typing import Any

from agent.runtime import Runtime
from agent.state import AgentState


def prediction_for(rt: Runtime, frame_id: str, image) -> Any:
    """The classifier's Prediction of a frame, cached by frame id."""
    if frame_id not in rt.predictions:
        rt.predictions[frame_id] = rt.classifier.classify([image])[0]
    return rt.predictions[frame_id]


def make(rt: Runtime):
    def classify(state: AgentState) -> dict[str, Any]:
        current = dict(state["current"])
        frame = rt.scratch.get(current["frame_id"])
        t0 = time.perf_counter()
        prediction = prediction_for(rt, frame.frame_id, frame.image)
        timings = dict(current["timings"])
        timings["classify_s"] = timings.get("classify_s", 0.0) + time.perf_counter() - t0
        current.update(prediction=prediction.as_record(), timings=timings)
        return {"current": current, "next": "route"}
    return classify
