"""A writer killed with SIGKILL mid-session leaves a file that opens, holds every frame whose
write_frame returned, and resumes where it stopped."""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest
from test_session_file import make_frame, make_record

from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.session_file.decision_record import DecisionRecord, Route
from instruments.session_file.reader import SessionReader
from instruments.session_file.writer import SessionWriter


def _write_forever(path: str, conn: Connection) -> None:
    """The writer process: writes frames in a loop, sends each uuid once write_frame returned."""
    writer = SessionWriter(path, {"session_id": "killed"})
    rng = np.random.default_rng(0)
    i = 0
    while True:
        frame = Frame(rng.random((128, 128), dtype=np.float32), "twin",
                      ImagingSettings(pixels=128), StagePosition(x=i * 1e-6), sequence=i)
        writer.write_frame(frame, DecisionRecord(frame_id=frame.frame_id, label="Powder",
                                                 route=Route.CONFIDENT,
                                                 point_data={"note": "x" * 2000}))
        if i % 3 == 1:
            writer.update_provenance(progress=i)
        conn.send(frame.frame_id)
        i += 1


def _kill_after(path: Path, frames: int) -> list[str]:
    """Run the writer in a forked process (modules already imported: starts at once), SIGKILL
    it as soon as `frames` writes returned; the uuids it reported."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.get_context("fork").Process(target=_write_forever,
                                                       args=(str(path), sender), daemon=True)
    proc.start()
    sender.close()
    printed: list[str] = []
    try:
        while len(printed) < frames:
            assert receiver.poll(60), "writer process too slow or dead"
            printed.append(receiver.recv())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
    while receiver.poll(0):
        try:
            printed.append(receiver.recv())
        except EOFError:
            break
    return printed


@pytest.mark.parametrize("frames", [1, 5, 12])
def test_sigkill_mid_session_keeps_every_completed_frame(scifi_read, tmp_path: Path,
                                                         frames: int) -> None:
    path = tmp_path / "killed.h5"
    printed = _kill_after(path, frames)

    with SessionReader(path) as reader:
        stored = reader.frame_ids
        frames = [frame for frame, _ in reader.frames()]
        assert reader.provenance["status"] == "running"          # never closed
    assert stored[:len(printed)] == printed                      # order kept, nothing lost
    assert len(stored) <= len(printed) + 1                       # at most the frame in flight
    assert all(f.image.shape == (128, 128) and np.isfinite(f.image).all() for f in frames)

    assert len(scifi_read(path)) == len(stored)

    writer = SessionWriter(path, {"session_id": "killed"})
    assert writer.frame_ids() == stored
    extra = make_frame(99)
    assert writer.write_frame(extra, make_record(extra, "Tips")) is True
    writer.close("completed")
    with SessionReader(path) as reader:
        assert reader.frame_ids == stored + [extra.frame_id]
        assert reader.provenance["status"] == "completed"
        assert len(reader.provenance["resumed"]) == 1


def test_a_provenance_broken_mid_update_is_read_from_its_backup(tmp_path: Path) -> None:
    import h5py

    from instruments.session_file.layout import PROVENANCE

    path = tmp_path / "s.h5"
    writer = SessionWriter(path, {"session_id": "backup"})
    writer.update_provenance(progress=7)
    writer.close()
    with h5py.File(path, "r+") as f:  # what a kill during the in-place update can leave
        f[PROVENANCE][()] = '{"session_id": "bac'
    with SessionReader(path) as reader:
        assert reader.provenance["session_id"] == "backup"
        assert reader.provenance["progress"] == 7
    resumed = SessionWriter(path)
    assert resumed.provenance["progress"] == 7
    resumed.close()
