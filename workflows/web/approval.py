"""The web approval page: a token-protected FastAPI app over an `ApprovalBroker` (its guard,
Host allow-list, token and body cap, is `workflows/web/guard.py`).

A running session submits each `ApprovalRequest` (agent/approval_request.py) to the broker;
this app lists the pending ones, serves their thumbnails, and turns a click into a
`HumanDecision` for `broker.decide(...)` (a body that is not one, or does not fit its request,
is a 422), which the session resumes with through `Command(resume=decision)`. `start_web_ui`
runs it with uvicorn in a background thread. When the session ends its summary joins the
progress (`broker.finish`), and `WebUIHandle.close` lets a page that follows the session read
it before the server stops, so the page ends on the session's result. A targeting session's
search map (`workflows/web/search_map.py`, a reader of the session's event stream) joins the
progress, its overview served as PNG.
"""

from __future__ import annotations

import io
import math
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from agent.approval_broker import ApprovalBroker
from agent.approval_request import (
    ApprovalRequest,
    DecisionRefused,
    HumanDecision,
    LabelRequest,
    MoveRequest,
)
from instruments.session_file.decision_record import (
    DecisionRecord,
    PredictionRecord,
    RescanRecord,
)
from workflows.web.guard import TOKEN_HEADER, GuardedApp
from workflows.web.search_map import SearchMapView

__all__ = ["TOKEN_HEADER", "WebUIHandle", "create_app", "start_web_ui"]

IMAGE_KINDS = ("frame", "previous")


class DecisionIn(HumanDecision):
    """What the page posts: a HumanDecision that names its operator."""

    operator: str                  # required here (checked by HumanDecision)


def _json_safe(value: Any) -> Any:
    """Values as JSON: non-finite floats become null, other non-JSON values their text."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _png_at(path: str | None) -> bytes | None:
    """The image file at `path` as PNG bytes; None where there is no readable image."""
    if not path or not Path(path).is_file():
        return None
    raw = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.format == "PNG":
                return raw
            buf = io.BytesIO()
            img.convert("L" if img.mode not in ("RGB", "RGBA") else img.mode).save(buf, "PNG")
            return buf.getvalue()
    except OSError:
        return None


def request_image(request: ApprovalRequest, kind: str) -> bytes | None:
    """The `kind` ("frame" or "previous") image of a label request as PNG bytes, if any: the
    previous one is the last earlier attempt whose thumbnail is still there."""
    if not isinstance(request, LabelRequest):
        return None
    if kind == "frame":
        return _png_at(request.thumbnail)
    paths = [request.previous_thumbnail, *(a.thumbnail for a in reversed(request.record.rescans))]
    return next((png for path in paths if (png := _png_at(path)) is not None), None)


def _class_names(request: ApprovalRequest, known: list[str]) -> list[str]:
    """The labels a relabel may give: the request's, else the classifier's, else `known`."""
    if request.labels:
        return list(request.labels)
    prediction = request.record.prediction if isinstance(request, LabelRequest) else None
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


def view_of(request: ApprovalRequest, known_classes: list[str]) -> dict[str, Any]:
    """The page's view of one pending request: the evidence, without image bytes."""
    record = request.record if isinstance(request, LabelRequest) else DecisionRecord()
    prediction, adjudication = record.prediction, record.adjudication
    reclassified = adjudication.reclassified if adjudication else None
    return _json_safe({
        "request_id": request.request_id,
        "kind": request.kind,
        "frame_id": record.frame_id,
        "sequence": record.sequence,
        "position": record.position.model_dump() if record.position else None,
        "target": request.target if isinstance(request, MoveRequest) else None,
        "reason": request.reason,
        "error": request.error or None,
        "proposal": request.proposal or record.label,
        "on_approve": request.on_approve,
        "choices": [choice.value for choice in request.choices],
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
        "class_names": _class_names(request, known_classes),
        "new_labels": request.new_labels,
        "has_image": request_image(request, "frame") is not None,
        "has_previous": request_image(request, "previous") is not None,
    })


@dataclass
class PageWatch:
    """Whether a page follows the session (it asked for the progress) and has been served
    the session's final state."""

    polled: threading.Event = field(default_factory=threading.Event)
    final_served: threading.Event = field(default_factory=threading.Event)


def create_app(broker: ApprovalBroker, token: str, class_names: list[str] | None = None,
               hosts: Iterable[str] = (), watch: PageWatch | None = None,
               search_map: SearchMapView | None = None) -> GuardedApp:
    """The approval app behind its guard: every request needs an allowed Host and `token`
    (query `?token=` or header), checked before any body byte is read; bodies are capped."""
    return GuardedApp(_routes(broker, class_names, watch or PageWatch(),
                              search_map or SearchMapView(broker)), token, hosts)


def _routes(broker: ApprovalBroker, class_names: list[str] | None,
            watch: PageWatch, search_map: SearchMapView) -> FastAPI:
    known = list(class_names or [])
    app = FastAPI(title="micagent approvals", docs_url=None, redoc_url=None,
                  openapi_url=None)
    page = resources.files("workflows.web").joinpath("static/index.html").read_text("utf-8")

    def pending_request(request_id: str) -> ApprovalRequest:
        for request in broker.pending():
            if request.request_id == request_id:
                return request
        raise HTTPException(status_code=404, detail=f"no pending approval {request_id!r}")

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/pending")
    def pending() -> list[dict[str, Any]]:
        return [view_of(p, known) for p in broker.pending()]

    @app.get("/api/progress")
    def progress() -> JSONResponse:
        served = dict(broker.progress)
        watch.polled.set()
        if "final" in served:
            watch.final_served.set()
        return JSONResponse(_json_safe(served))

    @app.get("/api/image/{request_id}/{kind}")
    def image(request_id: str, kind: str) -> Response:
        if kind not in IMAGE_KINDS:
            raise HTTPException(status_code=404, detail=f"unknown image kind {kind!r}")
        png = request_image(pending_request(request_id), kind)
        if png is None:
            raise HTTPException(status_code=404, detail=f"approval {request_id} has no {kind}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/search_map.png")
    def overview_image() -> Response:
        png = search_map.png()
        if png is None:
            raise HTTPException(status_code=404, detail="this session has no overview")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/decide/{request_id}")
    def decide(request_id: str, body: DecisionIn) -> dict[str, Any]:
        pending_request(request_id)
        try:
            decision = broker.decide(request_id, HumanDecision(**dict(body)))
        except DecisionRefused as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except KeyError as exc:  # answered by another front-end in the meantime
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return {"request_id": request_id, **decision.model_dump(mode="json")}

    return app


@dataclass
class WebUIHandle:
    """A running approval page: its address, token, and how to stop it."""

    host: str
    port: int
    token: str
    server: uvicorn.Server
    thread: threading.Thread
    watch: PageWatch
    search_map: SearchMapView      # subscribe it to the session's stream: the page's map

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def close(self, grace: float = 5.0) -> None:
        """Stop once a page that follows the session has read its final state (waiting at
        most `grace` seconds: pages poll every second); at once when no page is open."""
        if self.watch.polled.is_set():
            self.watch.final_served.wait(grace)
        self.stop()


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
    watch, search_map = PageWatch(), SearchMapView(broker)
    config = uvicorn.Config(create_app(broker, token, class_names, (host, *allow_hosts), watch,
                                       search_map),
                            log_level="warning", access_log=False, lifespan="off",
                            limit_concurrency=64, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="micagent-web-ui", daemon=True)
    thread.start()
    handle = WebUIHandle(host, bound_port, token, server, thread, watch, search_map)
    deadline = time.monotonic() + startup_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        handle.stop()
        sock.close()
        raise RuntimeError(f"the approval page did not start on {host}:{bound_port}")
    return handle
