"""The Nion bridge (instruments/devices/bridges/nion.py) in its own process and environment
(.venv-nion: Nion's simulator, numpy 2), driven by TemClient from the project's environment."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import numpy as np
import pytest
from nion_bridge import needs_nion, running_bridge, start_bridge
from raw_rpc import netstring, read_reply

from instruments.devices.errors import (
    InstrumentTimeout,
    InstrumentUnreachable,
    RemoteError,
    SafetyRefused,
)
from instruments.devices.frame import ImagingSettings, StagePosition
from instruments.devices.microscope import Microscope
from instruments.devices.tem_client import TemClient

pytestmark = [needs_nion, pytest.mark.slow]
SMALL = ImagingSettings(fov=200e-9, pixels=128, dwell=1e-6, detector="HAADF")


@pytest.fixture(scope="module")
def bridge():
    with running_bridge("--sample", "0") as served:
        yield served


def client(bridge, **kw) -> TemClient:
    return TemClient(bridge.host, bridge.port, timeout=kw.pop("timeout", 30), **kw)


def image_shift(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """(dy, dx) in pixels such that after[y, x] ~ before[y + dy, x + dx] (phase correlation)."""
    f = np.fft.fft2(before - before.mean())
    g = np.fft.fft2(after - after.mean())
    cross = f * np.conj(g)
    peak = np.fft.ifft2(cross / (np.abs(cross) + 1e-12)).real
    dy, dx = np.unravel_index(np.argmax(peak), peak.shape)
    h, w = peak.shape
    return float(dy - h if dy > h // 2 else dy), float(dx - w if dx > w // 2 else dx)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_ready_line_first_then_a_signal_closes_the_instrument_and_exits_leaving_no_files(
        signum):
    bridge = start_bridge("--sample", "1")
    try:
        assert bridge.output[0].startswith("READY tem://127.0.0.1:")
        tem = client(bridge)
        assert tem.server_info["backend"] == "usim"
        assert tem.server_info["sample"]["title"] == "Amorphous"
        tem.set_imaging(SMALL)
        tem.acquire()
        bridge.process.send_signal(signum)
        assert bridge.process.wait(timeout=20) == 0   # no hang on the kit's threads
        assert not [line for line in bridge.output if "Traceback" in line]
        assert list(bridge.temporary.iterdir()) == []  # its configuration folder is removed
    finally:
        bridge.kill()


def test_every_method_round_trips(bridge):
    tem = client(bridge)
    assert isinstance(tem, Microscope) and tem.binary
    caps = tem.capabilities()
    assert caps.detectors[0] == "HAADF" and caps.can_move_stage
    assert np.allclose(caps.stage_range, ((-5e-7, 5e-7), (-5e-7, 5e-7)))
    assert tem.get_detectors() == list(caps.detectors)
    assert tem.activate_device("MAADF") == 1
    assert tem.device_settings("HAADF", size=128, dwell_time=1e-6,
                               field_of_view=[200e-9, 200e-9], defocus=0.0) == 1
    image = tem.acquire_image("HAADF")
    assert image.shape == (128, 128) and image.dtype == np.float32
    stack = tem.acquire_image_stack("HAADF", frames=2)
    assert stack.shape == (2, 128, 128)
    assert tem.set_stage({"x": 20e-9, "y": -10e-9}, relative=False)["new_stage"][:2] == \
        pytest.approx([20e-9, -10e-9])
    assert tem.set_stage({"x": 5e-9}, relative=True)["new_stage"][0] == pytest.approx(25e-9)
    assert tem.get_stage() == pytest.approx([25e-9, -10e-9, 0, 0, 0])
    assert tem.set_beam_position(0.5, 0.25) == 1
    assert tem.get_vacuum() is None
    assert tem.get_microscope_status() == "Idle"
    assert tem._call("set_control", {"name": "C10", "value": 3e-9}) == pytest.approx(3e-9)
    assert tem._call("get_control", {"name": "C10"}) == pytest.approx(3e-9)
    controls = tem._call("get_controls")
    assert controls["EHT"] == 100e3 and controls["stage_position_m.x"] == pytest.approx(25e-9)
    for method, params in (("aberration_correction", {"order": 2}),
                           ("acquire_spectrum", {"device": "HAADF"}),
                           ("acquire_spectrum_points", {"device": "HAADF", "points": []})):
        with pytest.raises(RemoteError):
            tem._call(method, params)
    assert tem.close_server() == 1
    # the Microscope protocol on top: settings, stage, frame with its own calibration
    applied = tem.set_imaging(SMALL)
    reached = tem.move_stage(StagePosition(x=-40e-9, y=30e-9))
    frame = tem.acquire()
    assert frame.shape == (128, 128) and frame.settings == applied   # what the scope holds
    assert (applied.pixels, applied.dwell, applied.detector) == (128, 1e-6, "HAADF")
    assert frame.settings.fov == pytest.approx(200e-9)
    assert frame.settings.pixel_size == pytest.approx(200e-9 / 128)
    assert frame.settings.beam_energy == 100e3 and frame.settings.defocus == 0.0
    assert frame.stage.x == pytest.approx(reached.x) and frame.stage.y == pytest.approx(30e-9)
    meta = frame.original_metadata
    assert meta["backend"] == "usim" and meta["sample"]["index"] == 0
    assert meta["calibrations"]["x"] == {"offset": -100.0, "scale": 200 / 128, "units": "nm"}
    assert meta["transport"] == "binary" and "C10" in meta["controls"]
    status = tem.status()
    assert status.stage.x == pytest.approx(-40e-9) and status.vacuum_ok is None
    tem.close()


def test_list_client_gets_the_same_frames_as_lists(bridge):
    listed, binary = client(bridge, binary=False), client(bridge)
    assert not listed.binary
    listed.set_imaging(SMALL)
    frame = listed.acquire()
    assert frame.original_metadata["transport"] == "json"
    assert frame.image.dtype == np.float32 and frame.shape == (128, 128)
    assert binary.acquire_image("HAADF").shape == listed.acquire_image("HAADF").shape


def test_stage_move_shifts_the_image_by_the_expected_pixels(bridge):
    tem = client(bridge)
    settings = ImagingSettings(fov=200e-9, pixels=256, dwell=1e-6, detector="HAADF")
    tem.set_imaging(settings)
    tem.move_stage(StagePosition(x=0.0, y=0.0))
    before = tem.acquire().image
    tem.move_stage(StagePosition(x=40e-9, y=-20e-9))
    after = tem.acquire().image
    dy, dx = image_shift(before, after)
    pixel = settings.fov / settings.pixels
    # the specimen rides on the stage: its features move with it in the image, 40 nm
    # (51.2 px) along +x (columns) and 20 nm (25.6 px) along -y (rows)
    assert dx == pytest.approx(-40e-9 / pixel, abs=1.0)
    assert dy == pytest.approx(20e-9 / pixel, abs=1.0)


def test_bad_requests_are_typed_errors_and_the_bridge_answers_the_next(bridge):
    tem = client(bridge)
    before = tem.get_stage()
    with pytest.raises(SafetyRefused, match="outside the instrument's range"):
        tem.set_stage({"x": 2e-6}, relative=False)
    assert tem.get_stage() == before
    with pytest.raises(RemoteError, match="unknown detector 'SE'"):
        tem.acquire_image("SE")
    with pytest.raises(SafetyRefused, match="'Nonsense' is not on this server's allow-list"):
        tem._call("set_control", {"name": "Nonsense", "value": 1.0})
    with pytest.raises(RemoteError, match="unknown control 'Nonsense'"):
        tem._call("get_control", {"name": "Nonsense"})
    with pytest.raises(RemoteError, match="unknown settings"):
        tem.device_settings("HAADF", beam_energy=5e3)
    with pytest.raises(RemoteError, match="size 100 px"):
        tem.device_settings("HAADF", size=100)
    assert tem.get_detectors()


@pytest.mark.parametrize("bad", [b"8:{\"id\":1}X", b"99999999999:{}",
                                 b"x" * 20, b"[" * 200_000 + b"]" * 200_000])
def test_malformed_oversized_or_too_deep_input_gets_an_error_reply(bridge, bad):
    with socket.create_connection((bridge.host, bridge.port), timeout=10) as sock:
        sock.sendall(bad if bad[:1] != b"[" else netstring(bad))
        reply = read_reply(sock)
    assert reply["id"] is None and reply["error"]
    assert client(bridge).get_detectors()


def test_a_client_that_leaves_mid_reply_does_not_hurt_the_bridge(bridge):
    request = {"jsonrpc": "2.0", "id": 1, "method": "acquire_image",
               "params": {"device": "HAADF", "size": 1024, "dwell_time": 1e-7}}
    with socket.create_connection((bridge.host, bridge.port), timeout=20) as sock:
        sock.sendall(netstring(json.dumps(request).encode()))
        assert sock.recv(1000)              # the reply (a 1024x1024 list) has started
    tem = client(bridge)
    tem.set_imaging(SMALL)
    assert tem.acquire().shape == (128, 128)


def test_overlapping_acquisitions_are_serialised(bridge):
    settings = ImagingSettings(fov=200e-9, pixels=256, dwell=8e-6, detector="HAADF")  # ~0.6 s
    first, second = client(bridge), client(bridge)
    first.set_imaging(settings)
    second.set_imaging(settings)
    results: dict[str, object] = {}

    def run(name: str, tem: TemClient) -> None:
        try:
            results[name] = tem.acquire().shape
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in
               (("first", first), ("second", second))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {"first": (256, 256), "second": (256, 256)}
    assert time.monotonic() - started > 2 * 256 * 256 * 8e-6     # one after the other
    impatient = client(bridge, timeout=0.3)
    impatient.set_imaging(settings)
    with pytest.raises(InstrumentTimeout):
        impatient.acquire()           # waits behind nothing but its own 0.6 s frame
    assert client(bridge).get_detectors()


def test_killed_mid_acquisition_unreachable_then_restarted():
    bridge = start_bridge()
    try:
        tem = client(bridge)
        tem.set_imaging(ImagingSettings(fov=200e-9, pixels=512, dwell=2e-5, detector="HAADF"))
        threading.Timer(0.5, bridge.kill).start()
        with pytest.raises(InstrumentUnreachable):
            tem.acquire()          # a 5 s frame, killed after 0.5 s: unreachable, not timed out
        with pytest.raises(InstrumentUnreachable):
            TemClient(bridge.host, bridge.port, timeout=5)  # bridge not running
    finally:
        bridge.kill()
    again = start_bridge()
    try:
        assert client(again).get_detectors()[0] == "HAADF"
    finally:
        again.kill()


def test_hardware_backend_finds_the_instrument_through_its_plug_in():
    """The hardware path starts the plug-in package Nion Swift would load and looks the
    scan device and STEM controller up by id; here the plug-in is the simulator's own."""
    bridge = start_bridge("--backend", "hardware", "--plugin", "nionswift_plugin.usim",
                          "--scan-device", "usim_scan_device",
                          "--instrument", "usim_stem_controller", "--stage-limit", "2e-7")
    try:
        tem = client(bridge)
        assert tem.server_info["backend"] == "hardware"
        assert tem.capabilities().stage_range[0] == pytest.approx((-2e-7, 2e-7))
        tem.set_imaging(SMALL)
        assert tem.acquire().shape == (128, 128)
        assert bridge.terminate(timeout=20) == 0
    finally:
        bridge.kill()
