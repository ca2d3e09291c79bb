"""Defaults from the instrument (issue 23, point 5): with no imaging flags a session takes FOV,
pixels, dwell, detector and the envelope's ranges from what the instrument reports; the user's
`--limit`/`--envelope` ranges can only narrow the instrument's; the chosen values are printed
at the start. End to end: a plain `micagent run --instrument tem://...` on Nion's simulator
behind the bridge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_in_process import explain, micagent_in_process
from nion_bridge import needs_nion, running_bridge

from instruments.devices.instrument_defaults import ImagingError, describe, resolve
from instruments.devices.microscope import Capabilities
from instruments.session_file.reader import SessionReader

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
OPEN = {"fov": None, "pixels": None, "dwell": None, "detector": None, "defocus": 0.0}
# as the Nion bridge reports Nion's simulator (+-0.5 um of stage)
NION = Capabilities(detectors=("HAADF", "MAADF"), fov_range=(1e-9, 1e-6),
                    pixel_options=(64, 128, 256, 512), dwell_range=(1e-7, 1e-3),
                    stage_range=((-5e-7, 5e-7), (-5e-7, 5e-7)))


def test_settings_left_open_come_from_the_instrument():
    imaging, envelope = resolve(NION, OPEN, {})
    # 10 tiles across the 1 um stage; 256 px and 2 us are offered; the first detector
    assert imaging == {**OPEN, "fov": pytest.approx(1e-7), "pixels": 256, "dwell": 2e-6,
                       "detector": "HAADF"}
    assert envelope == {"stage_x": [-5e-7, 5e-7], "stage_y": [-5e-7, 5e-7],
                        "fov": [1e-9, 1e-6], "dwell": [1e-7, 1e-3]}


def test_the_built_in_settings_stay_where_the_instrument_holds_them():
    twin_like = Capabilities(pixel_options=(128, 512), fov_range=(5e-7, 1e-4),
                             stage_range=((-1e-3, 1e-3), (-1e-3, 1e-3)))
    imaging, _ = resolve(twin_like, OPEN, {})
    assert imaging["fov"] == 20e-6 and imaging["dwell"] == 2e-6
    assert imaging["pixels"] == 128                # nearest offered to 256 (ratio), smaller
    fixed = Capabilities(detectors=("overview",), pixel_options=(700,), can_move_stage=False,
                         dwell_range=(1e-5, 1e-4))
    imaging, _ = resolve(fixed, OPEN, {})
    assert imaging["pixels"] == 700 and imaging["dwell"] == 1e-5
    assert imaging["detector"] == "overview"


def test_given_settings_are_kept():
    given = {**OPEN, "fov": 2e-7, "pixels": 128, "dwell": 1e-6, "detector": "MAADF"}
    imaging, _ = resolve(NION, given, {})
    assert imaging == given


def test_the_users_ranges_only_narrow_the_instruments():
    user = {"fov": [1e-8, 1e-3], "stage_x": [-1e-7, 1e-7], "dwell": [1e-9, 1e-6],
            "max_moves": 20}
    imaging, envelope = resolve(NION, OPEN, user)
    assert envelope["fov"] == [1e-8, 1e-6]               # wider above: cut at the instrument
    assert envelope["stage_x"] == [-1e-7, 1e-7]          # narrower: kept
    assert envelope["stage_y"] == [-5e-7, 5e-7]          # not given: the instrument's
    assert envelope["dwell"] == [1e-7, 1e-6]             # wider below: cut
    assert envelope["max_moves"] == 20                   # not a range: the user's, as given
    assert imaging["dwell"] == 1e-6                      # the default, within the narrowed range
    line = describe(imaging, envelope, OPEN, user)
    assert "narrowed to the instrument's ranges: fov [1e-08, 0.001] -> [1e-08, 1e-06]" in line
    assert "from the instrument: fov, pixels, dwell, detector, envelope stage_y" in line


def test_a_range_outside_the_instruments_is_an_error():
    with pytest.raises(ImagingError, match=r"envelope fov \[2e-06, 1e-05\] has nothing in "
                                           r"common with the instrument's range"):
        resolve(NION, OPEN, {"fov": [2e-6, 1e-5]})


@needs_nion
def test_a_plain_run_on_the_nion_bridge_completes_with_no_imaging_flags(tmp_path):
    out = tmp_path / "plain.h5"
    with running_bridge() as bridge:
        done = micagent_in_process("run", "--instrument", bridge.uri, "--frames", "2",
                                   "--bank", "none", "--out", str(out), "--state-dir",
                                   str(tmp_path / "state"), "--quiet")
    assert done.exit_code == 0, explain(done)
    chosen = next(line for line in done.stdout.splitlines() if line.startswith("imaging:"))
    assert chosen.startswith("imaging: FOV 1e-07 m, 256 px, dwell 2e-06 s, detector HAADF")
    assert "envelope: FOV [1e-09, 1e-06] m" in chosen
    with SessionReader(out) as reader:
        summary = reader.summary()
        frames = list(reader.iter_frames())
        envelope = reader.provenance["envelope"]
        imaging = reader.provenance["run_config"]["imaging"]
    assert summary["status"] == "completed" and len(frames) == 2
    assert imaging["fov"] == pytest.approx(1e-7) and imaging["detector"] == "HAADF"
    assert all(f.shape == (256, 256) and f.settings.fov <= 1e-7 * (1 + 1e-9) for f in frames)
    assert envelope["fov"] == pytest.approx([1e-9, 1e-6])
    assert envelope["stage_x"] == pytest.approx([-5e-7, 5e-7])


@needs_nion
def test_an_envelope_the_instrument_cannot_meet_is_one_error_line(tmp_path):
    with running_bridge() as bridge:
        done = subprocess.run(
            [sys.executable, "-m", "workflows", "run", "--instrument", bridge.uri,
             "--frames", "1", "--bank", "none", "--out", str(tmp_path / "s.h5"),
             "--state-dir", str(tmp_path / "state"), "--quiet", "--limit", "fov=2e-6:1e-5"],
            capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nothing in common with the instrument's range" in errors[0]
