"""The Python children we start run our code wherever they are started: a twin server (both
protocols) and the Nion bridge, started in a working directory whose `instruments/`, `twins/`
... packages would end any plain `python -m` child at import, start, announce themselves and
serve frames. (The HDF5 probe's own case is in test_hdf5_probe.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
from nion_bridge import needs_nion, running_bridge
from shadowing import shadowing_folder
from twin_process import served_twin

from instruments.devices.dtm_client import DTMicroscopeClient
from instruments.devices.frame import ImagingSettings
from instruments.devices.tem_client import TemClient


def small(microscope, fov: float) -> ImagingSettings:
    return ImagingSettings(fov=fov, pixels=64, dwell=1e-6,
                           detector=microscope.capabilities().detectors[0])


def test_the_shadowing_folder_does_shadow_a_plain_python_m_child(tmp_path):
    """The premise: without isolation, the working directory's package wins."""
    plain = subprocess.run([sys.executable, "-m", "twins.serve", "--help"],
                           cwd=shadowing_folder(tmp_path), capture_output=True, text=True)
    assert plain.returncode == 3 and "shadowed: the twins/" in plain.stderr


@pytest.mark.parametrize("protocol", ["tem", "dtm"])
def test_a_twin_server_started_in_a_shadowing_folder_serves_our_twin(tmp_path, protocol):
    with served_twin(protocol, cwd=shadowing_folder(tmp_path)) as served:
        client = TemClient if protocol == "tem" else DTMicroscopeClient
        microscope = client(served.host, served.port, timeout=30)
        try:
            microscope.set_imaging(small(microscope, fov=10e-6))
            assert microscope.acquire().shape == (64, 64)
        finally:
            microscope.close()


@needs_nion
def test_the_nion_bridge_started_in_a_shadowing_folder_serves_the_simulator(tmp_path):
    with running_bridge(cwd=shadowing_folder(tmp_path)) as bridge:
        tem = TemClient(bridge.host, bridge.port, timeout=30)
        try:
            assert tem.server_info["backend"] == "usim"
            tem.set_imaging(small(tem, fov=200e-9))
            assert tem.acquire().shape == (64, 64)
        finally:
            tem.close()
