"""Run calls on the main thread: instrument kits that must be driven from the thread that
built them get every call from the server's connection threads through this queue, one at a
time (which also serialises acquisitions)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

POLL_S = 0.2


class MainThreadExecutor:
    """A queue of calls that `run` executes in order on the thread that calls it."""

    def __init__(self, max_pending: int = 64) -> None:
        self._calls: queue.Queue[tuple[Future, Callable[..., Any], tuple, dict]] = queue.Queue(
            max_pending)
        self._stop = threading.Event()

    def call(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Queue one call and wait for its result (or its exception)."""
        if self._stop.is_set():
            raise RuntimeError("the bridge is shutting down")
        future: Future = Future()
        try:
            self._calls.put_nowait((future, func, args, kwargs))
        except queue.Full as exc:
            raise RuntimeError(f"bridge busy: {self._calls.maxsize} calls already "
                               "queued") from exc
        return future.result()

    def run(self) -> None:
        """Execute queued calls until `stop`; calls still queued then fail."""
        while not self._stop.is_set():
            try:
                future, func, args, kwargs = self._calls.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - travels to the caller's thread
                future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
        while True:
            try:
                future, *_ = self._calls.get_nowait()
            except queue.Empty:
                return
            future.set_exception(RuntimeError("the bridge shut down before this call ran"))

    def stop(self) -> None:
        self._stop.set()
