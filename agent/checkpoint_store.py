"""LangGraph's SqliteSaver with a bounded history: a session's database keeps the latest
checkpoint of its thread (and the task writes pending on it), which is all a resume reads;
older checkpoints are dropped every `prune_every` checkpoints, in one transaction.

Without this the database kept every step of the session (about five per frame, each a full
copy of the state). The graph uses no `DeltaChannel`, whose values are rebuilt from ancestor
checkpoints, so keeping only the latest is safe (see `BaseCheckpointSaver.prune`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

PRUNE_EVERY = 64


class BoundedSqliteSaver(SqliteSaver):
    """SqliteSaver that implements `prune(..., strategy="keep_latest")` and runs it on the
    thread it writes every `prune_every` checkpoints."""

    def __init__(self, conn: Any, *, serde: Any = None, prune_every: int = PRUNE_EVERY) -> None:
        super().__init__(conn, serde=serde)
        if prune_every < 1:
            raise ValueError(f"prune_every must be at least 1, got {prune_every}")
        self.prune_every = prune_every
        self._puts = 0

    def put(self, config, checkpoint, metadata, new_versions):
        saved = super().put(config, checkpoint, metadata, new_versions)
        self._puts += 1
        if self._puts % self.prune_every == 0:
            self.prune([saved["configurable"]["thread_id"]])
        return saved

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Keep only the latest checkpoint of each thread and namespace, with the writes
        stored against it (`keep_latest`), or delete the threads (`delete`)."""
        if strategy == "delete":
            for thread_id in thread_ids:
                self.delete_thread(thread_id)
            return
        if strategy != "keep_latest":
            raise ValueError(f"unknown prune strategy {strategy!r}: keep_latest or delete")
        with self.cursor() as cur:                  # one transaction: a kill keeps all or none
            for thread_id in map(str, thread_ids):
                latest = cur.execute(
                    "SELECT checkpoint_ns, max(checkpoint_id) FROM checkpoints "
                    "WHERE thread_id = ? GROUP BY checkpoint_ns", (thread_id,)).fetchall()
                for namespace, checkpoint_id in latest:
                    for table in ("checkpoints", "writes"):
                        cur.execute(f"DELETE FROM {table} WHERE thread_id = ? AND "  # noqa: S608
                                    "checkpoint_ns = ? AND checkpoint_id < ?",
                                    (thread_id, namespace, checkpoint_id))


def steps_written(path: str | Path) -> int:
    """How many checkpoints a session's database has written so far, pruned ones included
    (the latest step number + 2: LangGraph numbers the input's checkpoint -1); read-only, 0
    while there is none or the database cannot be read at this moment."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            step = conn.execute("SELECT max(json_extract(metadata, '$.step')) "
                                "FROM checkpoints").fetchone()[0]
    except sqlite3.Error:
        return 0
    return 0 if step is None else int(step) + 2
