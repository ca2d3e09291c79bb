"""The session's own readers of its event stream: the session file (its incident log, and the
uids of the stream's runs in its provenance) and the session log (STATE_DIR/logs/SESSION_ID.log,
beside the library noise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from agent.event_stream import DECISIONS, FRAMES, INCIDENTS, StreamReader
from instruments.utils.redaction import redact


class FileRecorder(StreamReader):
    """Appends every incident to the session file's incident log (while the file is open) and
    each run's start uid to its provenance (`event_runs`), linking the file to the stream."""

    def __init__(self, writer: Any) -> None:
        super().__init__()
        self.writer = writer

    def start(self, doc: dict[str, Any]) -> None:
        runs = self.writer.provenance.get("event_runs") or []
        self.writer.update_provenance(event_runs=[*runs, doc["uid"]])

    def incident(self, data: dict[str, Any]) -> None:
        self.writer.record_incident(data["kind"], data["message"], source=data["source"],
                                    **json.loads(data["details"]))


LINES = {FRAMES: "frame {recorded} {frame_id}: {label} ({route}, confidence {confidence})",
         INCIDENTS: "incident {kind} ({source}): {message} {details}",
         DECISIONS: "decision {kind} by {operator}: {decision} {label}"}


class SessionLog(StreamReader):
    """One line per document in the session's log file, appended and flushed as it comes."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._file: TextIO | None = None

    def _line(self, text: str) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(redact(" ".join(text.split())) + "\n")
        self._file.flush()

    def start(self, doc: dict[str, Any]) -> None:
        self._line(f"start run {doc['uid']} session {doc.get('session_id')} "
                   f"resumed={doc.get('resumed')} recorded={doc.get('recorded')}")

    def event(self, doc: dict[str, Any]) -> None:
        stream = self.streams.get(doc["descriptor"])
        if stream in LINES:
            self._line(LINES[stream].format_map(doc["data"]))

    def stop(self, doc: dict[str, Any]) -> None:
        self._line(f"stop run {doc['run_start']} {doc['exit_status']} {doc.get('reason', '')} "
                   f"events {doc.get('num_events')}")
        if self._file is not None:
            self._file.close()
            self._file = None
