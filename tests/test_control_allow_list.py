"""The envelope where the hardware is: our TEM-protocol servers (the Nion bridge on Nion's
simulator, the twin's `tem` server) refuse every control not on their allow-list and every
stage position outside their stage limit, whichever call asks; and the agent's guard reads the
instrument's beam back before each frame, so a current raised at the console refuses frames
instead of recording them."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from nion_bridge import needs_nion, running_bridge
from plumbing_model import untrained
from test_agent_resume import start
from twin_process import served_twin

from instruments.devices.control_policy import parse_allow
from instruments.devices.errors import RemoteError, SafetyRefused
from instruments.devices.frame import ImagingSettings
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope, dose_per_nm2
from instruments.devices.tem_client import TemClient
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES

pytestmark = pytest.mark.slow

# what the second fault campaign set through set_control, and got
FORBIDDEN = (("stage_position_m.x", 1e-3), ("EHT", 1e7), ("BeamCurrent", 1e-6),
             ("ConvergenceAngle", 1.0), ("C10", 1.0))


def client(served) -> TemClient:
    return TemClient(served.host, served.port, timeout=30)


def assert_refused_and_unchanged(tem: TemClient) -> None:
    before = tem._call("get_controls")
    for name, value in FORBIDDEN:
        with pytest.raises(SafetyRefused):
            tem._call("set_control", {"name": name, "value": value})
    assert tem._call("get_controls") == before
    assert tem.get_stage()[0] == before["stage_position_m.x"]


@pytest.fixture(scope="module")
def twin_tem():
    with served_twin("tem", extra=("--stage-limit", "5e-4")) as served:
        yield served


def test_the_twin_server_refuses_controls_off_its_list_and_the_stage_past_its_limit(twin_tem):
    tem = client(twin_tem)
    assert_refused_and_unchanged(tem)
    with pytest.raises(SafetyRefused, match="outside the instrument's range"):
        tem.set_stage({"x": 1e-3}, relative=False)
    assert tem._call("set_control", {"name": "C10", "value": 2e-6}) == pytest.approx(2e-6)
    assert tem._call("set_control", {"name": "stage_position_m.x", "value": 1e-4}) == \
        pytest.approx(1e-4)
    assert tem.get_stage()[0] == pytest.approx(1e-4)
    assert tem.imaging().defocus == pytest.approx(2e-6)
    info = tem.server_info
    assert "beam_current" not in info["settings"] and "beam_energy" not in info["settings"]
    assert sorted(info["controls"]["allowed"]) == ["C10", "C12.x", "C12.y"]
    held = tem.imaging().beam_current
    assert tem.device_settings("SE", beam_current=held) == 1       # no change: accepted
    with pytest.raises(SafetyRefused, match="BeamCurrent"):
        tem.device_settings("SE", beam_current=1e-6)
    assert tem.imaging().beam_current == held


def test_an_allow_list_given_replaces_the_default_and_bounds_each_control():
    with served_twin("tem", extra=("--allow-control", "BeamCurrent=0:2e-10")) as served:
        tem = client(served)
        assert tem._call("set_control", {"name": "BeamCurrent", "value": 1.5e-10}) == 1.5e-10
        assert tem.imaging().beam_current == 1.5e-10
        for name, value in (("BeamCurrent", 1e-6), ("C10", 1e-7)):
            with pytest.raises(SafetyRefused):
                tem._call("set_control", {"name": name, "value": value})
    for bad in ("=1:2", "C10=2:1", "C10=a:b", "C10=1"):
        with pytest.raises(ValueError, match="--allow-control"):
            parse_allow([bad])


@needs_nion
def test_the_nion_bridge_refuses_controls_off_its_list_and_the_stage_past_its_limit():
    with running_bridge("--sample", "0") as bridge:
        tem = client(bridge)
        assert_refused_and_unchanged(tem)
        assert tem._call("get_control", {"name": "EHT"}) == 100e3
        assert tem._call("set_control", {"name": "C10", "value": 3e-9}) == pytest.approx(3e-9)
        assert tem._call("set_control", {"name": "C12.x", "value": 1e-9}) == \
            pytest.approx(1e-9)
        assert tem._call("set_control", {"name": "stage_position_m.x", "value": 2e-7}) == \
            pytest.approx(2e-7)
        assert tem.get_stage()[0] == pytest.approx(2e-7)
        with pytest.raises(SafetyRefused, match="C10=1e-05 outside"):
            tem.device_settings("HAADF", defocus=1e-5)
        with pytest.raises(SafetyRefused, match="allow-list"):
            tem._call("set_control", {"name": "C10Control", "value": 1e-9})
        with pytest.raises(RemoteError, match="unknown control 'Nonsense'"):
            tem._call("get_control", {"name": "Nonsense"})
        assert tem.server_info["controls"]["stage_limit_m"] == pytest.approx(5e-7)


@needs_nion
def test_a_beam_current_raised_on_the_nion_bridge_refuses_the_frame_with_an_incident():
    """The operator (here: a client the bridge was told to allow) sets 1 uA; the guard reads
    the current back through `get_imaging` and refuses the frame before the scan."""
    settings = ImagingSettings(fov=200e-9, pixels=128, dwell=1e-6, detector="HAADF")
    with running_bridge("--allow-control", "C10=-5e-6:5e-6",
                        "--allow-control", "BeamCurrent=0:2e-6") as bridge:
        incidents: list[dict] = []
        guard = GuardedMicroscope(client(bridge), SafetyEnvelope(fov=(1e-9, 1e-6)),
                                  on_incident=lambda kind, message, **extra:
                                  incidents.append({"kind": kind, **extra}))
        guard.set_imaging(settings)
        assert guard.acquire().settings.beam_current == pytest.approx(200e-12)
        console = client(bridge)
        console._call("set_control", {"name": "BeamCurrent", "value": 1e-6})
        assert dose_per_nm2(guard.imaging()) > guard.envelope.max_dose_per_nm2
        with pytest.raises(SafetyRefused, match="dose"):
            guard.acquire()
        assert [(i["kind"], i["check"]) for i in incidents] == [("safety_refused",
                                                                 "readback")]
        assert guard.frames == 1


def test_micagent_run_records_no_frame_over_the_dose_limit_when_the_console_raised_the_beam(
        tmp_path):
    """The twin's console holds 1 uA: `micagent run` records no frame, exits 0, and the
    session file's incident log says why for each position."""
    torch.manual_seed(0)
    model = tmp_path / "model"
    untrained(SEM_CLASSES).save(model)
    out = tmp_path / "s.h5"
    limit = 1e4              # requested: 10 e/nm^2 at 100 pA; at 1 uA: 1e5 per frame
    with served_twin("tem", extra=("--beam-current", "1e-6")) as served:
        proc = start(["--instrument", f"tem://{served.host}:{served.port}", "--model",
                      str(model), "--bank", "none", "--frames", "2", "--out", str(out),
                      "--state-dir", str(tmp_path / "state"), "--fov", "1e-6", "--pixels",
                      "128", "--dwell", "1e-6", "--limit", f"max_dose_per_nm2={limit}",
                      "--confidence", "0", "--quiet"],
                     {**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            output, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, output
    with SessionReader(out) as reader:
        frames = [frame for frame, _ in reader.frames()]
        refusals = [i for i in reader.incidents() if i.get("kind") == "safety_refused"]
    assert frames == []
    assert len(refusals) == 2 and {i["check"] for i in refusals} == {"readback"}
    assert all(i["settings"]["beam_current"] == 1e-6 for i in refusals)
