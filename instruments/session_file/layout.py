"""The session file's format contract: HDF5 names, JSON encoding, typed errors.

Layout of a micagent session file (one per session)::

    /                                   attrs: micagent_format, micagent_format_version
    /micagent/provenance                scalar JSON string (session-level provenance)
    /Measurement_000/Channel_000000     one frame, in write order
        attrs: micagent_frame_id, micagent_index,
               frame       JSON string: Frame metadata + original metadata (exact round trip)
               record      JSON string: the agent's decision record, one JSON document of
                           instruments.session_file.decision_record.DecisionRecord
                           (its `version`; records without one are version 1, migrated
                           on read)
               evaluation  JSON string: ground truth for scoring only (may be {})
               micagent_complete   written last: only groups with it are frames
        Image/       pyNSID's layout (instruments.session_file.nsid_writer): Image (main
                     dataset), x, y,
                     metadata/, original_metadata/, provenance/

Format 1 kept frame/record/evaluation as scalar string datasets in the
channel group and built each frame under /micagent/pending/<frame uuid> before moving it into
place; readers still read it, a resuming writer appends format-2 frames.

pyNSID/SciFiReaders find main datasets by walking the file in name order, so
`Channel_000000`, `Channel_000001`, ... come back as `Channel_000`, `Channel_001`, ... in
frame order, and DTMicroscope's overview (Channel_000) is the first frame.
"""

from __future__ import annotations

import errno
import json
import math
from typing import Any

import numpy as np

from instruments.devices.errors import MicagentError
from instruments.utils.disk_space import is_disk_full
from instruments.utils.redaction import redact_value

FORMAT_NAME = "micagent-session"
FORMAT_VERSION = 2

ATTR_FORMAT = "micagent_format"
ATTR_FORMAT_VERSION = "micagent_format_version"
ATTR_FRAME_ID = "micagent_frame_id"
ATTR_INDEX = "micagent_index"
ATTR_COMPLETE = "micagent_complete"

PROVENANCE = "micagent/provenance"
# the previous provenance, written before every in-place update of PROVENANCE: a kill during
# that update can leave PROVENANCE pointing at a heap object that never reached the disk
PROVENANCE_BACKUP = "micagent/provenance_backup"
# every instrument fault met during the session, one JSON object per row, appended as it
# happens (instruments.devices.safety.GuardedMicroscope reports them): {time, kind, message, ...}
INCIDENTS = "micagent/incidents"
PENDING_GROUP = "micagent/pending"            # format 1 only
MEASUREMENT_GROUP = "Measurement_000"
CHANNEL_PREFIX = "Channel_"
NSID_GROUP = "Image"
FRAME_JSON = "frame"
RECORD_JSON = "record"
EVALUATION_JSON = "evaluation"

# disk_full: stopped before a frame because space ran out; `--resume` continues once freed
CLOSING_STATUSES = ("completed", "interrupted", "failed", "disk_full")


def channel_name(index: int) -> str:
    """Zero-padded channel group name: name order is frame order (up to a million frames)."""
    return f"{CHANNEL_PREFIX}{index:06d}"


def channel_path(index: int) -> str:
    return f"{MEASUREMENT_GROUP}/{channel_name(index)}"


def is_alias(name: str, group: Any) -> bool:
    """Whether channel link `name` resolves to a frame stored under another name: a link a
    kill tore mid-flush points past the file's end, cannot be removed, and once a later frame
    is written at that address it resolves to that frame (whose index attribute names its own
    channel). Such a link is not a frame."""
    index = group.attrs.get(ATTR_INDEX)
    return index is not None and channel_name(int(index)) != name


class SessionFileError(MicagentError):
    """Base of every session-file failure; `path` (also `where`) names the file."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(message, path)


class SessionFileCorrupt(SessionFileError):
    """The file is not readable HDF5 (truncated, overwritten) or its session layout is broken."""


class NotASessionFile(SessionFileError):
    """Readable HDF5, but not a micagent session (e.g. an NSID file from another tool)."""


class SessionWriteError(SessionFileError):
    """A write failed (unwritable path, I/O error); the frames written before it are intact."""


class SessionDiskFull(SessionWriteError):
    """The disk filled up (or too little space was left) while writing; what was being
    written was rolled back or never started."""

    errno = errno.ENOSPC        # what is_disk_full looks for


class SessionRecordError(SessionFileError, ValueError):
    """A decision record or provenance value cannot be stored (not JSON, wrong frame id)."""


def write_error(exc: BaseException, what: str, path: str) -> SessionWriteError:
    """The typed error for an I/O failure: SessionDiskFull for ENOSPC anywhere in the chain."""
    if is_disk_full(exc):
        return SessionDiskFull(f"disk full while {what}: {exc}", path)
    return SessionWriteError(f"{what} failed: {type(exc).__name__}: {exc}", path)


def is_lock_error(exc: OSError) -> bool:
    """True when HDF5 refused to open a file because another process holds its lock."""
    text = str(exc).lower()
    return "unable to lock file" in text or exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


def jsonable(value: Any) -> Any:
    """json.dumps fallback for numpy values and tuples-in-disguise."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value: Any) -> Any:
    """Replace NaN/inf floats by None so the JSON stays standard (readable by any tool)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _lenient(value: Any) -> Any:
    try:
        return jsonable(value)
    except TypeError:
        return str(value)


def to_json(value: Any, what: str, path: str = "", lenient: bool = False) -> str:
    """Strict JSON text of `value`, or SessionRecordError naming what could not be stored.
    `lenient` stores values JSON cannot express as their str() (instrument metadata). Every
    string passes the redaction filter: no key reaches a session file."""
    value = redact_value(value)
    try:          # plain JSON values (the usual case): the text the general path would make
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        pass
    try:
        plain = json.loads(json.dumps(value, default=_lenient if lenient else jsonable))
        return json.dumps(_finite(plain), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SessionRecordError(f"{what} is not JSON-serialisable: {exc}", path) from exc


def from_json(text: bytes | str, what: str, path: str = "") -> Any:
    """Parse a stored JSON string, or SessionFileCorrupt naming the broken item."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SessionFileCorrupt(f"{what} is not valid JSON: {exc}", path) from exc


def channel_json(group, name: str, path: str = "") -> Any:
    """A JSON text of a channel group, parsed (an attribute; format 1 kept it in a scalar
    string dataset), or SessionFileCorrupt when the group has none."""
    if name in group.attrs:
        text = group.attrs[name]
    elif name in group:
        text = group[name][()]
    else:
        raise SessionFileCorrupt(f"{group.name} has no {name}", path)
    return from_json(text, f"{group.name}/{name}", path)


def read_provenance(f, path: str = "") -> dict[str, Any]:
    """The session provenance of an open file; its backup copy when a kill broke the primary."""
    try:
        return from_json(f[PROVENANCE][()], "provenance", path)
    except (OSError, SessionFileCorrupt):
        if PROVENANCE_BACKUP not in f:
            raise
        return from_json(f[PROVENANCE_BACKUP][()], "provenance backup", path)
