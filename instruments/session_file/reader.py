"""SessionReader: read-only access to a session file's Frames, decision records, provenance.

Opens the file with h5py in mode 'r' (never NSIDReader, which opens files 'r+'), so reading
never changes a byte of the user's file. Only frames marked complete are seen.

Reader API for other tools (replay, reprocessing)::

    with SessionReader(path) as reader:
        reader.records()        # [DecisionRecord] in write order (typed, migrated on read)
        reader.frames()         # (Frame, DecisionRecord) pairs, pixels included
        reader.evaluations()    # ground truth per frame ({} where none)
        reader.rows()           # [DecisionRow]: each decision flat (inspect, report, replay)
        reader.summary()        # the `micagent inspect --json` object
    read_records(path)          # the records alone, file closed again
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from instruments.devices.frame import Frame
from instruments.session_file.decision_record import DecisionRecord, RecordFormatError
from instruments.session_file.decision_row import DecisionRow, tally
from instruments.session_file.layout import (
    ATTR_COMPLETE,
    ATTR_FORMAT,
    ATTR_FRAME_ID,
    CHANNEL_PREFIX,
    EVALUATION_JSON,
    FORMAT_NAME,
    FRAME_JSON,
    INCIDENTS,
    MEASUREMENT_GROUP,
    NSID_GROUP,
    PROVENANCE,
    RECORD_JSON,
    NotASessionFile,
    SessionFileCorrupt,
    SessionFileError,
    channel_json,
    is_alias,
    is_lock_error,
    read_provenance,
)
from instruments.session_file.overview import StoredOverview, read_overview


def open_hdf5_readonly(path: str) -> h5py.File:
    """Open `path` read-only, mapping failures to typed errors. A file held by a live writer
    (HDF5 lock) is opened without locking: reading it then shows the frames flushed so far."""
    if not os.path.exists(path):
        raise SessionFileError("no such file", path)
    if not h5py.is_hdf5(path):
        raise SessionFileCorrupt("not an HDF5 file (truncated or overwritten?)", path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if not is_lock_error(exc):
            raise SessionFileCorrupt(f"cannot open HDF5 file: {exc}", path) from exc
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise SessionFileCorrupt(f"cannot open HDF5 file: {exc}", path) from exc


def _nsid_dataset_count(f: h5py.File) -> int:
    """How many NSID main-looking datasets the file holds (for a helpful error message)."""
    found = []

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and "pyNSID_version" in obj.attrs \
                and "data_type" in obj.attrs:
            found.append(obj)

    f.visititems(visit)
    return len(found)


def channel_record(group: h5py.Group, path: str = "") -> DecisionRecord:
    """A frame's decision record, typed (records of older versions migrated), from its
    channel group in an open file (the reader's, or the writer's while it writes)."""
    try:
        return DecisionRecord.from_stored(channel_json(group, RECORD_JSON, path))
    except RecordFormatError as exc:
        raise SessionFileCorrupt(f"{group.name}/{RECORD_JSON}: {exc}", path) from exc


class SessionReader:
    """Read-only view of one session file. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._file = open_hdf5_readonly(self.path)
        try:
            self._check_format()
            self.provenance: dict[str, Any] = read_provenance(self._file, self.path)
            self._channels = self._complete_channels()
        except Exception:
            self._file.close()
            raise

    def _check_format(self) -> None:
        f = self._file
        if f.attrs.get(ATTR_FORMAT) == FORMAT_NAME and PROVENANCE in f:
            return
        count = _nsid_dataset_count(f)
        if count:
            raise NotASessionFile(
                f"HDF5 file holds {count} NSID dataset(s) but no micagent session records; "
                "replay:// serves its images as frames", self.path)
        raise NotASessionFile("HDF5 file is neither a micagent session nor NSID data",
                              self.path)

    def _complete_channels(self) -> list[h5py.Group]:
        measurement = self._file.get(MEASUREMENT_GROUP)
        if not isinstance(measurement, h5py.Group):
            raise SessionFileCorrupt(f"missing group /{MEASUREMENT_GROUP}", self.path)
        names = sorted(n for n in measurement if n.startswith(CHANNEL_PREFIX))
        channels = []
        for name in names:
            try:
                group = measurement[name]
                complete = isinstance(group, h5py.Group) and bool(
                    group.attrs.get(ATTR_COMPLETE, False)) and not is_alias(name, group)
            except (KeyError, OSError):      # a write a kill cut short: never complete
                continue
            if complete:
                channels.append(group)
        return channels

    @property
    def frame_ids(self) -> list[str]:
        """Frame uuids in write order."""
        return [str(g.attrs[ATTR_FRAME_ID]) for g in self._channels]

    def __len__(self) -> int:
        return len(self._channels)

    def _json(self, group: h5py.Group, name: str) -> Any:
        return channel_json(group, name, self.path)

    def _evaluation(self, group: h5py.Group) -> dict[str, Any]:
        """A frame's stored ground truth; {} where none was stored."""
        if EVALUATION_JSON in group.attrs or EVALUATION_JSON in group:
            return self._json(group, EVALUATION_JSON)
        return {}

    def _frame(self, group: h5py.Group) -> Frame:
        meta = self._json(group, FRAME_JSON)
        main = f"{NSID_GROUP}/{NSID_GROUP}"
        if main not in group:
            raise SessionFileCorrupt(f"{group.name} has no image dataset", self.path)
        try:
            image = np.asarray(group[main][()], dtype=np.float32)
        except OSError as exc:
            raise SessionFileCorrupt(f"{group.name} image unreadable: {exc}", self.path) from exc
        return Frame.from_dict({"frame_id": group.attrs[ATTR_FRAME_ID], "settings": {},
                                "stage": {}, "timestamp": 0.0, **meta,
                                "evaluation": self._evaluation(group)}, image)

    def frame(self, index: int) -> Frame:
        """The index-th stored frame (write order)."""
        return self._frame(self._channels[index])

    def frame_metadata(self) -> list[dict[str, Any]]:
        """Each frame's stored metadata (settings, stage, ids) without reading images."""
        return [self._json(g, FRAME_JSON) for g in self._channels]

    def iter_frames(self) -> Iterator[Frame]:
        """Frames in write order (records not needed: what replay uses)."""
        for group in self._channels:
            yield self._frame(group)

    def _record(self, group: h5py.Group) -> DecisionRecord:
        return channel_record(group, self.path)

    def frames(self) -> Iterator[tuple[Frame, DecisionRecord]]:
        """(Frame, decision record) pairs in write order; SessionFileCorrupt if a frame has
        no record or one that no schema version describes."""
        for group in self._channels:
            yield self._frame(group), self._record(group)

    def records(self) -> list[DecisionRecord]:
        """Decision records in write order (no image data read)."""
        return [self._record(g) for g in self._channels]

    def evaluations(self) -> list[dict[str, Any]]:
        """Ground truth per frame (empty dicts where none was stored)."""
        return [self._evaluation(g) for g in self._channels]

    def incidents(self) -> list[dict[str, Any]]:
        """The instrument faults met during the session, in order (kind, message, time, ...);
        a row that does not parse is returned as kind `unreadable`."""
        log = self._file.get(INCIDENTS)
        if not isinstance(log, h5py.Dataset):
            return []
        rows = []
        for raw in log.asstr()[()]:
            try:
                rows.append(json.loads(raw))
            except ValueError:
                rows.append({"kind": "unreadable", "message": str(raw)[:200]})
        return rows

    def rows(self) -> list[DecisionRow]:
        """Each frame's decision as one flat row (instruments/session_file/decision_row.py),
        in write order; no image data read."""
        return [DecisionRow.of(index, self._record(group), self._evaluation(group),
                               self._json(group, FRAME_JSON))
                for index, group in enumerate(self._channels)]

    def summary(self) -> dict[str, Any]:
        """The `micagent inspect --json` object."""
        prov = self.provenance
        return {
            "path": self.path,
            "session_id": prov.get("session_id"),
            "status": prov.get("status"),
            "reason": prov.get("reason", ""),
            "incidents": dict(Counter(i.get("kind") for i in self.incidents())),
            "closed": prov.get("status") != "running",
            "started": prov.get("started"),
            "ended": prov.get("ended"),
            "instrument": prov.get("instrument"),
            "model": prov.get("model"),
            "risk_control": prov.get("risk_control"),   # a target risk's policy, if set
            "frame_ids": self.frame_ids,
            **tally(self.rows()),
        }

    def overview(self) -> StoredOverview | None:
        """The overview and candidate score map a targeting strategy stored (None: none)."""
        return read_overview(self._file)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_records(path: str | os.PathLike) -> list[DecisionRecord]:
    """The decision records of a session file, in write order (file closed on return)."""
    with SessionReader(path) as reader:
        return reader.records()
