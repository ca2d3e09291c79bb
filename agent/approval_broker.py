"""A thread-safe meeting point between a running session and its human front-ends.

The session submits each `interrupt` payload and blocks on `wait`; a front-end (terminal
prompt, web page) lists `pending()` and calls `decide`. The decision dict is what the graph
receives through `Command(resume=decision)`.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any


class ApprovalBroker:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._pending: dict[str, dict[str, Any]] = {}
        self._decided: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, Any] = {}

    def submit(self, payload: dict[str, Any]) -> str:
        """Queue a payload for a human; returns its request id."""
        with self._lock:
            request_id = str(next(self._ids))
            self._pending[request_id] = dict(payload, request_id=request_id)
            self._lock.notify_all()
            return request_id

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._pending.values())

    def decide(self, request_id: str, decision: dict[str, Any]) -> None:
        """Answer a pending request; raises KeyError for an unknown or answered id."""
        with self._lock:
            if request_id not in self._pending:
                raise KeyError(f"no pending approval {request_id!r}")
            del self._pending[request_id]
            self._decided[request_id] = decision
            self._lock.notify_all()

    def wait(self, request_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until `request_id` is decided; None on timeout."""
        with self._lock:
            self._lock.wait_for(lambda: request_id in self._decided, timeout=timeout)
            return self._decided.pop(request_id, None)

    def update_progress(self, **fields: Any) -> None:
        with self._lock:
            self.progress.update(fields)
