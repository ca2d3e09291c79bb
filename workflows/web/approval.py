"""The web approval page: a token-protected FastAPI app over an `ApprovalBroker` (its guard,
Host allow-list, token and body cap, is `workflows/web/guard.py`).

A running session submits each `interrupt` payload to the broker; this app lists the pending
ones, serves their frame images, and turns a click into `broker.decide(...)`, which the
session resumes with through `Command(resume=decision)`. `start_web_ui` runs it with uvicorn
in a background thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from agent.approval_broker import ApprovalBroker
from instruments.session_file.decision_record import (
    DECISIONS,
    DecisionRecord,
    PredictionRecord,
    RecordFormatError,
    RescanRecord,
)
from instruments.utils.image8 import to_uint8
from workflows.web.guard import TOKEN_HEADER, GuardedApp

__all__ = ["TOKEN_HEADER", "WebUIHandle", "create_app", "start_web_ui"]

IMAGE_KINDS = ("frame", "previous")
# Payload keys that may carry each image, in order of preference: a PNG/TIFF path, base64
# PNG text (optionally a data: URL), raw PNG bytes, or a 2-D array.
_IMAGE_KEYS = {
    "frame": ("thumbnail", "thumbnail_path", "thumbnail_png", "thumbnail_b64", "image_png",
              "image_path", "image"),
    "previous": ("previous_thumbnail", "previous_thumbnail_path", "previous_thumbnail_png",
                 "previous_thumbnail_b64", "previous_image_png", "previous_image"),
}


class DecisionIn(BaseModel):
    """What the page posts: the decision dict the graph resumes with."""

    decision: str
    label: str | None = None
    operator: str = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=2000)


def _json_safe(value: Any) -> Any:
    """Payload values as JSON: arrays become lists, bytes and non-finite floats are dropped."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape}>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _png_from_array(array: np.ndarray) -> bytes:
    a = np.asarray(array, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a 2-D image, got shape {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(to_uint8(a)).save(buf, format="PNG")
    return buf.getvalue()


def _png_from_value(value: Any) -> bytes | None:
    """PNG bytes from whatever form the payload uses; None if the value holds no image."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return _png_from_array(value)
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        if value.startswith("data:"):
            value = value.split(",", 1)[-1]
        path = Path(value) if len(value) < 4096 else None
        if path is not None and path.is_file():
            raw = path.read_bytes()
        else:
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return None
    else:
        return None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.format == "PNG":
                return raw
            buf = io.BytesIO()
            img.convert("L" if img.mode not in ("RGB", "RGBA") else img.mode).save(buf, "PNG")
            return buf.getvalue()
    except OSError:
        try:
            return _png_from_array(np.array(Image.open(io.BytesIO(raw))))
        except OSError:
            return None


def payload_image(payload: dict[str, Any], kind: str) -> bytes | None:
    """The `kind` ("frame" or "previous") image of a payload as PNG bytes, if it has one."""
    for key in _IMAGE_KEYS[kind]:
        png = _png_from_value(payload.get(key))
        if png is not None:
            return png
    record = record_of(payload) if kind == "previous" else None
    for attempt in reversed(record.rescans if record else []):
        png = _png_from_value(attempt.thumbnail)
        if png is not None:
            return png
    return None


def _class_names(payload: dict[str, Any], known: list[str],
                 prediction: PredictionRecord | None = None) -> list[str]:
    for key in ("class_names", "labels", "allowed_labels"):
        names = payload.get(key)
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return list(names)
    if prediction is not None and prediction.probabilities:
        return list(prediction.probabilities)
    return list(known)


def _top_k(prediction: PredictionRecord | None, k: int = 5) -> list[list[Any]]:
    if prediction is None:
        return []
    if prediction.probabilities:
        ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])
        return [[name, p] for name, p in ranked[:k]]
    return [[name, p] for name, p in prediction.top_k[:k]]


def _previous_attempt(rescans: list[RescanRecord]) -> dict[str, Any] | None:
    """What the last rescan replaced: why, what was predicted, and the settings change."""
    if not rescans:
        return None
    last = rescans[-1]
    before = last.settings.as_dict() if last.settings else {}
    after = last.new_settings.as_dict() if last.new_settings else {}
    prediction = last.prediction
    return {"reason": last.reason, "label": prediction.label if prediction else None,
            "confidence": prediction.confidence if prediction else None,
            "changed": {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}}


def record_of(payload: dict[str, Any]) -> DecisionRecord | None:
    """The typed decision record a label request carries (None for a move request, or
    when what it carries is no record)."""
    try:
        return DecisionRecord.from_stored(payload["record"])
    except (KeyError, RecordFormatError):
        return None


def view_of(payload: dict[str, Any], known_classes: list[str]) -> dict[str, Any]:
    """The page's view of one pending payload: the evidence, without image bytes."""
    record = record_of(payload) or DecisionRecord()
    prediction, adjudication = record.prediction, record.adjudication
    reclassified = adjudication.reclassified if adjudication else None
    choices = [c for c in payload.get("choices") or DECISIONS if c in DECISIONS]
    return _json_safe({
        "request_id": str(payload["request_id"]),
        "kind": payload.get("kind", "label"),
        "frame_id": record.frame_id,
        "sequence": record.sequence,
        "position": record.position.model_dump() if record.position else None,
        "target": payload.get("target"),
        "reason": payload.get("reason") or payload.get("message") or "",
        "error": payload.get("error"),
        "proposal": payload.get("proposal", record.label),
        "on_approve": payload.get("on_approve") or "",
        "choices": choices,
        "top_k": _top_k(prediction),
        "confidence": prediction.confidence if prediction else None,
        "conformal_set": prediction.conformal_set if prediction else [],
        "adjudicator": adjudication.adjudicator if adjudication else None,
        "adjudication": adjudication.answer.model_dump()
        if adjudication and adjudication.answer else None,
        "adjudication_error": adjudication.error if adjudication else None,
        "reclassified": {"label": reclassified.label, "confidence": reclassified.confidence}
        if reclassified else None,
        "rescans": len(record.rescans),
        "previous": _previous_attempt(record.rescans),
        "class_names": _class_names(payload, known_classes, prediction),
        "has_image": payload_image(payload, "frame") is not None,
        "has_previous": payload_image(payload, "previous") is not None,
    })


def create_app(broker: ApprovalBroker, token: str, class_names: list[str] | None = None,
               hosts: Iterable[str] = ()) -> GuardedApp:
    """The approval app behind its guard: every request needs an allowed Host and `token`
    (query `?token=` or header), checked before any body byte is read; bodies are capped."""
    return GuardedApp(_routes(broker, class_names), token, hosts)


def _routes(broker: ApprovalBroker, class_names: list[str] | None) -> FastAPI:
    known = list(class_names or [])
    app = FastAPI(title="micagent approvals", docs_url=None, redoc_url=None,
                  openapi_url=None)
    page = resources.files("workflows.web").joinpath("static/index.html").read_text("utf-8")

    def pending_payload(request_id: str) -> dict[str, Any]:
        for payload in broker.pending():
            if str(payload.get("request_id")) == request_id:
                return payload
        raise HTTPException(status_code=404, detail=f"no pending approval {request_id!r}")

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/pending")
    def pending() -> list[dict[str, Any]]:
        return [view_of(p, known) for p in broker.pending()]

    @app.get("/api/progress")
    def progress() -> JSONResponse:
        return JSONResponse(_json_safe(dict(broker.progress)))

    @app.get("/api/image/{request_id}/{kind}")
    def image(request_id: str, kind: str) -> Response:
        if kind not in IMAGE_KINDS:
            raise HTTPException(status_code=404, detail=f"unknown image kind {kind!r}")
        png = payload_image(pending_payload(request_id), kind)
        if png is None:
            raise HTTPException(status_code=404, detail=f"approval {request_id} has no {kind}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/decide/{request_id}")
    def decide(request_id: str, body: DecisionIn) -> dict[str, Any]:
        payload = pending_payload(request_id)
        choices = [c for c in payload.get("choices") or DECISIONS if c in DECISIONS]
        if body.decision not in choices:
            raise HTTPException(status_code=422, detail=f"decision must be one of {choices}")
        record = record_of(payload)
        allowed = _class_names(payload, known, record.prediction if record else None)
        label = None
        if body.decision == "relabel":
            if not body.label or (allowed and body.label not in allowed):
                raise HTTPException(status_code=422,
                                    detail=f"relabel needs a label from {allowed}")
            label = body.label
        elif body.decision == "approve" and payload.get("proposal") in allowed:
            label = payload["proposal"]
        decision = {"decision": body.decision, "label": label,
                    "operator": body.operator.strip(), "note": body.note}
        try:
            broker.decide(request_id, decision)
        except KeyError as exc:  # answered by another front-end in the meantime
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return {"request_id": request_id, **decision}

    return app


@dataclass
class WebUIHandle:
    """A running approval page: its address, token, and how to stop it."""

    host: str
    port: int
    token: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_web_ui(broker: ApprovalBroker, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, class_names: list[str] | None = None,
                 startup_timeout: float = 15.0,
                 allow_hosts: Iterable[str] = ()) -> WebUIHandle:
    """Serve the approval page in a background thread; port 0 picks a free port. Requests
    must name `host`, localhost, 127.0.0.1 or one of `allow_hosts` in their Host header."""
    token = token or secrets.token_urlsafe(24)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve the approval page on {host}:{port}: {exc}") from exc
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(broker, token, class_names, (host, *allow_hosts)),
                            log_level="warning", access_log=False, lifespan="off",
                            limit_concurrency=64, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="micagent-web-ui", daemon=True)
    thread.start()
    handle = WebUIHandle(host, bound_port, token, server, thread)
    deadline = time.monotonic() + startup_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        handle.stop()
        sock.close()
        raise RuntimeError(f"the approval page did not start on {host}:{bound_port}")
    return handle
