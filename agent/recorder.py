"""Session-file writes off the acquisition path: a single worker thread appends recorded
frames in order while the agent moves on to the next acquisition.

Crash safety: before a write is queued, the frame and its decision record are both in the
scratch store; they leave it only once the writer has flushed them. `recover` writes whatever
a killed process left there (the session file is idempotent by frame id), so a frame whose
record step was checkpointed is never lost and never stored twice."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from agent.scratch import FrameScratch
from instruments.session_file.decision_record import DecisionRecord


class RecordingError(RuntimeError):
    """A queued session-file write failed; the session cannot go on recording."""


class Recorder:
    def __init__(self, writer: Any, scratch: FrameScratch) -> None:
        self.writer, self.scratch = writer, scratch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="micagent-recorder")
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def _write(self, frame_id: str, record: DecisionRecord | None = None,
               text: str | None = None) -> None:
        frame = self.scratch.get(frame_id)
        if record is None:
            text = self.scratch.get_record(frame_id)
            record = DecisionRecord.from_json(text)
        self.writer.write_frame(frame, record, record_json=text)
        self.scratch.drop(frame_id)

    def submit(self, frame_id: str, record: DecisionRecord) -> None:
        """Queue a write of a scratch frame with its record (record saved to scratch first,
        as the JSON document the file will hold)."""
        self.check()
        text = record.to_json()
        self.scratch.put_record(frame_id, text)
        future = self._pool.submit(self._write, frame_id, record, text)
        future.add_done_callback(self._done)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + [future]

    def _done(self, future: Future) -> None:
        error = future.exception()
        if error is not None and self._error is None:
            self._error = error

    def check(self) -> None:
        """Raise RecordingError if an earlier write failed."""
        if self._error is not None:
            raise RecordingError(f"writing the session file failed: {self._error}") \
                from self._error

    def drain(self) -> None:
        """Wait for every queued write."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.exception()
        self.check()

    def recover(self) -> list[str]:
        """Write the frames a killed session recorded but had not yet stored; their ids."""
        written = []
        for frame_id in self.scratch.recorded_ids():
            if not self.writer.has_frame(frame_id):
                self._write(frame_id)
                written.append(frame_id)
            else:
                self.scratch.drop(frame_id)
        return written

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)
