"""Run one agent session and time it: wall seconds, seconds per graph node (checkpoint writes
included) and, from the session file, the time spent acquiring and classifying frames. Shared
by the overhead benchmarks (agent_overhead.py on the twin, nion_overhead.py on the bridge)."""

from __future__ import annotations

import time
from typing import Any

from agent.session import Session
from instruments.session_file.reader import SessionReader


def timed_run(session: Session) -> dict[str, Any]:
    """Run `session` to its end and close it; its figures per recorded frame."""
    steps: dict[str, float] = {}
    last = [time.perf_counter()]

    def on_step(node: str, _update: dict) -> None:
        now = time.perf_counter()
        steps[node] = steps.get(node, 0.0) + now - last[0]
        last[0] = now

    t0 = last[0] = time.perf_counter()
    final = session.run(on_step=on_step)
    wall = time.perf_counter() - t0
    session.close()
    with SessionReader(session.config.out) as reader:
        records = reader.records()
        counts = reader.provenance["outcome"]["counts"]
    n = len(records)
    acquire = sum(r.timings.acquire_s for r in records)
    classify = sum(r.timings.classify_s for r in records)
    return {"final": final, "records": records, "counts": counts, "frames": n, "wall_s": wall,
            "acquire_s": acquire, "classify_s": classify,
            "per_node_ms": {k: round(v / n * 1e3, 1) for k, v in steps.items()}}
