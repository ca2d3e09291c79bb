"""The session's own readers of its event stream: the session file's incident log and the
session log (STATE_DIR/logs/SESSION_ID.log, beside the library noise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from agent.event_stream import StreamReader
from instruments.utils.redaction import redact


class FileIncidents(StreamReader):
    """Appends every incident to the session file's incident log (while the file is open)."""

    def __init__(self, writer: Any) -> None:
        super().__init__()
        self.writer = writer

    def incident(self, data: dict[str, Any]) -> None:
        self.writer.record_incident(data["kind"], data["message"], source=data["source"],
                                    **json.loads(data["details"]))


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

    def frame(self, data: dict[str, Any]) -> None:
        self._line(f"frame {data['recorded']} {data['frame_id']}: {data['label']} "
                   f"({data['route']}, confidence {data['confidence']})")

    def incident(self, data: dict[str, Any]) -> None:
        self._line(f"incident {data['kind']} ({data['source']}): {data['message']} "
                   f"{data['details']}")

    def decision(self, data: dict[str, Any]) -> None:
        self._line(f"decision {data['kind']} by {data['operator']}: {data['decision']} "
                   f"{data['label'] or ''}")

    def stop(self, doc: dict[str, Any]) -> None:
        self._line(f"stop run {doc['run_start']} {doc['exit_status']} {doc.get('reason', '')} "
                   f"events {doc.get('num_events')}")
        if self._file is not None:
            self._file.close()
            self._file = None
