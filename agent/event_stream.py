"""Everything that happens in a session, as one typed document stream in Bluesky's event model
(`event_model.compose_run`): a start document, one descriptor per stream, events, a stop.

Streams: `primary` holds one event per recorded frame (its decision in brief), `incidents` one
per fault or notable happening (instrument faults, bad frames, refusals, a resume), `decisions`
one per human answer to an approval request, `overview` the overview and candidate score map a
targeting strategy stored (as arrays in the event, with their calibration), once per run.
Consumers subscribe a callback `(name, doc)`, as to Bluesky's RunEngine; `StreamReader` turns
the documents back into the four kinds.

Each `Session.run` is one run: a resumed session emits a new start (`resumed: true`, the counts
it resumes from), then only what happens from there, and its own stop. A frame whose record step
runs again after a kill is emitted again with the same `frame_id` and `recorded` number.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import event_model
import numpy as np

from agent.approval_request import ApprovalRequest, HumanDecision, LabelRequest
from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.overview import StoredOverview

Subscriber = Callable[[str, dict[str, Any]], Any]

FRAMES, INCIDENTS, DECISIONS, OVERVIEW = "primary", "incidents", "decisions", "overview"
DATA_KEYS: dict[str, dict[str, str]] = {
    FRAMES: {"frame_id": "string", "sequence": "integer", "label": "string",
             "route": "string", "confidence": "number", "quality_ok": "boolean",
             "x": "number", "y": "number", "recorded": "integer"},
    INCIDENTS: {"kind": "string", "message": "string", "source": "string",
                "details": "string"},
    DECISIONS: {"kind": "string", "decision": "string", "operator": "string",
                "label": "string", "frame_id": "string", "rescan_change": "string",
                "note": "string"},
    OVERVIEW: {"image": "array", "scores": "array", "metadata": "string", "visited": "string"},
}
LEFT = "left_"                      # frame data key prefix of a budget's remainder
EXIT_STATUS = {"completed": "success", "interrupted": "abort", "failed": "fail"}


class EventStream:
    """Composes the documents of one run at a time and hands each to every subscriber, in
    order (thread-safe: instrument faults arrive from the prefetch thread too). Incidents
    reported before `start` are held and emitted right after it."""

    def __init__(self) -> None:
        self._subscribers: dict[int, Subscriber] = {}
        self._tokens = itertools.count()
        self._lock = threading.RLock()
        self._run: event_model.ComposeRunBundle | None = None
        self._streams: dict[str, Any] = {}
        self._held: list[dict[str, Any]] = []

    def subscribe(self, callback: Subscriber) -> int:
        """Call `callback(name, doc)` for every document from now on; a token to unsubscribe."""
        with self._lock:
            token = next(self._tokens)
            self._subscribers[token] = callback
            return token

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._subscribers.pop(token, None)

    def _emit(self, name: str, doc: dict[str, Any]) -> None:
        for callback in list(self._subscribers.values()):
            callback(name, doc)

    def start(self, metadata: dict[str, Any]) -> str:
        """Open a run (the start document holds `metadata`); its uid."""
        with self._lock:
            if self._run is not None:
                raise RuntimeError("a run is already open on this stream")
            self._run, self._streams = event_model.compose_run(metadata=metadata), {}
            self._emit("start", self._run.start_doc)
            held, self._held = self._held, []
            for data in held:
                self._event(INCIDENTS, data)
            return self._run.start_doc["uid"]

    def _event(self, stream: str, data: dict[str, Any]) -> None:
        if stream not in self._streams:
            keys = {key: {"dtype": DATA_KEYS[stream].get(key, "number"),
                          "shape": list(np.shape(value)) if isinstance(value, np.ndarray)
                          else [], "source": f"micagent:{stream}"}
                    for key, value in data.items()}
            bundle = self._run.compose_descriptor(name=stream, data_keys=keys)
            self._streams[stream] = bundle.compose_event
            self._emit("descriptor", bundle.descriptor_doc)
        now = time.time()
        self._emit("event", self._streams[stream](data=data,
                                                  timestamps=dict.fromkeys(data, now)))

    def frame(self, record: DecisionRecord, recorded: int,
              budgets_left: dict[str, float]) -> None:
        """The event of one recorded frame (`recorded`: frames in the session with it;
        `budgets_left` become numbers `left_<budget>`)."""
        prediction, position = record.prediction, record.position
        with self._lock:
            self._event(FRAMES, {
                "frame_id": record.frame_id, "sequence": record.sequence,
                "label": record.label, "route": record.route.value if record.route else None,
                "confidence": prediction.confidence if prediction else None,
                "quality_ok": record.quality.ok if record.quality else None,
                "x": position.x if position else None, "y": position.y if position else None,
                "recorded": recorded,
                **{f"{LEFT}{key}": value for key, value in budgets_left.items()}})

    def incident(self, kind: str, message: str, source: str = "instrument",
                 **details: Any) -> None:
        """One fault or happening; `details` are JSON values (a position, the call...)."""
        data = {"kind": kind, "message": message, "source": source,
                "details": json.dumps(details, default=str, sort_keys=True)}
        with self._lock:
            if self._run is None:
                self._held.append(data)
            else:
                self._event(INCIDENTS, data)

    def state_events(self, items: list[dict[str, Any]] | None) -> None:
        """The entries a node added to the state's `events`, as incidents from the agent."""
        for item in items or []:
            details = {k: v for k, v in item.items() if k not in ("kind", "message", "time")}
            self.incident(str(item.get("kind")), str(item.get("message", "")), "agent",
                          **details)

    def decision(self, request: ApprovalRequest, answer: HumanDecision) -> None:
        """A human's answer to an approval request."""
        record = request.record if isinstance(request, LabelRequest) else None
        with self._lock:
            self._event(DECISIONS, {"kind": request.kind, "decision": answer.decision.value,
                                    "operator": answer.operator, "label": answer.label,
                                    "frame_id": record.frame_id if record else None,
                                    "rescan_change": answer.rescan_change.value
                                    if answer.rescan_change else "", "note": answer.note})

    def overview(self, stored: StoredOverview, visited: Sequence[DecisionRecord] = ()) -> None:
        """The stored overview (stage calibration in m: `origin_*` is pixel (0, 0)'s corner,
        `area_*` the score map's corner, `tile` its cell side) and the strategy's metadata;
        `visited`: the frames recorded before it was sent (a resumed run's earlier ones), as a
        JSON list of {frame_id, recorded, x, y, label}."""
        earlier = [{"frame_id": record.frame_id, "recorded": n, "label": record.label,
                    "x": record.position.x if record.position else None,
                    "y": record.position.y if record.position else None}
                   for n, record in enumerate(visited, 1)]
        with self._lock:
            self._event(OVERVIEW, {
                "image": stored.image, "scores": stored.scores,
                "origin_x": stored.origin[0], "origin_y": stored.origin[1],
                "pixel": stored.pixel, "area_x": stored.area_origin[0],
                "area_y": stored.area_origin[1], "tile": stored.tile,
                "metadata": json.dumps(stored.metadata, default=str, sort_keys=True),
                "visited": json.dumps(earlier)})

    def stop(self, status: str, reason: str = "") -> None:
        """Close the run: `status` completed / interrupted / failed (success / abort / fail)."""
        with self._lock:
            if self._run is None:
                return
            doc = self._run.compose_stop(exit_status=EXIT_STATUS.get(status, "fail"),
                                         reason=reason)
            self._run = None
            self._emit("stop", doc)


class StreamReader(event_model.DocumentRouter):
    """A subscriber that sees events by stream: override `frame`, `incident`, `decision`,
    `overview` (each gets the event's `data`), and `start` / `stop` as in event_model."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: dict[str, str] = {}        # descriptor uid -> stream name

    def descriptor(self, doc: dict[str, Any]) -> None:
        self.streams[doc["uid"]] = doc["name"]

    def event(self, doc: dict[str, Any]) -> None:
        handler = {FRAMES: self.frame, INCIDENTS: self.incident,
                   DECISIONS: self.decision, OVERVIEW: self.overview}.get(
            self.streams.get(doc["descriptor"], ""))
        if handler is not None:
            handler(doc["data"])

    def frame(self, data: dict[str, Any]) -> None:
        """One recorded frame."""

    def incident(self, data: dict[str, Any]) -> None:
        """One incident (`details` is a JSON object as text)."""

    def decision(self, data: dict[str, Any]) -> None:
        """One human decision."""

    def overview(self, data: dict[str, Any]) -> None:
        """The stored overview (`image` and `scores` arrays, `metadata` a JSON object as
        text)."""
