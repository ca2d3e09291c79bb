"""Bad input gets a clear typed error and loses nothing: truncated or garbage files, HDF5 that
is not a session, frames without records, unwritable paths, a disk that fills mid-frame,
records that are not JSON."""

from __future__ import annotations

import errno
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_session_file import make_frame, make_record

import instruments.session_file.writer as session_file
from instruments.devices.replay import ReplayMicroscope, ReplaySourceError
from instruments.session_file.decision_record import DecisionRecord, QualityRecord
from instruments.session_file.layout import (
    NotASessionFile,
    SessionDiskFull,
    SessionFileCorrupt,
    SessionFileError,
    SessionRecordError,
    SessionWriteError,
)
from instruments.session_file.reader import SessionReader
from instruments.session_file.writer import SessionWriter


def _session(path: Path, n: int = 3) -> list[str]:
    with SessionWriter(path, {"session_id": "bad-input"}) as writer:
        frames = [make_frame(i) for i in range(n)]
        for frame in frames:
            writer.write_frame(frame, make_record(frame, "Fibres"))
    return [f.frame_id for f in frames]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_files_raise_session_file_corrupt(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "damaged.h5"
    _session(path)
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2],
               "garbage": np.random.default_rng(0).bytes(4096)}[damage]
    path.write_bytes(damaged)
    with pytest.raises(SessionFileCorrupt):
        SessionReader(path)
    with pytest.raises(SessionFileCorrupt):
        SessionWriter(path, {})           # never overwrites a damaged session
    with pytest.raises(ReplaySourceError):
        ReplayMicroscope(path)
    assert path.read_bytes() == damaged


def test_an_empty_file_is_unreadable_but_a_writer_may_start_in_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    path.touch()                          # e.g. a freshly made temp file
    with pytest.raises(SessionFileCorrupt):
        SessionReader(path)
    frame = make_frame(0)
    with SessionWriter(path, {}) as writer:
        assert writer.write_frame(frame, make_record(frame, "Tips"))
    with SessionReader(path) as reader:
        assert reader.frame_ids == [frame.frame_id]


def test_plain_hdf5_is_not_a_session(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(10)
    with pytest.raises(NotASessionFile, match="neither a micagent session nor NSID"):
        SessionReader(path)
    with pytest.raises(NotASessionFile):
        SessionWriter(path, {})        # never appends to someone else's file
    with h5py.File(path, "r") as f:
        assert list(f) == ["data"]
    with pytest.raises(ReplaySourceError, match="no NSID IMAGE"):
        ReplayMicroscope(path)


def test_nsid_file_without_records_is_named_as_such(shared_nsid_file: Path) -> None:
    with pytest.raises(NotASessionFile, match="4 NSID dataset.*no micagent session records"):
        SessionReader(shared_nsid_file)


def test_frame_without_record_is_reported_and_replay_still_serves_it(tmp_path: Path) -> None:
    path = tmp_path / "norecord.h5"
    ids = _session(path)
    with h5py.File(path, "r+") as f:
        del f["Measurement_000/Channel_000001"].attrs["record"]
    with SessionReader(path) as reader:
        assert reader.frame_ids == ids
        with pytest.raises(SessionFileCorrupt, match="Channel_000001 has no record"):
            list(reader.frames())
        assert [f.frame_id for f in reader.iter_frames()] == ids
    replay = ReplayMicroscope(path)
    assert [replay.acquire().frame_id for _ in range(3)] == ids
    replay.close()


def test_a_damaged_frame_is_an_instrument_error_for_the_replay(tmp_path: Path) -> None:
    path = tmp_path / "noimage.h5"
    ids = _session(path)
    with h5py.File(path, "r+") as f:
        del f["Measurement_000/Channel_000001/Image/Image"]
    replay = ReplayMicroscope(path)
    assert replay.acquire().frame_id == ids[0]
    with pytest.raises(ReplaySourceError, match="stored frame 1 unreadable.*no image"):
        replay.acquire()
    replay.close()


def test_unwritable_output_paths_raise_session_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for path in (tmp_path / "missing" / "dir" / "s.h5", blocker / "s.h5"):
        with pytest.raises(SessionWriteError, match="cannot create session file"):
            SessionWriter(path, {})
        assert not path.exists()


def test_disk_full_mid_frame_rolls_the_frame_back(scifi_read, tmp_path: Path,
                                                  monkeypatch) -> None:
    path = tmp_path / "full.h5"
    writer = SessionWriter(path, {"session_id": "full"})
    first = make_frame(0)
    assert writer.write_frame(first, make_record(first, "Fibres"))

    def disk_fills(self, dataset, group, main_data_name, **_):
        inner = group.create_group(main_data_name)          # half a frame, then ENOSPC
        inner.create_dataset(main_data_name, shape=dataset.shape, dtype="f4")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(session_file.NsidWriter, "write", disk_fills)
    second = make_frame(1)
    with pytest.raises(SessionDiskFull, match="disk full while writing frame"):
        writer.write_frame(second, make_record(second, "Powder"))
    assert not writer.has_frame(second.frame_id)

    with SessionReader(path) as reader:                       # readers see the good frame only
        assert reader.frame_ids == [first.frame_id]
    assert list(scifi_read(path)) == ["Channel_000"]

    monkeypatch.undo()                                        # space freed: the retry works
    assert writer.write_frame(second, make_record(second, "Powder")) is True
    writer.close()
    with SessionReader(path) as reader:
        assert reader.frame_ids == [first.frame_id, second.frame_id]


def test_ctrl_c_mid_frame_rolls_back_and_the_frame_can_be_written_again(
        tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ctrl_c.h5"
    writer = SessionWriter(path, {})
    frame = make_frame(0)

    def interrupted(self, dataset, group, main_data_name, **_):
        group.create_group(main_data_name)
        raise KeyboardInterrupt

    monkeypatch.setattr(session_file.NsidWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.write_frame(frame, make_record(frame, "Tips"))
    monkeypatch.undo()
    assert writer.write_frame(frame, make_record(frame, "Tips")) is True
    writer.close("interrupted", "ctrl-c")
    with SessionReader(path) as reader:
        assert reader.frame_ids == [frame.frame_id]
    with h5py.File(path, "r") as f:                    # nothing half-written is left
        assert list(f["Measurement_000"]) == ["Channel_000000"]
        assert "pending" not in f["micagent"]


def test_records_that_cannot_be_stored_are_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "records.h5"
    writer = SessionWriter(path, {})
    frame = make_frame(0)
    with pytest.raises(SessionRecordError, match="DecisionRecord"):
        writer.write_frame(frame, {"label": "Fibres"})           # untyped dicts are refused
    with pytest.raises(ValueError, match="blob"):               # the record is closed
        DecisionRecord(label="Fibres", blob=1)
    with pytest.raises(SessionRecordError, match="not JSON-serialisable"):
        writer.write_frame(frame, DecisionRecord(label="Fibres", point_data={"blob": object()}))
    with pytest.raises(SessionRecordError, match="frame_id"):
        writer.write_frame(frame, DecisionRecord(frame_id="someone-else", label="Fibres"))
    assert writer.frame_ids() == []
    record = make_record(frame, "Fibres").model_copy(
        update={"quality": QualityRecord(snr=float("nan"), ok=False)})
    record.prediction.confidence = np.float32(0.5)
    record.point_data = {"score": np.float32(0.5)}
    assert writer.write_frame(frame, record) is True           # numpy and NaN are fine
    with pytest.raises(ValueError):
        writer.close("exploded")
    writer.close("failed", "adjudicator crashed")
    with pytest.raises(SessionWriteError, match="closed"):
        writer.write_frame(make_frame(1), DecisionRecord())
    with SessionReader(path) as reader:
        _, stored = next(reader.frames())
        assert stored.point_data == {"score": 0.5} and stored.prediction.confidence == 0.5
        assert stored.quality.snr is None
        assert (reader.provenance["status"], reader.provenance["reason"]) == (
            "failed", "adjudicator crashed")


def test_missing_file_is_a_session_file_error(tmp_path: Path) -> None:
    with pytest.raises(SessionFileError, match="no such file"):
        SessionReader(tmp_path / "nope.h5")
