"""One suite, two servers: DTMicroscope's own STEM server (its sources from ../shared/peers,
run in their own environment) and our `micagent twin serve --protocol dtm`, each driven as
DTMicroscope's notebooks drive it, through DTMicroscopeClient, and by `micagent run
--instrument dtm://HOST:PORT?data=FILE.h5`. Every fallback the client takes for
DTMicroscope's server (no get_dataset_info, no capabilities call, no calibration on the
wire) is exercised against that server here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import Pyro5.api
import pytest
from nsid_files import SHARED_NSID, NsidFile, copy_shared_nsid, write_spectral_nsid
from peers import served_dtm_stem
from twin_process import REPO, served_twin

from instruments.devices.dtm_client import DTMicroscopeClient
from instruments.devices.errors import InstrumentError
from instruments.devices.microscope import Microscope
from instruments.session_file.reader import SessionReader

pytestmark = pytest.mark.slow

TILE_PX = 64


@pytest.fixture(scope="module", params=["dtmicroscope", "twin"])
def server(request):
    """A running STEM server: DTMicroscope's own, or our twin's (via the CLI)."""
    serve = served_dtm_stem if request.param == "dtmicroscope" else (
        lambda: served_twin("dtm", via_cli=True))
    with serve() as served:
        served.name = request.param
        yield served


@pytest.fixture(params=["written", "shared"])
def nsid(request, tmp_path) -> NsidFile:
    """A file the server may open r+ (a fresh copy): one written here by pyNSID (an image
    and a spectrum image), and the real PTO scan where ../shared holds it."""
    if request.param == "written":
        return write_spectral_nsid(tmp_path / "eels.h5")
    if not SHARED_NSID.exists():
        pytest.skip(f"shared NSID sample not found at {SHARED_NSID}")
    return copy_shared_nsid(tmp_path)


def test_the_notebook_call_sequence(server, nsid):
    """What DTMicroscope's STEM notebooks do: a plain Pyro5 proxy, STEM, register, arrays as
    (list, shape, dtype); keyword calls as in its active-learning notebook."""
    mic_server = Pyro5.api.Proxy(f"PYRO:microscope.server@{server.host}:{server.port}")
    try:
        mic_server.initialize_microscope("STEM")
        assert mic_server.register_data(str(nsid.path)) is None
        array_list, shape, dtype = mic_server.get_overview_image()
        overview = np.array(array_list, dtype=dtype).reshape(shape)
        np.testing.assert_array_equal(overview, nsid.overview)
        if nsid.spectrum_channel is not None:
            array_list, shape, dtype = mic_server.get_point_data(
                spectrum_image_index=nsid.spectrum_channel, x=4, y=1)
            np.testing.assert_allclose(np.array(array_list, dtype=dtype).reshape(shape),
                                       nsid.cube[4, 1])
            array_list, shape, dtype = mic_server.get_spectrum_image(nsid.spectrum_channel)
            np.testing.assert_allclose(np.array(array_list, dtype=dtype).reshape(shape),
                                       nsid.cube)
            array_list, shape, dtype = mic_server.get_spectrum_image_e_axis(
                spectrum_image_index=nsid.spectrum_channel)
            np.testing.assert_allclose(np.array(array_list, dtype=dtype), nsid.energies)
        else:
            array_list, shape, dtype = mic_server.get_point_data("Channel_000", 1, 2)
            assert np.array(array_list, dtype=dtype).reshape(shape) == nsid.overview[1, 2]
    finally:
        mic_server._pyroRelease()


def test_the_client_asks_what_the_server_offers(server, nsid):
    client = DTMicroscopeClient(server.host, server.port, timeout=60)
    try:
        assert isinstance(client, Microscope)
        ours = server.name == "twin"          # DTMicroscope's server has neither call
        assert client.offers("get_capabilities") == client.offers("get_dataset_info") == ours
        client.initialize_microscope("STEM")
        client.register_data(str(nsid.path))
        caps = client.capabilities()
        assert caps.has_overview and not caps.can_move_stage
        assert caps.spectrum_channel == nsid.spectrum_channel
        assert caps.has_spectra == (nsid.spectrum_channel is not None)
        assert caps.pixel_options == (nsid.overview.shape[0],)
        frame = client.acquire()
        np.testing.assert_array_equal(frame.image, nsid.overview.astype(np.float32))
        assert frame.settings.pixel_size == pytest.approx(nsid.pixel_m)
        assert frame.settings.detector == nsid.quantity
        assert (frame.original_metadata["quantity"], frame.original_metadata["units"]) == (
            nsid.quantity, nsid.units)
        assert frame.original_metadata["calibration"]["pixel_size_m"] == pytest.approx(
            nsid.pixel_m)
        with pytest.raises(InstrumentError, match="no stage"):
            client.move_stage(frame.stage)
    finally:
        client.close()


def test_a_lost_connection_comes_back_with_the_microscope_and_data_set_up_again(server,
                                                                               nsid):
    """DTMicroscope's server makes one MicroscopeServer per connection: after the client's
    connection is gone, the new one knows nothing of the registered file unless the client
    sets it up again."""
    client = DTMicroscopeClient(server.host, server.port, timeout=60)
    try:
        client.initialize_microscope("STEM")
        client.register_data(str(nsid.path))
        first = client.acquire()
        client._proxy._pyroRelease()              # the connection is lost
        assert client.status().connected
        again = client.acquire()
        np.testing.assert_array_equal(again.image, first.image)
        assert again.settings == first.settings and again.frame_id != first.frame_id
    finally:
        client.close()


@pytest.mark.parametrize("nsid", ["written"], indirect=True)
def test_micagent_run_records_tiles_with_the_files_calibration(server, nsid, tmp_path,
                                                               scifi_read, plumbing_checkpoint):
    """`micagent run` on both servers with the file written here (an image and a spectrum
    image: the point data are checked too); the real PTO scan reaches both servers through
    the same client in test_the_notebook_call_sequence and the tests above, so a CLI run per
    server and file (25 s each) would add nothing but time."""
    out = tmp_path / "session.h5"
    uri = f"dtm://{server.host}:{server.port}?data={nsid.path}"
    frames = 4
    result = subprocess.run(
        [str(Path(sys.executable).with_name("micagent")), "run", "--instrument", uri,
         "--frames", str(frames), "--model", str(plumbing_checkpoint), "--bank", "none",
         "--out", str(out), "--quiet",
         "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                               PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    noise = [line for line in (result.stdout + result.stderr).splitlines()
             if "Warning" in line or "warn(" in line]
    assert noise == []                    # sidpy's and pycroscopy's went to the session log
    with SessionReader(str(out)) as reader:
        summary = reader.summary()
        stored = list(reader.frames())
    assert summary["status"] == "completed" and summary["frames"] == frames
    for frame, record in stored:
        row, col = record.tile.row, record.tile.col
        window = nsid.overview[row * TILE_PX:(row + 1) * TILE_PX,
                               col * TILE_PX:(col + 1) * TILE_PX]
        np.testing.assert_allclose(frame.image, window, rtol=1e-6)
        assert frame.settings.pixel_size == pytest.approx(nsid.pixel_m)
        if nsid.spectrum_channel is not None:
            point = record.point_data
            centre = (row * TILE_PX + TILE_PX // 2, col * TILE_PX + TILE_PX // 2)
            assert point["channel"] == nsid.spectrum_channel
            np.testing.assert_allclose(point["values"], nsid.cube[centre], rtol=1e-6)
    datasets = scifi_read(out)          # what pycroscopy's reader finds, on a copy
    images = [d for d in datasets.values() if d.ndim == 2]
    assert len(images) == frames
    for dataset in images:
        assert (dataset.quantity, dataset.units) == (nsid.quantity, nsid.units)
        for axis in (dataset.x, dataset.y):
            assert axis.units == "m"
            assert np.diff(axis.values) == pytest.approx(nsid.pixel_m, rel=1e-6)
