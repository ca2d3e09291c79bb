"""The Microscope contract, one suite for every implementation: the in-process twin, the
DTMicroscope client on our twin server (acquisition API) and on DTMicroscope's own STEM
server (a registered NSID file, stage-less), the TEM client on our twin server and on the Nion
bridge (Nion's simulator in its own environment), and replay of
a session file and of a foreign NSID file. Then the faults every network client turns into
typed errors. Protocol-specific behaviour stays in test_dtm_protocol.py / test_tem_protocol.py
/ test_replay.py / test_twin_microscope.py."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import pytest
from nion_bridge import needs_nion, running_bridge
from nsid_files import write_spectral_nsid
from peers import served_dtm_stem
from test_session_file import make_frame, make_record
from twin_process import served_twin

from instruments.devices.dtm_client import DTMicroscopeClient
from instruments.devices.errors import (
    BadFrame,
    InstrumentError,
    InstrumentTimeout,
    InstrumentUnreachable,
    SafetyRefused,
)
from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.devices.frame_checks import check_image
from instruments.devices.microscope import Capabilities, Microscope
from instruments.devices.replay import ReplayMicroscope
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.devices.tem_client import TemClient
from instruments.session_file.writer import SessionWriter
from twins.microscope import TwinMicroscope

pytestmark = pytest.mark.slow

IMPLEMENTATIONS = ["twin", "dtm-twin", "dtm-dtmicroscope", "dtm-twin-registered", "tem",
                   pytest.param("tem-nion", marks=needs_nion), "replay-session",
                   "replay-nsid"]
CLIENTS: dict[str, type] = {"dtm": DTMicroscopeClient, "tem": TemClient}


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Callable[[str], object]]:
    """Servers started once per module, on first use."""
    with ExitStack() as stack:
        started: dict[str, object] = {}

        def get(name: str):
            if name not in started:
                context = (served_dtm_stem() if name == "dtmicroscope" else
                           running_bridge() if name == "nion" else served_twin(name))
                started[name] = stack.enter_context(context)
            return started[name]

        yield get


@contextmanager
def _open(name: str, servers, folder) -> Iterator[Microscope]:
    if name == "twin":
        yield TwinMicroscope(seed=0)
        return
    if name.startswith("replay-"):
        path = folder / "stored.h5"
        if name == "replay-session":
            with SessionWriter(path, {"session_id": "stored"}) as writer:
                for i in range(3):
                    frame = make_frame(i)
                    writer.write_frame(frame, make_record(frame, "Fibres"))
        else:
            write_spectral_nsid(path, more_images=1)
        yield ReplayMicroscope(path)
        return
    protocol, _, server_name = name.partition("-")
    served = servers(server_name if server_name in ("dtmicroscope", "nion") else protocol)
    client = CLIENTS[protocol](served.host, served.port, timeout=60)
    if server_name in ("dtmicroscope", "twin-registered"):
        client.initialize_microscope("STEM")
        client.register_data(str(write_spectral_nsid(folder / "eels.h5").path))
    yield client


@pytest.fixture(params=IMPLEMENTATIONS)
def microscope(request, servers, tmp_path) -> Iterator[Microscope]:
    with _open(request.param, servers, tmp_path) as scope:
        yield scope
        scope.close()


def settings_within(caps: Capabilities) -> ImagingSettings:
    """Settings every implementation can apply: the smallest frame it offers, a field of view
    and dwell inside its ranges, its first detector."""
    return ImagingSettings(fov=min(max(10e-6, caps.fov_range[0]), caps.fov_range[1]),
                           pixels=min(caps.pixel_options), detector=caps.detectors[0],
                           dwell=min(max(1e-6, caps.dwell_range[0]), caps.dwell_range[1]))


def test_it_is_a_microscope_that_reports_itself(microscope):
    assert isinstance(microscope, Microscope) and microscope.instrument_id
    status = microscope.status()
    assert status.instrument_id == microscope.instrument_id and status.connected
    caps = microscope.capabilities()
    assert isinstance(caps, Capabilities) and caps.detectors and caps.pixel_options
    assert caps.fov_range[0] <= caps.fov_range[1]


def test_frames_come_with_the_settings_that_were_applied(microscope):
    applied = microscope.set_imaging(settings_within(microscope.capabilities()))
    assert isinstance(applied, ImagingSettings)
    first, second = microscope.acquire(), microscope.acquire()
    for frame in (first, second):
        assert isinstance(frame, Frame) and frame.image.dtype == np.float32
        assert frame.shape == (applied.pixels, applied.pixels)
        check_image(frame.image, applied.pixels)          # finite, not empty, not saturated
        json.dumps(frame.metadata())                      # the session file's metadata
    assert first.settings == applied
    assert first.frame_id != second.frame_id


def test_the_stage_moves_where_it_can_and_nowhere_where_it_cannot(microscope):
    caps = microscope.capabilities()
    before = microscope.status().stage
    (x0, x1), (y0, y1) = caps.stage_range
    target = StagePosition(x=x0 + 0.3 * (x1 - x0), y=y0 + 0.6 * (y1 - y0))
    if caps.can_move_stage:
        reached = microscope.move_stage(target)
        assert (reached.x, reached.y) == pytest.approx((target.x, target.y), abs=1e-9)
        assert microscope.status().stage == reached
        assert microscope.acquire().stage == reached
    else:
        try:
            microscope.move_stage(target)
        except InstrumentError:
            pass                                          # refused, typed
        assert microscope.status().stage == before


def test_the_guard_refuses_a_move_outside_the_envelope_before_the_instrument(microscope):
    guarded = GuardedMicroscope(microscope, SafetyEnvelope(stage_x=(-1e-4, 1e-4)))
    before = microscope.status().stage
    with pytest.raises(SafetyRefused, match="stage x"):
        guarded.move_stage(StagePosition(x=5e-4, y=before.y))
    assert microscope.status().stage == before and guarded.moves == 0


def test_close_twice_then_only_typed_errors(microscope):
    microscope.close()
    microscope.close()
    try:
        microscope.acquire()
    except InstrumentError:
        pass                      # closed for good (twin, replay) or reconnects (clients)


# --- faults every network client turns into typed errors ----------------------------------
ONE_CALL: dict[str, Callable] = {"dtm": lambda c: c.status(), "tem": lambda c: c.get_stage()}


@pytest.mark.parametrize("protocol", ["dtm", "tem"])
def test_refused_connection_is_unreachable(protocol):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(InstrumentUnreachable) as caught:
        CLIENTS[protocol]("127.0.0.1", port, timeout=2)
    assert str(port) in caught.value.where


@pytest.mark.parametrize("protocol", ["dtm", "tem"])
def test_transport_faults_drop_stall_and_a_killed_server(protocol):
    """Server calls are counted from 1; a new client makes `opening` calls (its capability
    query; on tem also the imaging readback)."""
    call, opening = ONE_CALL[protocol], {"dtm": 1, "tem": 2}[protocol]
    first = opening + 1
    faults = f"drop@{first},stall@{first + 2}:30,stall@{first + 4 + opening}:30"
    with served_twin(protocol, faults=faults) as served:
        client = CLIENTS[protocol](served.host, served.port, timeout=1.0)
        with pytest.raises(InstrumentUnreachable, match="closed") as caught:
            call(client)  # the server drops the connection
        assert f"{served.port}" in caught.value.where
        call(client)      # on a new connection
        with pytest.raises(InstrumentTimeout, match="within 1.0 s"):
            call(client)  # stalls 30 s; the client gives up after its 1 s timeout
        call(client)
        patient = CLIENTS[protocol](served.host, served.port, timeout=20)
        threading.Timer(0.5, served.kill).start()
        with pytest.raises(InstrumentUnreachable):
            call(patient)  # stalls 30 s (past the 20 s timeout: no reply would be a
                           # timeout); the server process dies meanwhile: unreachable


@pytest.mark.parametrize("protocol", ["dtm", "tem"])
def test_frame_and_stage_faults_arrive_typed(protocol):
    with served_twin(protocol, faults="nan@1,shape@2,stuck") as served:
        client = CLIENTS[protocol](served.host, served.port, timeout=20)
        guarded = GuardedMicroscope(client)
        guarded.set_imaging(ImagingSettings(pixels=128))
        with pytest.raises(BadFrame, match="non-finite"):
            guarded.acquire()
        with pytest.raises(BadFrame, match="shape"):
            guarded.acquire()
        assert guarded.acquire().shape == (128, 128)
        before = client.status().stage
        assert guarded.move_stage(StagePosition(x=1e-5, y=1e-5)) == before  # stuck stage
        with pytest.raises(SafetyRefused, match="outside"):
            client.move_stage(StagePosition(x=5e-3))  # the twin's own travel limit
