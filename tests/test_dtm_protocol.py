"""DTMicroscope's Pyro5 STEM protocol: our twin server (separate process) against a plain
Pyro5 proxy doing what DTMicroscope's notebooks do, and against DTMicroscopeClient."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import h5py
import numpy as np
import Pyro5.api
import pytest
from conftest import SHARED_NSID
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


def write_spectral_nsid(path) -> np.ndarray:
    """An NSID file with an IMAGE (Channel_000) and a SPECTRAL_IMAGE (Channel_001)."""
    import sidpy
    from pyNSID.io.hdf_io import write_nsid_dataset

    rng = np.random.default_rng(0)
    image = sidpy.Dataset.from_array(rng.random((6, 5)).astype(np.float32), title="haadf")
    image.data_type = "IMAGE"
    cube = sidpy.Dataset.from_array(rng.random((6, 5, 16)), title="eels")
    cube.data_type = "SPECTRAL_IMAGE"
    cube.set_dimension(2, sidpy.Dimension(np.linspace(100.0, 250.0, 16), name="energy",
                                          units="eV", quantity="energy loss",
                                          dimension_type="spectral"))
    with h5py.File(path, "w") as h5:
        measurement = h5.create_group("Measurement_000")
        for i, dataset in enumerate((image, cube)):
            write_nsid_dataset(dataset, measurement.create_group(f"Channel_{i:03}"),
                               main_data_name=f"Channel_{i:03}")
    return np.asarray(cube)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dtm_twin(tmp_path_factory):
    """A dtm twin server started with the real NSID sample registered (`--data`)."""
    copy = tmp_path_factory.mktemp("nsid") / "pto.h5"
    shutil.copyfile(SHARED_NSID, copy)
    with served_twin("dtm", seed=3, data=str(copy)) as served:
        yield served


@pytest.fixture
def pto_copy(tmp_path, shared_nsid_file):
    copy = tmp_path / "pto.h5"
    shutil.copyfile(shared_nsid_file, copy)
    return copy


def test_cli_server_answers_the_dtmicroscope_notebook_sequence(pto_copy, shared_nsid_file):
    with h5py.File(shared_nsid_file, "r") as h5:
        height = h5["Measurement_000/Channel_0/Channel_0/Channel_0"][()]
        amplitude = h5["Measurement_000/Channel_1/Channel_1/Channel_1"][()]
    with served_twin("dtm", via_cli=True) as served:
        mic_server = Pyro5.api.Proxy(f"PYRO:microscope.server@{served.host}:{served.port}")
        mic_server.initialize_microscope("STEM")
        assert mic_server.register_data(str(pto_copy)) is None
        info = dict(mic_server.get_dataset_info())
        array_list, shape, dtype = mic_server.get_overview_image()
        im_array = np.array(array_list, dtype=dtype).reshape(shape)
        array_list, shape, dtype = mic_server.get_point_data("Channel_001", 1, 1)
        point = np.array(array_list, dtype=dtype).reshape(shape)
        mic_server._pyroRelease()
    assert info["channel_keys"] == ["Channel_000", "Channel_001", "Channel_002", "Channel_003"]
    assert info["signals"][:2] == ["HeightRetrace", "AmplitudeRetrace"]
    assert info["scans_channel_index"] == [0, 1, 2, 3]
    assert im_array.dtype == np.float64 and np.array_equal(im_array, height)
    assert point.shape == () and point == amplitude[1, 1]


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
    for fetch in (lambda c: c.get_overview_image(), lambda c: c.get_point_data(2, 7, 9),
                  lambda c: c.get_spectrum_image("Channel_003")):
        a, b = fetch(fast), fetch(slow)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    with pytest.raises(RemoteError, match="Channel_099"):
        fast.get_point_data("Channel_099", 0, 0)


def test_spectral_image_channels_come_back_whole(dtm_twin, tmp_path):
    cube = write_spectral_nsid(tmp_path / "eels.h5")
    client = DTMicroscopeClient(dtm_twin.host, dtm_twin.port, timeout=20)
    client.initialize_microscope("STEM")
    client.register_data(str(tmp_path / "eels.h5"))
    info = dict(client.get_dataset_info())
    assert info["spectral_image_channel_index"] == [1]
    assert np.allclose(client.get_spectrum_image("Channel_001"), cube)
    assert np.allclose(client.get_point_data("Channel_001", 2, 3), cube[2, 3])
    assert np.allclose(client.get_spectrum_image_e_axis("Channel_001"),
                       np.linspace(100.0, 250.0, 16))
    # keyword calls, as DTMicroscope's active-learning notebook makes them
    mic_server = Pyro5.api.Proxy(f"PYRO:microscope.server@{dtm_twin.host}:{dtm_twin.port}")
    array_list, shape, dtype = mic_server.get_point_data(spectrum_image_index="Channel_001",
                                                         x=4, y=1)
    assert np.allclose(np.array(array_list, dtype=dtype).reshape(shape), cube[4, 1])
    array_list, shape, dtype = mic_server.get_spectrum_image_e_axis(
        spectrum_image_index="Channel_001")
    assert tuple(shape) == (16,) and dtype == "float64"
    mic_server._pyroRelease()


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
