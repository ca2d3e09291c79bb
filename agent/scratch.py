"""Frames in flight: kept in memory and mirrored to a scratch folder, keyed by frame id, so a
session killed between acquisition and recording still records that frame once on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from instruments.devices.frame import Frame
from instruments.utils import atomic_file
from instruments.utils.disk_space import require_free

# a frame takes its image's bytes in the scratch folder, the session file and a thumbnail,
# plus its JSON documents
_COPIES = 3
_DOCUMENTS = 64 * 1024


class FrameScratch:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, Frame] = {}

    def _paths(self, frame_id: str) -> tuple[Path, Path]:
        return self.folder / f"{frame_id}.npy", self.folder / f"{frame_id}.json"

    def _record_path(self, frame_id: str) -> Path:
        return self.folder / f"{frame_id}.record.json"

    def put_record(self, frame_id: str, record_json: str) -> None:
        """The decision record (its JSON document) of a frame about to be stored, written
        atomically."""
        atomic_file.write_text(self._record_path(frame_id), record_json)

    def get_record(self, frame_id: str) -> str:
        """The JSON document `put_record` stored."""
        return self._record_path(frame_id).read_text()

    def recorded_ids(self) -> list[str]:
        """Frames with a decision record waiting to be stored, in sequence order."""
        ids = [p.name[:-len(".record.json")] for p in self.folder.glob("*.record.json")]
        return sorted(ids, key=lambda i: json.loads(self.get_record(i)).get("sequence") or 0)

    def put(self, frame: Frame) -> None:
        """Keep the frame; DiskFull (nothing written) when the disk cannot hold it, its
        copies and the margin."""
        require_free(self.folder, _COPIES * frame.image.nbytes + _DOCUMENTS,
                     f"frame {frame.sequence}")
        image_path, meta_path = self._paths(frame.frame_id)
        with atomic_file.atomic_path(image_path) as tmp:
            np.save(tmp, frame.image)
        atomic_file.write_text(meta_path, json.dumps(frame.to_dict(), default=str))
        self._memory[frame.frame_id] = frame

    def get(self, frame_id: str) -> Frame:
        """The frame, from memory or (after a restart) from disk; KeyError when unknown."""
        if frame_id in self._memory:
            return self._memory[frame_id]
        image_path, meta_path = self._paths(frame_id)
        if not (image_path.exists() and meta_path.exists()):
            raise KeyError(f"frame {frame_id} is not in the scratch folder {self.folder}")
        meta = json.loads(meta_path.read_text())
        frame = Frame.from_dict({**meta, "frame_id": frame_id}, np.load(image_path))
        self._memory[frame_id] = frame
        return frame

    def has(self, frame_id: str) -> bool:
        return frame_id in self._memory or self._paths(frame_id)[0].exists()

    def drop(self, frame_id: str) -> None:
        """Forget a frame: its record first, so a kill in between leaves a frame without a
        record (nothing to store) rather than a record without its frame."""
        self._memory.pop(frame_id, None)
        for path in (self._record_path(frame_id), *self._paths(frame_id)):
            path.unlink(missing_ok=True)
