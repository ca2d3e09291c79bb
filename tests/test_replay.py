"""replay://FILE.h5 serves stored frames in order, as if acquired, from our session files and
from NSID files written by other tools, and never changes a byte of its input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from test_session_file import make_frame, make_record

from instruments.devices.errors import InstrumentError, InstrumentUnreachable
from instruments.devices.frame import ImagingSettings, StagePosition
from instruments.devices.microscope import Microscope
from instruments.devices.replay import ReplayExhausted, ReplayMicroscope
from instruments.session_file.writer import SessionWriter


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_replay_of_a_session_serves_its_frames_in_order(tmp_path: Path) -> None:
    path = tmp_path / "session.h5"
    frames = [make_frame(i, label=label) for i, label in enumerate(["Fibres", "Powder", "Tips"])]
    with SessionWriter(path, {"session_id": "original"}) as writer:
        for frame in frames:
            writer.write_frame(frame, make_record(frame, "Fibres"))
    before = _sha256(path)

    replay = ReplayMicroscope(path)
    assert isinstance(replay, Microscope)
    assert (replay.kind, len(replay)) == ("session", 3)
    caps = replay.capabilities()
    assert caps.can_move_stage is False and caps.detectors == ("SE",) and caps.replays_stored
    assert caps.fov_range == (frames[0].settings.fov, frames[2].settings.fov)
    assert replay.status().stage == frames[0].stage

    # moves and imaging changes are recorded, not acted on: the next stored frame decides
    assert replay.move_stage(StagePosition(x=1e-3)) == frames[0].stage
    assert replay.set_imaging(ImagingSettings(fov=1e-6)) == frames[0].settings
    assert replay.requests == [{"move_stage": StagePosition(x=1e-3).as_dict()},
                               {"set_imaging": ImagingSettings(fov=1e-6).as_dict()}]

    served = [replay.acquire() for _ in frames]
    for got, original in zip(served, frames, strict=True):
        np.testing.assert_array_equal(got.image, original.image)
        assert (got.frame_id, got.sequence, got.settings, got.stage, got.timestamp) == (
            original.frame_id, original.sequence, original.settings, original.stage,
            original.timestamp)
        assert got.evaluation == original.evaluation
    with pytest.raises(ReplayExhausted, match="all 3 stored frames served"):
        replay.acquire()
    assert isinstance(ReplayExhausted("x"), InstrumentError)
    assert replay.status().extra["remaining"] == 0
    replay.rewind()
    assert replay.acquire().frame_id == frames[0].frame_id
    replay.close()
    with pytest.raises(InstrumentUnreachable):
        replay.acquire()
    assert _sha256(path) == before


def test_replay_of_a_real_nsid_file_serves_each_image_channel(scifi_read,
                                                             shared_nsid_file: Path) -> None:
    before = _sha256(shared_nsid_file)
    replay = ReplayMicroscope(shared_nsid_file)
    assert (replay.kind, len(replay)) == ("nsid", 4)
    served = [replay.acquire() for _ in range(4)]
    with pytest.raises(ReplayExhausted):
        replay.acquire()
    replay.close()
    assert _sha256(shared_nsid_file) == before              # input untouched

    assert [f.original_metadata["quantity"] for f in served] == [
        "HeightRetrace", "AmplitudeRetrace", "DeflectionRetrace", "PhaseRetrace"]
    assert all(f.image.shape == (256, 256) and f.image.dtype == np.float32 for f in served)
    assert served[0].settings.fov == pytest.approx(1e-6, rel=0.01)   # from the x axis, in m
    assert served[3].settings.fov == served[0].settings.fov          # phase axes are in 'deg'
    assert len(served[0].original_metadata["original_metadata"]) > 100

    again = ReplayMicroscope(shared_nsid_file)                       # stable frame ids
    assert again.acquire().frame_id == served[0].frame_id
    again.close()

    channels = scifi_read(shared_nsid_file)                          # same pixels as SciFiReaders
    for frame, key in zip(served, channels, strict=True):
        np.testing.assert_allclose(frame.image, np.array(channels[key]), rtol=1e-6)


def test_replay_uri_opens_a_replay_microscope(tmp_path: Path) -> None:
    from instruments.devices.uri import open_instrument

    path = tmp_path / "s.h5"
    frame = make_frame(0)
    with SessionWriter(path, {}) as writer:
        writer.write_frame(frame, make_record(frame, "Fibres"))
    instrument = open_instrument(f"replay://{path}")
    try:
        assert isinstance(instrument, ReplayMicroscope)
        assert instrument.acquire().frame_id == frame.frame_id
    finally:
        instrument.close()
