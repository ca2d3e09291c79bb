"""Our DTMicroscope-compatible twin server's own extensions (get_dataset_info, the acquisition
API, the binary transport) and its error replies. What both STEM servers share (the notebook
call sequence, stage-less runs) is tested on both in test_dtm_servers.py; the Microscope
contract and transport faults in test_microscope_contract.py."""

from __future__ import annotations

import numpy as np
import Pyro5.api
import pytest
from nsid_files import write_spectral_nsid
from twin_process import served_twin

from instruments.devices.dtm_client import DTMicroscopeClient
from instruments.devices.errors import RemoteError
from instruments.devices.frame import ImagingSettings, StagePosition


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


def test_client_uses_the_twins_acquisition_api_and_binary_transport(dtm_twin):
    """(The Microscope contract itself: test_microscope_contract.py.)"""
    client = DTMicroscopeClient(dtm_twin.host, dtm_twin.port, timeout=20)
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


def test_registering_a_file_that_is_not_nsid_is_a_remote_error(dtm_twin, tmp_path):
    bogus = tmp_path / "not_nsid.h5"
    bogus.write_bytes(b"this is no HDF5 file")
    client = DTMicroscopeClient(dtm_twin.host, dtm_twin.port, timeout=20)
    client.initialize_microscope("STEM")
    with pytest.raises(RemoteError, match="not a readable NSID"):
        client.register_data(str(bogus))
    with pytest.raises(RemoteError, match="no such data file"):
        client.register_data(str(tmp_path / "missing.h5"))
