"""SIGTERM and SIGHUP stop a session as Ctrl-C does (a batch system's stop, `docker stop`, a
SLURM preemption, a closed terminal): they raise `Terminated`, a KeyboardInterrupt, in the main
thread, and the session closes its file `interrupted` with the resume hint.

A signal's handler runs between two bytecodes of whatever the main thread is doing, and that
can be a finaliser or a weakref callback, where Python prints the exception as "ignored" and
carries on: the stop would be lost and the session run on. Such a swallowed Terminated is
delivered again (`_thread.interrupt_main` with the same signal) a moment later."""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

REDELIVERY_S = 0.05


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the session stops as on Ctrl-C (file closed interrupted)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated in the main thread while the block runs, until one
    lands where Python does not swallow it."""
    def stop(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    previous_hook = sys.unraisablehook

    def redeliver(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Terminated):
            threading.Timer(REDELIVERY_S, _thread.interrupt_main,
                            args=(unraisable.exc_value.signum,)).start()
            return
        previous_hook(unraisable)

    names = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, stop) for s in names}
    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, handler in previous.items():
            signal.signal(s, handler)
