"""classify: calibrated probabilities, conformal set and embedding of the frame, its context
(the neighbourhood, and relooks or a zoom-out already taken: agent/context_evidence.py), and the
policy's ruling on it (`agent.policy.rule_classified`, then `rule_in_context`): where it goes
next, under which label and route. A frame the policy is unsure of is first classified again on
dihedral views of itself (`RoutePolicy.unsure_views`); a rescanned frame's reading is pooled
with its earlier attempts' (`pooled_with_earlier`). In a learning session the learner first
takes up the checkpointed state (what was learned so far), and the record keeps the head version
that classified the frame."""

from __future__ import annotations

import time
from typing import Any

from agent import context_evidence
from agent.context import SessionContext
from agent.policy import rule_classified, rule_in_context
from agent.state import AgentState
from instruments.session_file.decision_record import (
    ContextRecord,
    DecisionRecord,
    PredictionRecord,
)


def with_context(ctx: SessionContext, state: AgentState, record: DecisionRecord,
                 embedding: list[float]) -> DecisionRecord:
    """The record with its context: the neighbours (with the policy's `neighbourhood`), the
    relooks and zoom-out already taken (a frame rescanned after them keeps them) and their
    pooled prediction; unchanged when there is no context. In a learning session the neighbours are
    the frames the human taught, compared in the learned head's space (none before there is a
    head), and nothing is pooled: the policy rules on their labels."""
    learning = ctx.learner is not None
    space = ctx.learner.space if learning else None
    recall = ctx.policy.neighbourhood and (space is not None or not learning)
    near = (context_evidence.neighbours(
        state.get("neighbourhood") or (), record, embedding,
        context_evidence.TAUGHT_FRAMES if learning else context_evidence.SURE_FRAMES, space)
        if recall else [])
    zoom = record.context.zoom_out if record.context else None
    looks = record.context.looks if record.context else []
    if not near and zoom is None and not looks:
        return record.model_copy(update={"context": None})
    context = ContextRecord(looks=looks, zoom_out=zoom, neighbours=[kept for _, kept in near])
    record = record.model_copy(update={"context": context})
    if learning:
        return record
    pooled = context_evidence.fused(record, [entry for entry, _ in near])
    return record.model_copy(update={"context": context.model_copy(update={"fused": pooled})})


def unsure(ctx: SessionContext, prediction: Any) -> bool:
    """True when the policy would call this prediction neither confident nor unknown."""
    record = PredictionRecord.model_validate(prediction.as_record())
    return not (ctx.policy.is_confident(record) or ctx.policy.is_unknown(record))


def pooled_with_earlier(ctx: SessionContext, current: DecisionRecord, prediction: Any) -> Any:
    """A rescanned frame's prediction pooled with the reading of the attempts before it
    (`Classifier.pooled`): the last escalation's recorded prediction already averages its own
    attempts. Focus-search frames are not escalations and are not pooled; nor are the frames of
    a learning session, whose head changes between attempts."""
    earlier = current.escalations[-1].prediction if current.escalations else None
    if (earlier is None or ctx.learner is not None
            or list(earlier.probabilities) != list(prediction.class_names)):
        return prediction
    return ctx.classifier.pooled(prediction, list(earlier.probabilities.values()),
                                 earlier.frames)


def make(ctx: SessionContext):
    def classify(state: AgentState) -> dict[str, Any]:
        current: DecisionRecord = state["current"]
        frame = ctx.scratch.get(current.frame_id)
        taught, version = None, None
        if ctx.learner is not None:
            ctx.learner.sync(state.get("learning"))
            taught, version = ctx.learner.counts(), ctx.learner.version
        t0 = time.perf_counter()
        taken = ({"fov": frame.settings.fov, "detector": frame.settings.detector}
                 if frame.settings is not None else None)
        prediction = ctx.classifier.classify([frame.image], imaging=[taken])[0]
        if ctx.policy.unsure_views > 1 and unsure(ctx, prediction):
            prediction = ctx.classifier.classify([frame.image], imaging=[taken],
                                                 views=ctx.policy.unsure_views)[0]
        prediction = pooled_with_earlier(ctx, current, prediction)
        timings = current.timings.model_copy(update={
            "classify_s": (current.timings.classify_s or 0.0) + time.perf_counter() - t0})
        embedding = [float(v) for v in prediction.embedding.ravel()]
        record = with_context(ctx, state, current.model_copy(update={
            "prediction": PredictionRecord.model_validate(prediction.as_record()),
            "timings": timings, "head_version": version}), embedding)
        ruling = rule_classified(ctx.policy, record, state["budgets"], state["used"],
                                 state.get("ineffective") or (), taught)
        ruling = rule_in_context(ctx.policy, record, ruling, state["budgets"], state["used"])
        return {"current": record, "ruling": ruling, "embedding": embedding}
    return classify
