"""The search map on the web page, read from the session's event stream: the overview a
targeting strategy stored (its `overview` event), the candidate score map over it, the frames in
the order they were recorded (`primary` events; after a resume, those recorded before come in
the overview event's `visited` list) and the hits among them (frames whose recorded label is a
hunted class, as the report rings them: workflows/report/overview_map.py).

The map joins the page's progress (`broker.update_progress(search_map=...)`), which the page
already polls; the overview itself is served as PNG, drawn from the stored array. A session
without an overview (a survey) never adds the map, so the page shows none."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import numpy as np
from PIL import Image

from agent.approval_broker import ApprovalBroker
from agent.event_stream import StreamReader
from agent.objectives import ObjectiveError, parse_objective
from instruments.utils.image8 import to_uint8


def overview_png(image: np.ndarray) -> bytes:
    """The overview as 8-bit PNG, its first row at the top of the stage's y range (rows of
    the stored array run along increasing y; the page draws y upwards, as the report)."""
    buf = io.BytesIO()
    Image.fromarray(np.flipud(to_uint8(image))).save(buf, format="PNG")
    return buf.getvalue()


def _cells(scores: np.ndarray) -> list[list[float | None]]:
    """The score map as rows of numbers, None where a cell held no candidate."""
    return [[float(v) if np.isfinite(v) else None for v in row] for row in scores]


class SearchMapView(StreamReader):
    """Follows one session's stream for the page: the map as JSON in the broker's progress
    and the overview's PNG for the image route (thread-safe: the stream calls from the
    session's threads, the page's requests come on the server's)."""

    def __init__(self, broker: ApprovalBroker) -> None:
        super().__init__()
        self.broker = broker
        self._lock = threading.Lock()
        self._png: bytes | None = None
        self._targets: list[str] = []
        self._map: dict[str, Any] | None = None
        self._visits: dict[str, dict[str, Any]] = {}      # by frame id: a rerun sends it again

    def png(self) -> bytes | None:
        """The overview as PNG; None before an overview has arrived."""
        with self._lock:
            return self._png

    def start(self, doc: dict[str, Any]) -> None:
        try:
            self._targets = parse_objective(str(doc.get("objective") or "survey"))["classes"]
        except ObjectiveError:
            self._targets = []

    def overview(self, data: dict[str, Any]) -> None:
        image = np.asarray(data["image"])
        rows, cols = image.shape
        meta = json.loads(data["metadata"])
        png = overview_png(image)
        with self._lock:
            for visit in json.loads(data.get("visited") or "[]"):
                self._visit(visit)
            self._png = png
            self._map = {
                "version": (self._map or {}).get("version", 0) + 1,
                "strategy": meta.get("strategy"), "targets": list(self._targets),
                "image": {"x": data["origin_x"], "y": data["origin_y"],
                          "width": cols * data["pixel"], "height": rows * data["pixel"]},
                "scores": {"x": data["area_x"], "y": data["area_y"], "tile": data["tile"],
                           "cells": _cells(np.asarray(data["scores"]))}}
        self._publish()

    def frame(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._visit(data)
        self._publish()

    def _visit(self, data: dict[str, Any]) -> None:
        """Mark a recorded frame (a frame event, or one the overview event lists as recorded
        before a resume) at its stage position; the lock is held."""
        if data.get("x") is None or data.get("y") is None:
            return
        self._visits[data["frame_id"]] = {
            "order": data["recorded"], "x": data["x"], "y": data["y"],
            "label": data["label"], "hit": data["label"] in self._targets}

    def _publish(self) -> None:
        """The map with its visits in recorded order, into the page's progress."""
        with self._lock:
            if self._map is None:
                return
            visits = sorted(self._visits.values(), key=lambda v: v["order"])
            shown = {**self._map, "visits": visits,
                     "hits": sum(v["hit"] for v in visits)}
        self.broker.update_progress(search_map=shown)
