"""DTMicroscope's Pyro5 STEM protocol: our twin server (separate process) against a plain
Pyro5 proxy doing what DTMicroscope's notebooks do, and against DTMicroscopeClient."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import Pyro5.api
import pytest
from nsid_files import write_spectral_nsid
from twin_process import served_twin

from instruments.dtm_client import DTMicroscopeClient
from instruments.errors import (
    BadFrame,
    InstrumentTimeout,
    InstrumentUnreachable,
    RemoteError,
    SafetyRefused,
)
from instruments.frame import ImagingSettings, StagePosition
from instruments.microscope import Microscope
from instruments.safety import GuardedMicroscope, SafetyEnvelope


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dtm_twin(tmp_path_factory):
    """A dtm twin server started with a pyNSID-written file registered (`--data`)."""
    written = write_spectral_nsid(tmp_path_factory.mktemp("nsid") / "eels.h5")
    with served_twin("dtm", seed=3, data=str(written.path)) as served:
        served.nsid = written
        yield served


def test_get_dataset_info_describes_the_channels_like_dtmicroscopes_stem_class(dtm_twin):
    """An extension of our server (DTMicroscope's STEM class has the method, its server does
    not expose it): the (name, value) list of STEM.get_dataset_info."""
    mic_server = Pyro5.api.Proxy(f"PYRO:microscope.server@{dtm_twin.host}:{dtm_twin.port}")
    info = dict(mic_server.get_dataset_info())
    mic_server._pyroRelease()
    assert info["channel_keys"] == ["Channel_000", "Channel_001"]
    assert info["signals"] == ["HAADF", "EELS"] and info["units"] == ["counts", "counts"]
    assert info["scans_channel_index"] == [0] and info["spectral_image_channel_index"] == [1]


def test_client_drives_the_twin_over_the_acquisition_api(dtm_twin):
    client = DTMicroscopeClient(dtm_twin.host, dtm_twin.port, timeout=20)
    assert isinstance(client, Microscope)
    assert client.binary and client.acquisition and client.capabilities().can_move_stage
    applied = client.set_imaging(ImagingSettings(fov=10e-6, pixels=128, dwell=1e-6))
    reached = client.move_stage(StagePosition(x=40e-6, y=-30e-6))
    frame = client.acquire()
    assert (applied.pixels, applied.fov) == (128, 10e-6)
    assert frame.shape == (128, 128) and frame.image.dtype == np.float32
    assert frame.stage == reached and frame.settings == applied
    assert frame.instrument_id == client.instrument_id and "label" in frame.evaluation
    assert client.status().stage == reached
    client.close()


def test_binary_path_returns_what_the_tuple_path_returns(dtm_twin):
    fast = DTMicroscopeClient(dtm_twin.host, dtm_twin.port, timeout=20)
    slow = DTMicroscopeClient(dtm_twin.host, dtm_twin.port, timeout=20, binary=False)
    assert fast.binary and not slow.binary
    for fetch in (lambda c: c.get_overview_image(), lambda c: c.get_point_data(1, 7, 9),
                  lambda c: c.get_spectrum_image("Channel_001")):
        a, b = fetch(fast), fetch(slow)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    with pytest.raises(RemoteError, match="Channel_099"):
        fast.get_point_data("Channel_099", 0, 0)


def test_refused_connection_is_unreachable():
    port = free_port()
    with pytest.raises(InstrumentUnreachable) as caught:
        DTMicroscopeClient("127.0.0.1", port, timeout=2)
    assert str(port) in caught.value.where


def test_transport_faults_drop_stall_and_a_killed_server():
    """Server calls are counted from 1 (call 1: the client's capability query)."""
    with served_twin("dtm", faults="drop@2,stall@4:30,stall@7:30") as served:
        client = DTMicroscopeClient(served.host, served.port, timeout=1.0)
        with pytest.raises(InstrumentUnreachable, match="closed") as caught:
            client.status()  # call 2: the server drops the connection
        assert f"{served.port}" in caught.value.where
        assert client.status().connected  # call 3, on a new connection
        started = time.monotonic()
        with pytest.raises(InstrumentTimeout):
            client.status()  # call 4 stalls 30 s; the client gives up after its 1 s timeout
        assert time.monotonic() - started < 3.0
        assert client.status().connected  # call 5
        patient = DTMicroscopeClient(served.host, served.port, timeout=20)  # call 6
        threading.Timer(0.5, served.kill).start()
        started = time.monotonic()
        with pytest.raises(InstrumentUnreachable):
            patient.status()  # call 7 stalls and the server process dies meanwhile
        assert time.monotonic() - started < 5.0


def test_frame_and_stage_faults_arrive_typed():
    with served_twin("dtm", faults="nan@1,shape@2,stuck") as served:
        client = DTMicroscopeClient(served.host, served.port, timeout=20)
        guarded = GuardedMicroscope(client)
        guarded.set_imaging(ImagingSettings(pixels=128))
        with pytest.raises(BadFrame, match="non-finite"):
            guarded.acquire()
        with pytest.raises(BadFrame, match="shape"):
            guarded.acquire()
        assert guarded.acquire().shape == (128, 128)
        before = client.status().stage
        assert guarded.move_stage(StagePosition(x=1e-5, y=1e-5)) == before  # stuck stage
        with pytest.raises(SafetyRefused, match="outside travel"):
            client.move_stage(StagePosition(x=5e-3))  # the twin's own travel limit


def test_envelope_refuses_a_move_before_it_reaches_the_server(dtm_twin):
    client = DTMicroscopeClient(dtm_twin.host, dtm_twin.port, timeout=20)
    guarded = GuardedMicroscope(client, SafetyEnvelope(stage_x=(-1e-4, 1e-4)))
    before = client.status().stage
    with pytest.raises(SafetyRefused, match="stage x"):
        guarded.move_stage(StagePosition(x=5e-4, y=before.y))
    assert client.status().stage == before



def test_registering_a_file_that_is_not_nsid_is_a_remote_error(dtm_twin, tmp_path):
    bogus = tmp_path / "not_nsid.h5"
    bogus.write_bytes(b"this is no HDF5 file")
    client = DTMicroscopeClient(dtm_twin.host, dtm_twin.port, timeout=20)
    client.initialize_microscope("STEM")
    with pytest.raises(RemoteError, match="not a readable NSID"):
        client.register_data(str(bogus))
    with pytest.raises(RemoteError, match="no such data file"):
        client.register_data(str(tmp_path / "missing.h5"))
