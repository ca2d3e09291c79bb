"""Stopping a session right after a chosen graph step, as if its process had died there."""

from __future__ import annotations

from collections.abc import Callable


class Crash(Exception):
    """Stands for the process dying right after a graph step."""


def crash_at(node: str, nth: int) -> Callable[[str, dict], None]:
    """An `on_step` callback that raises `Crash` after the `nth` step of `node`."""
    seen = {"n": 0}

    def on_step(name: str, _update: dict) -> None:
        if name == node:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Crash(f"killed after {node} #{nth}")
    return on_step
