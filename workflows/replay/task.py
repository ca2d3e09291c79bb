"""One unit of archive replay, with no Dask in it: scan a session file (its id, frame count and
classes, read-only), and replay a range of its frames through the agent with a given model,
returning one row per frame (stored vs new decision). The range runs as a complete unattended
agent session on a replay instrument, as `micagent replay FILE` does, in a scratch folder that
is removed afterwards; the input is only ever opened with h5py in mode 'r'."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import RunConfig
from agent.session import Session
from instruments.devices.replay import ReplayMicroscope
from instruments.session_file.hdf5_probe import check_metadata_finishes
from instruments.session_file.reader import SessionReader
from workflows.replay.config import replay_run_config
from workflows.replay.decisions import replay_row
from workflows.session_assembly import open_parts


class ReplayRangeError(RuntimeError):
    """A frame range could not be replayed completely (its rows are not kept)."""


@dataclass(frozen=True)
class SessionScan:
    """What the planner needs of one input file. `key` identifies the session across inputs
    and runs (its session id; the file's path where it has none); `error` is set when the
    file cannot be replayed at all."""

    source: str
    key: str
    session_id: str | None
    frames: int
    class_names: tuple[str, ...] | None
    instrument: str
    error: str | None = None


def _instrument(provenance: dict[str, Any]) -> str:
    info = provenance.get("instrument") or {}
    return str(info.get("uri") or info.get("id") or "") if isinstance(info, dict) else str(info)


def scan_session(path: str | Path) -> SessionScan:
    """The scan of one input; every failure to read it becomes `error`, never an exception."""
    source = str(Path(path).resolve())
    try:
        check_metadata_finishes(source)          # a file that loops HDF5 fails, not the worker
        with SessionReader(source) as reader:
            prov = reader.provenance
            session_id = prov.get("session_id")
            classes = (prov.get("model") or {}).get("class_names")
            return SessionScan(
                source=source, key=str(session_id) if session_id else f"file:{source}",
                session_id=None if session_id is None else str(session_id),
                frames=len(reader), class_names=tuple(classes) if classes else None,
                instrument=_instrument(prov))
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file is a failed row
        return SessionScan(source=source, key=f"file:{source}", session_id=None, frames=0,
                           class_names=None, instrument="",
                           error=f"{type(exc).__name__}: {exc}")


def short_key(key: str) -> str:
    """A file-name-safe 12-character digest of a session key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _unclassifiable(source: str, start: int, frame_ids: list[str],
                    replayed: set[str]) -> set[str]:
    """Ids of the range's frames the replay did not record because their pixels are not all
    finite (NaN/Inf): refused frames, which fail only themselves."""
    refused = set()
    with SessionReader(source) as reader:
        for index, frame_id in enumerate(frame_ids, start):
            if frame_id not in replayed and not np.isfinite(reader.frame(index).image).all():
                refused.add(frame_id)
    return refused


BankFor = Callable[[RunConfig, Any], Any]
"""(config, classifier) -> the demonstration bank the session draws from (or None)."""


def _run_agent(config: RunConfig, source: str, start: int, stop: int, classifier: Any,
               bank_for: BankFor) -> dict[str, Any]:
    """Frames [start, stop) of `source` through the agent, with the parts `micagent replay
    FILE` opens (workflows.session_assembly.open_parts) on a replay instrument limited to the
    range."""
    parts = open_parts(config, classifier, instrument=ReplayMicroscope(source, start, stop),
                       bank_for=bank_for)
    try:
        session = Session(config, parts)
        try:
            return session.run()
        finally:
            session.close()
    finally:
        parts.microscope.close()


def replay_range(scan: SessionScan, start: int, stop: int, classifier: Any, bank_for: BankFor,
                 model_path: str, state_dir: str | Path, scratch: str | Path) -> list[dict]:
    """Rows of frames [start, stop) of a scanned session replayed through `classifier`;
    ReplayRangeError unless every frame of the range was replayed."""
    with SessionReader(scan.source) as reader:
        stored_config = reader.provenance.get("run_config") or {}
        old = reader.rows()[start:stop]
    work = Path(scratch) / f"{short_key(scan.key)}-{start}-{stop}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        config = replay_run_config(scan.source, stored_config, stop - start, model_path,
                                   state_dir, work / "replay.h5", str(uuid.uuid4()))
        final = _run_agent(config, scan.source, start, stop, classifier, bank_for)
        with SessionReader(config.out) as reader:
            new = {row.frame_id: row for row in reader.rows()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    refused = _unclassifiable(scan.source, start, [d.frame_id for d in old], set(new))
    missing = [d.frame_id for d in old if d.frame_id not in new and d.frame_id not in refused]
    # a refused frame leaves the session a frame short: it ends asking for one more
    if missing or (final.get("status") != "completed" and not refused):
        raise ReplayRangeError(f"replay of frames {start}-{stop} ended {final.get('status')} "
                               f"({final.get('reason')}); {len(missing)} of {len(old)} frames "
                               "not replayed")
    model_sha = getattr(classifier, "checkpoint_sha256", None) or ""
    return [{"session_key": scan.key, "session_id": scan.session_id, "source": scan.source,
             "task_start": start, "task_stop": stop, "frame_index": before.index,
             "instrument": scan.instrument, "model_sha256": model_sha,
             **replay_row(before, new.get(before.frame_id))} for before in old]
