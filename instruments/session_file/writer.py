"""SessionWriter: appends Frames and their decision records to a sidpy/NSID HDF5 file.

Each frame is a sidpy IMAGE Dataset (x/y in metres) in pyNSID's layout under
`/Measurement_000/Channel_NNNNNN` (see `instruments.session_file.layout`), written by
`instruments.session_file.nsid_writer` (pyNSID's layout by hand, for speed). A frame's group gets
the NSID
dataset, its frame/record/evaluation JSON and, last, `micagent_complete`; then the file is
flushed: after every `write_frame` that returned, the file on disk holds that frame whole.
HDF5 keeps a frame's new metadata in its cache until that flush, and what readers go by comes
last (the dimension scales that make an NSID main dataset, then `micagent_complete`), so a
crash mid-frame leaves at most an incomplete group, which readers skip and a resuming writer
removes.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import json
import os
import platform
import threading
import time
import uuid
from typing import Any

import h5py
import numpy as np

from instruments.devices.frame import Frame
from instruments.session_file.decision_record import DecisionRecord, RecordFormatError
from instruments.session_file.hdf5_recovery import (
    extend_to_file_end,
    flush_only_cache,
    is_past_end,
)
from instruments.session_file.layout import (
    ATTR_COMPLETE,
    ATTR_FORMAT,
    ATTR_FORMAT_VERSION,
    ATTR_FRAME_ID,
    ATTR_INDEX,
    CHANNEL_PREFIX,
    CLOSING_STATUSES,
    EVALUATION_JSON,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAME_JSON,
    INCIDENTS,
    MEASUREMENT_GROUP,
    NSID_GROUP,
    PENDING_GROUP,
    PROVENANCE,
    PROVENANCE_BACKUP,
    RECORD_JSON,
    NotASessionFile,
    SessionDiskFull,
    SessionFileCorrupt,
    SessionFileError,
    SessionRecordError,
    SessionWriteError,
    channel_name,
    channel_path,
    from_json,
    is_alias,
    is_lock_error,
    jsonable,
    read_provenance,
    to_json,
    write_error,
)
from instruments.session_file.nsid_writer import (
    SIDPY_LAYOUT_VERSION,
    Dimension,
    NsidDataset,
    NsidWriter,
    create_attrs,
    create_group,
    to_sidpy,
)
from instruments.session_file.overview import (
    OVERVIEW_GROUP,
    StoredOverview,
    overview_datasets,
    read_overview,
)
from instruments.session_file.reader import channel_record
from instruments.utils.disk_space import free_bytes, is_disk_full
from instruments.utils.redaction import redact

_SEM_DETECTORS = {"SE", "BSE", "ETD", "TLD", "INLENS", "ICD", "CBS"}
_STEM_DETECTORS = {"HAADF", "MAADF", "ADF", "BF", "DF", "ABF"}
# free space a write needs beyond its own bytes (HDF5 metadata, B-tree nodes, heap blocks):
# HDF5 is never asked to write what the disk cannot hold, so no write fails half-way
_WRITE_SLACK = 512 * 1024
_PACKAGES = ("micagent", "numpy", "h5py", "sidpy", "pyNSID", "SciFiReaders", "torch",
             "langgraph", "openai")


def utc_now() -> str:
    """ISO-8601 UTC timestamp."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def software_versions() -> dict[str, str]:
    """Versions of Python, HDF5 and the packages that make and read session files (looked up
    once per process: ~5 ms of package metadata scans)."""
    return dict(_software_versions())


@functools.cache
def _software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "hdf5": h5py.version.hdf5_version}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def modality(detector: str) -> str:
    """sidpy modality string for a detector name."""
    name = detector.upper()
    if name in _SEM_DETECTORS:
        return "SEM"
    if name in _STEM_DETECTORS:
        return "STEM"
    return "electron microscopy"


def attrs_safe(value: dict[str, Any]) -> dict[str, Any]:
    """A copy of a (JSON-plain) dict that sidpy can write as HDF5 groups/attributes: keys
    without '/', no None, lists only of numbers or of strings (others as JSON text). Lossy
    by design: the exact metadata is kept in the frame's JSON beside the dataset."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = str(key).replace("/", "_").strip() or "_"
        if item is None:
            continue
        if isinstance(item, dict):
            out[name] = attrs_safe(item)
        elif isinstance(item, list):
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)
            strings = all(isinstance(v, str) for v in item)
            out[name] = item if item and (numbers or strings) else json.dumps(item)
        else:
            out[name] = item
    return out


def _signal(frame: Frame) -> tuple[str, str]:
    """(quantity, units) of the signal: what the instrument reported, else intensity/a.u."""
    meta = frame.original_metadata
    quantity, units = meta.get("quantity"), meta.get("units")
    if isinstance(quantity, str) and isinstance(units, str) and quantity and units:
        return quantity, units
    return "intensity", "a.u."


def frame_to_nsid(frame: Frame, metadata: dict[str, Any] | None = None) -> NsidDataset:
    """The frame as an NSID IMAGE dataset: x/y spatial dimensions in metres, the signal's
    quantity/units (intensity, a.u. unless the instrument said), frame metadata in `metadata`
    (`metadata`: frame.metadata() if already made), the instrument's in `original_metadata`,
    and the provenance sidpy.Dataset.from_array records."""
    if frame.image.ndim != 2:
        raise SessionRecordError(f"frame image must be 2-D, got shape {frame.image.shape}")
    height, width = frame.shape
    quantity, units = _signal(frame)
    dims = []
    for name, length in (("x", height), ("y", width)):
        pixel = frame.settings.fov / length         # the square FOV spans the image's axis
        dims.append(Dimension(name, np.arange(length) * pixel, units="m",
                              quantity="distance", dimension_type="SPATIAL"))
    meta = dict(frame.metadata() if metadata is None else metadata)
    meta["timestamp_iso"] = _dt.datetime.fromtimestamp(
        frame.timestamp, _dt.UTC).isoformat()
    created = str(_dt.datetime.now()).replace(" ", "-")
    return NsidDataset(
        data=frame.image, dims=dims, title=NSID_GROUP, quantity=quantity, units=units,
        data_type="IMAGE", modality=modality(frame.settings.detector),
        source=f"micagent:{frame.instrument_id}", metadata=attrs_safe(meta),
        original_metadata=attrs_safe(from_json(
            to_json(frame.original_metadata, "original metadata", lenient=True),
            "original metadata")),
        provenance={"sidpy": {"from_array_": f"_{SIDPY_LAYOUT_VERSION}_{created}"}})


def frame_to_dataset(frame: Frame) -> Any:
    """The frame as the sidpy.Dataset pyNSID would write as `frame_to_nsid(frame)` (e.g. for
    the benchmark's pyNSID row)."""
    return to_sidpy(frame_to_nsid(frame))


def _string_dataset(group: h5py.Group, name: str, text: str) -> None:
    group.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))


def _replace_text(group: h5py.Group, name: str, text: str) -> None:
    """Overwrite the string dataset `name` (created where absent, e.g. a file written before
    the provenance backup existed). Where the old string cannot be freed (a kill tore its heap
    block: HDF5 reports a bad heap index), the dataset is made anew, leaving the old bytes
    unreferenced."""
    if name in group:
        try:
            group[name][()] = text
            return
        except OSError as exc:
            if is_disk_full(exc):
                raise
            del group[name]
    _string_dataset(group, name, text)


def _whole(channel: h5py.Group | h5py.Dataset) -> bool:
    """Whether a channel is a frame written whole: marked complete, with its image and record
    readable (a kill inside the flush that marked it may have torn what it marked)."""
    if not isinstance(channel, h5py.Group) or not channel.attrs.get(ATTR_COMPLETE, False):
        return False
    try:
        image = channel[f"{NSID_GROUP}/{NSID_GROUP}"]
        return image.shape is not None and (RECORD_JSON in channel.attrs
                                            or RECORD_JSON in channel)   # format 1: a dataset
    except (KeyError, OSError, RuntimeError):
        return False


NOT_A_SESSION = "HDF5 file is not a micagent session; refusing to append"


def _is_session(f: h5py.File) -> bool:
    return f.attrs.get(ATTR_FORMAT) == FORMAT_NAME and PROVENANCE in f


def refuse_foreign(path: str | os.PathLike) -> None:
    """Raise, before a session is set up, what `SessionWriter(path)` would raise on a file that
    is not a session: SessionFileCorrupt for a non-empty file that is not HDF5,
    NotASessionFile for another tool's HDF5. An absent or empty file passes, and so does one
    that cannot be opened to read now (e.g. held by a running session): the writer decides."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    if not h5py.is_hdf5(path):
        raise SessionFileCorrupt("not an HDF5 file (truncated or overwritten?)", path)
    try:
        with h5py.File(path, "r") as f:
            foreign = not _is_session(f)
    except OSError:
        return
    if foreign:
        raise NotASessionFile(NOT_A_SESSION, path)


class SessionWriter:
    """Append-only writer of one session file; opening an existing session file resumes it.

    `provenance` is stored at file level (session id, instrument, model, policy, envelope...)
    as JSON (values JSON cannot express, e.g. paths, as their str()); `session_id`, `started`,
    `status` and `software` are filled in when absent.
    """

    def __init__(self, path: str | os.PathLike, provenance: dict[str, Any] | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._next_index = 0
        self._nsid = NsidWriter()
        self._leftover: tuple[str, str] | None = None   # (path, frame id) of a failed write
        given = from_json(to_json(dict(provenance or {}), "provenance", self.path,
                                  lenient=True), "provenance")
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            self._file = self._open_existing()
            self._provenance = self._resume(given)
            self._store_provenance()
        else:
            self._file = self._create()
            self._provenance = self._start(given)
            try:
                self._store_provenance()
            except SessionWriteError:           # e.g. a full disk: no half-made file left
                self._file.close()
                os.unlink(self.path)
                raise

    # -- opening ---------------------------------------------------------------------------

    def _create(self) -> h5py.File:
        try:
            f = h5py.File(self.path, "w")      # absent or empty (e.g. a fresh temp file)
        except OSError as exc:
            raise SessionWriteError(f"cannot create session file: {exc}", self.path) from exc
        flush_only_cache(f)
        f.attrs[ATTR_FORMAT] = FORMAT_NAME
        f.attrs[ATTR_FORMAT_VERSION] = FORMAT_VERSION
        f.create_group(MEASUREMENT_GROUP)
        _string_dataset(f, PROVENANCE, "{}")
        _string_dataset(f, PROVENANCE_BACKUP, "{}")
        return f

    def _open_existing(self) -> h5py.File:
        if not os.access(self.path, os.W_OK):
            raise SessionWriteError("session file is not writable", self.path)
        if not h5py.is_hdf5(self.path):
            raise SessionFileCorrupt("not an HDF5 file (truncated or overwritten?)", self.path)
        try:
            f = h5py.File(self.path, "r+")
        except OSError as exc:
            if is_lock_error(exc):
                raise SessionWriteError(f"session file is open in another process: {exc}",
                                        self.path) from exc
            raise SessionFileCorrupt(f"cannot open HDF5 file: {exc}", self.path) from exc
        if not _is_session(f):
            f.close()
            raise NotASessionFile(NOT_A_SESSION, self.path)
        flush_only_cache(f)
        return f

    def _start(self, given: dict[str, Any]) -> dict[str, Any]:
        prov = dict(given)
        prov.setdefault("session_id", str(uuid.uuid4()))
        prov.setdefault("started", utc_now())
        prov["software"] = {**software_versions(), **dict(prov.get("software") or {})}
        prov.update(ended=None, status="running", reason="", resumed=[])
        return prov

    def _resume(self, given: dict[str, Any]) -> dict[str, Any]:
        f = self._file
        try:
            try:
                prov = self._read_existing()
            except RuntimeError as exc:          # a torn flush: its metadata past the end
                if not (is_past_end(exc) and extend_to_file_end(f)):
                    raise
                prov = self._read_existing()
        except SessionFileError:
            f.close()
            raise
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            f.close()
            hint = ("; HDF5 metadata lies past the file's recorded end (a kill in the middle "
                    "of a flush): `h5clear --increment` of the HDF5 tools may make it readable"
                    if is_past_end(exc) else "")
            raise SessionFileCorrupt(f"session layout unreadable: {exc}{hint}",
                                     self.path) from exc
        stored_id = prov.get("session_id")
        if "session_id" in given and stored_id and given["session_id"] != stored_id:
            f.close()
            raise SessionRecordError(
                f"file belongs to session {stored_id}, not {given['session_id']}", self.path)
        keep = ("started", "session_id") if stored_id else ("started",)
        prov.update({k: v for k, v in given.items() if k not in keep})
        prov.update(ended=None, status="running", reason="")
        prov["resumed"] = [*prov.get("resumed", []), utc_now()]
        return prov

    def _read_existing(self) -> dict[str, Any]:
        """The stored provenance, with the complete frames indexed."""
        prov = read_provenance(self._file, self.path)
        self._scan_frames()
        return prov

    def _scan_frames(self) -> None:
        """Index complete frames by uuid; drop what a crash left half-written (incomplete
        channel groups; format-1 files built frames under /micagent/pending)."""
        f = self._file
        pending = f.get(PENDING_GROUP)
        for name in list(pending or ()):
            del pending[name]
        if f.attrs.get(ATTR_FORMAT_VERSION, 0) < FORMAT_VERSION:
            f.attrs[ATTR_FORMAT_VERSION] = FORMAT_VERSION     # new frames: the new layout
        measurement = f.require_group(MEASUREMENT_GROUP)
        for name in list(measurement):
            if not name.startswith(CHANNEL_PREFIX):
                continue
            try:
                group = measurement[name]
                complete = _whole(group)
            except (KeyError, OSError, RuntimeError):
                # a kill mid-flush can leave a link to objects torn or past the file's
                # recorded end: never a complete frame (complete frames are flushed whole)
                group, complete = None, False
            if group is not None and (not isinstance(group, h5py.Group)
                                      or (complete and is_alias(name, group))):
                continue                        # never deleted: the link shares the object
            if not complete:
                try:
                    del measurement[name]
                except (KeyError, OSError, RuntimeError):  # a link HDF5 cannot remove: kept,
                    self._next_index = max(    # never read (readers skip it), its name not reused
                        self._next_index, int(name[len(CHANNEL_PREFIX):]) + 1)
                continue
            index = int(group.attrs[ATTR_INDEX])
            self._ids[str(group.attrs[ATTR_FRAME_ID])] = index
            self._next_index = max(self._next_index, index + 1)
        f.flush()

    # -- writing ---------------------------------------------------------------------------

    def has_frame(self, frame_id: str) -> bool:
        return frame_id in self._ids

    def frame_ids(self) -> list[str]:
        """Stored frame uuids in write order."""
        return sorted(self._ids, key=self._ids.__getitem__)

    def records(self) -> list[DecisionRecord]:
        """The decision records stored so far, in write order (a resumed session's earlier
        frames, for readers that join it then)."""
        with self._lock:
            self._require_open()
            return [channel_record(self._file[channel_path(index)], self.path)
                    for index in sorted(self._ids.values())]

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance)

    @property
    def closed(self) -> bool:
        return self._file is None

    def write_frame(self, frame: Frame, record: DecisionRecord,
                    record_json: str | None = None) -> bool:
        """Store `frame` with its decision record; False if that frame id is already stored.

        `record_json`: `record.to_json()` when the caller already encoded it (the record is
        stored as that one JSON document). On return True the frame is flushed to disk. On
        failure the frame is rolled back and SessionWriteError (SessionDiskFull for ENOSPC) is
        raised; earlier frames are intact.
        """
        if not isinstance(record, DecisionRecord):
            raise SessionRecordError(f"record must be a DecisionRecord, got "
                                     f"{type(record).__name__}", self.path)
        if (record.frame_id or frame.frame_id) != frame.frame_id:
            raise SessionRecordError(
                f"record frame_id {record.frame_id} != frame {frame.frame_id}", self.path)
        meta = frame.metadata()
        if record_json is None:
            try:
                record_json = record.to_json(fallback=jsonable)
            except RecordFormatError as exc:
                raise SessionRecordError(f"record of frame {frame.frame_id}: {exc}",
                                         self.path) from exc
        record_json = redact(record_json)      # e.g. an adjudicator's error quoting a key
        evaluation_json = to_json(frame.evaluation, "frame evaluation", self.path, lenient=True)
        frame_json = to_json({**meta, "original_metadata": frame.original_metadata},
                             "frame metadata", self.path, lenient=True)
        dataset = frame_to_nsid(frame, meta)
        with self._lock:
            self._require_open()
            if frame.frame_id in self._ids:
                return False
            self._require_space(dataset.data.nbytes + len(frame_json) + len(record_json)
                                + len(evaluation_json), f"writing frame {frame.frame_id}")
            index = self._next_index
            self._write(frame.frame_id, index, dataset,
                        {FRAME_JSON: frame_json, RECORD_JSON: record_json,
                         EVALUATION_JSON: evaluation_json})
            self._ids[frame.frame_id] = index
            self._next_index = index + 1
        return True

    def _write(self, frame_id: str, index: int, dataset: NsidDataset,
               texts: dict[str, str]) -> None:
        f = self._file
        final = channel_path(index)
        try:
            if self._leftover:                    # of an earlier attempt that failed
                self._remove_partial(*self._leftover)
                self._leftover = None
            group = create_group(f[MEASUREMENT_GROUP], channel_name(index))
            create_attrs(group, {ATTR_FRAME_ID: frame_id, ATTR_INDEX: index})
            self._nsid.write(dataset, group, main_data_name=NSID_GROUP)
            create_attrs(group, texts)
            create_attrs(group, {ATTR_COMPLETE: True})
            f.flush()
        except BaseException as exc:
            self._rollback(final, frame_id)
            if not isinstance(exc, Exception):    # KeyboardInterrupt & co. pass through
                raise
            raise write_error(exc, f"writing frame {frame_id}", self.path) from exc

    def _remove_partial(self, path: str, frame_id: str) -> None:
        """Delete what a failed write of `frame_id` left at `path` (never another frame)."""
        f = self._file
        if path not in f:
            return
        group = f[path]
        if group.attrs.get(ATTR_FRAME_ID, frame_id) != frame_id \
                and group.attrs.get(ATTR_COMPLETE, False):
            raise SessionFileCorrupt(f"{path} holds another complete frame", self.path)
        del f[path]

    def _rollback(self, final: str, frame_id: str) -> None:
        """Remove this frame's half-written group; best effort, as the disk may be full (the
        next write retries): readers ignore incomplete frames anyway."""
        self._leftover = (final, frame_id)
        try:
            self._remove_partial(final, frame_id)
            self._file.flush()
            self._leftover = None
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass

    def write_overview(self, stored: StoredOverview) -> None:
        """Store the session's overview and candidate score map (instruments/session_file/
        overview.py) once; a resumed session that takes it again keeps the first."""
        with self._lock:
            self._require_open()
            f = self._file
            if OVERVIEW_GROUP in f:
                return
            datasets = overview_datasets(stored)
            self._require_space(sum(d.data.nbytes for d in datasets.values()),
                                "writing the overview")
            try:
                group = f.create_group(OVERVIEW_GROUP)
                for name, dataset in datasets.items():
                    self._nsid.write(dataset, group, main_data_name=name)
                group.attrs["metadata"] = to_json(stored.metadata, "overview metadata")
                f.flush()
            except Exception as exc:
                if OVERVIEW_GROUP in f:
                    del f[OVERVIEW_GROUP]
                raise write_error(exc, "writing the overview", self.path) from exc

    def overview(self) -> StoredOverview | None:
        """The overview as the file holds it (None: none stored)."""
        with self._lock:
            self._require_open()
            return read_overview(self._file)

    def update_provenance(self, **values: Any) -> None:
        """Merge `values` into the session provenance and flush."""
        plain = from_json(to_json(values, "provenance", self.path, lenient=True), "provenance")
        with self._lock:
            self._require_open()
            self._provenance.update(plain)
            self._store_provenance()

    def _require_space(self, need: int, what: str) -> None:
        """SessionDiskFull, before anything is written, unless `need` bytes (and the slack)
        are free."""
        free = free_bytes(self.path)
        if free < need + _WRITE_SLACK:
            raise SessionDiskFull(f"disk full while {what}: {free} bytes free", self.path)

    def _store_provenance(self) -> None:
        """Backup first, flushed, then the primary: a kill mid-write spoils one copy only;
        refused before either is touched when the disk cannot hold both."""
        text = to_json(self._provenance, "provenance", self.path)
        self._require_space(2 * len(text.encode()), "storing provenance")
        try:
            _replace_text(self._file, PROVENANCE_BACKUP, text)
            self._file.flush()
            _replace_text(self._file, PROVENANCE, text)
            self._file.flush()
        except OSError as exc:
            raise write_error(exc, "storing provenance", self.path) from exc

    def record_incident(self, kind: str, message: str, **extra: Any) -> None:
        """Append one instrument fault (kind, message, extra values) to the incident log and
        flush; a closed writer ignores it (the session has ended)."""
        row = to_json({"time": time.time(), "kind": kind, "message": message, **extra},
                      "incident", self.path, lenient=True)
        with self._lock:
            if self._file is None:
                return
            try:
                log = self._file.get(INCIDENTS)
                self._require_space(len(row), "recording an incident")
                if log is None:
                    log = self._file.create_dataset(INCIDENTS, shape=(0,), maxshape=(None,),
                                                    chunks=(64,), dtype=h5py.string_dtype())
                log.resize((log.shape[0] + 1,))
                log[-1] = row
                self._file.flush()
            except OSError as exc:
                raise write_error(exc, "recording an incident", self.path) from exc

    def close(self, status: str = "completed", reason: str = "") -> None:
        """Record the closing status (completed / interrupted / failed) and close the file.
        Closing twice is a no-op."""
        if status not in CLOSING_STATUSES:
            raise ValueError(f"status must be one of {CLOSING_STATUSES}, got {status!r}")
        with self._lock:
            if self._file is None:
                return
            try:
                self._provenance.update(status=status, reason=reason, ended=utc_now(),
                                        frames=len(self._ids))
                self._store_provenance()
            finally:
                self._nsid.close()
                self._file.close()
                self._file = None

    def _require_open(self) -> None:
        if self._file is None:
            raise SessionWriteError("session writer is closed", self.path)

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close("completed")
        elif isinstance(exc, KeyboardInterrupt):
            self.close("interrupted", "KeyboardInterrupt")
        else:
            self.close("failed", f"{type(exc).__name__}: {exc}")
