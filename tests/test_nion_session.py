"""The agent's full loop on Nion's simulator behind the bridge (its own process and
environment): survey and hunt in stage coordinates, the frames' own calibration in the session
file as SciFiReaders reads it, the instrument's metadata, the live-session envelope with a
recorded approval, and a bridge killed mid-session then `micagent run --resume`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_in_process import explain, micagent_in_process
from nion_bridge import needs_nion, running_bridge, start_bridge
from plumbing_model import untrained
from rich.console import Console

from agent.approval_broker import ApprovalBroker
from agent.config import RunConfig
from agent.objectives import spiral_position
from instruments.devices.frame import StagePosition
from instruments.devices.tem_client import TemClient
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from workflows.session_assembly import run_session

pytestmark = [needs_nion, pytest.mark.slow]
torch.set_num_threads(1)
FOV, PIXELS = 100e-9, 128
ENVELOPE = {"fov": [1e-9, 1e-6], "stage_x": [-5e-7, 5e-7], "stage_y": [-5e-7, 5e-7]}


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


@pytest.fixture(scope="module")
def bridge():
    with running_bridge("--sample", "2") as served:
        yield served


def config_for(tmp_path: Path, uri: str, **kw) -> RunConfig:
    kw = {"envelope": ENVELOPE, "confidence": 0.0, "max_set_size": 10, **kw}
    return RunConfig(session_id=str(uuid.uuid4()), instrument=uri, out=str(tmp_path / "s.h5"),
                     state_dir=str(tmp_path / "state"), bank="none",
                     imaging={"fov": FOV, "pixels": PIXELS, "dwell": 1e-6, "detector": None},
                     **kw)


def run(config: RunConfig, classifier, broker=None) -> dict:
    if broker is None:
        return run_session(config, Console(quiet=True), quiet=True, classifier=classifier)
    from agent.session import Session
    from workflows.session_assembly import open_parts

    session = Session(config, open_parts(config, classifier))
    try:
        return session.run(broker=broker)
    finally:
        session.close()
        session.parts.microscope.close()


def test_survey_in_stage_coordinates_with_real_calibration(tmp_path, classifier, bridge,
                                                            scifi_read):
    config = config_for(tmp_path, bridge.uri, frames=4)
    final = run(config, classifier)
    assert final["status"] == "completed" and config.imaging["detector"] == "HAADF"
    with SessionReader(config.out) as reader:
        frames = [f for f, _ in reader.frames()]
        provenance = reader.provenance
    assert len(frames) == 4
    # grid tiles of one FOV over the instrument's stage range (+-0.5 um): 10 x 10 centres
    xs = sorted({round(f.stage.x / FOV - 0.5, 6) for f in frames})
    assert all(float(x).is_integer() and -5 <= x < 5 for x in xs) and len(xs) > 1
    server = provenance["instrument"]["server"]
    assert server["backend"] == "usim" and server["sample"]["title"] == "CTS"
    for frame in frames:
        assert frame.settings.fov == pytest.approx(FOV) and frame.shape == (PIXELS, PIXELS)
        assert frame.original_metadata["backend"] == "usim"
        assert frame.original_metadata["controls"]["EHT"] == 100e3
    datasets = scifi_read(Path(config.out))
    assert len(datasets) == 4
    for dataset in datasets.values():
        x = dataset.x.values
        assert dataset.x.units == "m" and np.allclose(np.diff(x), FOV / PIXELS)
        assert dataset.original_metadata["calibrations"]["x"]["units"] == "nm"
        assert dataset.original_metadata["calibrations"]["x"]["scale"] == pytest.approx(
            FOV * 1e9 / PIXELS)
        assert dataset.original_metadata["sample"]["index"] == 2


def test_hunt_spirals_outward_from_the_stage_position_it_found(tmp_path, classifier, bridge):
    TemClient(bridge.host, bridge.port).move_stage(StagePosition(x=1e-7, y=-1e-7))
    classes = ",".join(SEM_CLASSES)
    config = config_for(tmp_path, bridge.uri, objective=f"hunt:{classes}:3", frames=5,
                        strategy="spiral")
    final = run(config, classifier)
    assert final["status"] == "completed" and final["counts"]["hits"] == 3
    with SessionReader(config.out) as reader:
        stages = [(f.stage.x, f.stage.y) for f in reader.iter_frames()]
    expected = [spiral_position(i, (1e-7, -1e-7), FOV) for i in range(3)]
    assert np.allclose(stages, [(p["x"], p["y"]) for p in expected], atol=1e-12)


def test_envelope_refusal_and_an_approved_move_outside_the_free_zone(tmp_path, classifier,
                                                                      bridge):
    """Three tiles: the first inside the free zone, the second outside it (a human approves),
    the third outside the hard stage limits (refused before the bridge sees it)."""
    positions = [{"x": -2.5e-7, "y": -2.5e-7}, {"x": 1.5e-7, "y": -2.5e-7},
                 {"x": 4.5e-7, "y": -2.5e-7}]
    envelope = {**ENVELOPE, "stage_x": [-4e-7, 4e-7],
                "free_zone": [[-3e-7, -2e-7], [-3e-7, -2e-7]]}
    config = config_for(tmp_path, bridge.uri, frames=3, approve="uncertain",
                        envelope=envelope)
    broker, seen = ApprovalBroker(), []

    def answer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for request in broker.pending():
                seen.append(request)
                decision = ({"decision": "approve", "operator": "ana", "note": "edge"}
                            if request.kind == "move" else {"decision": "approve",
                                                            "operator": "ana"})
                broker.decide(request.request_id, decision)
            time.sleep(0.05)

    threading.Thread(target=answer, daemon=True).start()
    from agent.session import Session
    from workflows.session_assembly import open_parts

    parts = open_parts(config, classifier)
    parts.survey_positions = positions
    session = Session(config, parts)
    try:
        final = session.run(broker=broker)
    finally:
        session.close()
        parts.microscope.close()
    moves = [r for r in seen if r.kind == "move"]
    assert len(moves) == 1 and moves[0].target["x"] == pytest.approx(1.5e-7)
    assert final["counts"]["refused"] == 1
    refusal = [e for e in final["events"] if e["kind"] == "refused"]
    assert "stage x=4.5e-07 outside envelope" in refusal[0]["message"]
    with SessionReader(config.out) as reader:
        frames = list(reader.frames())
    assert [f.stage.x for f, _ in frames] == pytest.approx([-2.5e-7, 1.5e-7])
    approval = frames[1][1].position.approval
    assert approval.operator == "ana" and approval.note == "edge"
    assert frames[0][1].position.approval is None


def wait_for(lines: list[str], predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(lines):
            return True
        time.sleep(0.05)
    return False


def test_bridge_killed_mid_session_then_restarted_and_resumed(tmp_path, classifier):
    checkpoint = classifier.save(tmp_path / "ckpt")
    state, out = tmp_path / "state", tmp_path / "live.h5"
    envelope = tmp_path / "envelope.json"
    envelope.write_text(json.dumps(ENVELOPE))
    micagent = [str(Path(sys.executable).with_name("micagent")), "run"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    first = start_bridge("--log")
    try:
        cmd = [*micagent, "--instrument", first.uri, "--frames", "6", "--model",
               str(checkpoint), "--bank", "none", "--out", str(out), "--state-dir",
               str(state), "--fov", str(FOV), "--pixels", str(PIXELS), "--dwell", "1e-6",
               "--envelope", str(envelope), "--confidence", "0", "--quiet"]
        session = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        acquired = lambda lines: sum(  # noqa: E731
            line.startswith("CALL acquire_frame") for line in lines) >= 3
        assert wait_for(first.output, acquired, 180), first.output
        first.kill()                                      # mid-session, mid-frame or between
        output = session.communicate(timeout=120)[0]
    finally:
        first.kill()
    assert session.returncode == 1, output
    session_id = next(line.split()[1] for line in output.splitlines()
                      if line.startswith("session "))
    with SessionReader(out) as reader:
        before = reader.summary()
    assert before["status"] == "failed" and "InstrumentUnreachable" in before["reason"]
    assert 2 <= before["frames"] < 6
    with running_bridge() as second:                        # back, on another port
        resumed = micagent_in_process("run", "--resume", session_id, "--state-dir",
                                      str(state), "--instrument", second.uri, "--quiet")
    assert resumed.exit_code == 0, explain(resumed)
    with SessionReader(out) as reader:
        after = reader.summary()
        ids = [f.frame_id for f in reader.iter_frames()]
    assert after["status"] == "completed" and after["frames"] == 6 == len(set(ids))
    assert after["frame_ids"][:before["frames"]] == before["frame_ids"]


@pytest.mark.parametrize(("sample", "failing", "kind"), [
    ("0", {"min_snr": 50.0}, "dwell"),             # a longer dwell does not raise the SNR
    ("2", {"min_sharpness": 1e9}, "focus"),        # defocus does not change the HAADF image
])
def test_rescans_that_change_nothing_are_recorded_and_not_repeated(tmp_path, classifier,
                                                                   sample, failing, kind):
    """On Nion's simulator the first rescan of a kind that changes nothing is recorded as
    having no effect, and no later frame gets a rescan of that kind again."""
    thresholds = {"min_sharpness": 0.0, "min_snr": 0.0, "max_drift_px": 1e9, **failing}
    note = {"dwell": "dwell", "focus": "focus_sweep"}[kind]
    with running_bridge("--sample", sample) as bridge:
        config = config_for(tmp_path, bridge.uri, frames=3, confidence=1.01, max_rescans=2,
                            thresholds=thresholds, budgets={"rescans": 10, "adjudications": 0})
        final = run(config, classifier)
    assert final["status"] == "completed" and kind in final["ineffective"]
    with SessionReader(config.out) as reader:
        records = reader.records()
    attempts = [a for r in records for a in r.rescans]
    tried = [a for a in attempts if note in a.adaptation]
    assert len(tried) == 1 and tried[0].effect == "none"
    assert all(note not in a.adaptation for r in records[1:] for a in r.rescans)
    events = [e for e in final["events"] if e["kind"] == "rescan_no_effect"]
    assert events and events[0]["kinds"] == [kind]
    assert final["used"]["rescans"] == len(attempts) < 6


def test_autofocus_finds_that_defocus_changes_nothing_and_stops(tmp_path, classifier, bridge):
    """On Nion's simulator defocus does not change the HAADF image: the first focus search
    stops after its first trial frames, recorded as having no effect, and no later position
    is focused again."""
    from agent.autofocus import EARLY_PROBES
    from instruments.session_file.decision_record import AUTOFOCUS

    config = config_for(tmp_path, bridge.uri, frames=3, autofocus=True, autofocus_every=1,
                        thresholds={"min_sharpness": 0.0, "min_snr": 0.0,
                                    "max_drift_px": 1e9})
    final = run(config, classifier)
    assert final["status"] == "completed" and "focus" in final["ineffective"]
    with SessionReader(config.out) as reader:
        records = reader.records()
    searches = [a for r in records for a in r.rescans if a.reason == AUTOFOCUS]
    assert len(searches) == 1 and searches[0].effect == "none"
    assert len(searches[0].adaptation["focus_search"]) == EARLY_PROBES
    assert searches[0].new_settings.defocus == searches[0].settings.defocus
    assert [e["kinds"] for e in final["events"] if e["kind"] == "autofocus_no_effect"] == [
        ["focus"]]
