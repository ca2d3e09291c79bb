"""A thread-safe meeting point between a running session and its human front-ends.

The session submits each `ApprovalRequest` (agent/approval_request.py) and blocks on `wait`;
a front-end (terminal prompt, web page) lists `pending()` and calls `decide` with a
`HumanDecision`, which the graph receives through `Command(resume=decision)`. An answer that
does not fit its request is refused there (DecisionRefused) and the request stays pending.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from agent.approval_request import ApprovalRequest, HumanDecision, as_request


class ApprovalBroker:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._pending: dict[str, ApprovalRequest] = {}
        self._decided: dict[str, HumanDecision] = {}
        self.progress: dict[str, Any] = {}

    def submit(self, request: ApprovalRequest | dict[str, Any]) -> str:
        """Queue a request for a human; returns its id (also set on the queued request)."""
        with self._lock:
            request_id = str(next(self._ids))
            self._pending[request_id] = as_request(request).model_copy(
                update={"request_id": request_id})
            self._lock.notify_all()
            return request_id

    def pending(self) -> list[ApprovalRequest]:
        with self._lock:
            return list(self._pending.values())

    def decide(self, request_id: str, decision: HumanDecision | dict[str, Any]) -> HumanDecision:
        """Answer a pending request; KeyError for an unknown or answered id, DecisionRefused
        for an answer that does not fit the request (which stays pending). The accepted
        decision is returned."""
        with self._lock:
            if request_id not in self._pending:
                raise KeyError(f"no pending approval {request_id!r}")
            answer = self._pending[request_id].accept(decision)
            del self._pending[request_id]
            self._decided[request_id] = answer
            self._lock.notify_all()
            return answer

    def wait(self, request_id: str, timeout: float | None = None) -> HumanDecision | None:
        """Block until `request_id` is decided; None on timeout."""
        with self._lock:
            self._lock.wait_for(lambda: request_id in self._decided, timeout=timeout)
            return self._decided.pop(request_id, None)

    def update_progress(self, **fields: Any) -> None:
        with self._lock:
            self.progress.update(fields)

    def finish(self, summary: dict[str, Any]) -> None:
        """The session has ended: its summary (status, frames, labels...) joins the progress
        as `final`, for the front-ends' last view."""
        self.update_progress(final=summary)
