"""Pipelined surveys: the next tile is acquired while the current one is decided; a frame taken
ahead is used only where and how the plan asks, otherwise discarded by rule and said so."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
import torch
from plumbing_model import untrained

from agent.config import RunConfig
from agent.nodes import acquire
from agent.session import Session, SessionParts
from instruments.devices.frame import ImagingSettings
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from instruments.session_file.decision_record import DecisionRecord, Position, Timings
from instruments.session_file.reader import SessionReader
from twins.classes import SEM_CLASSES
from twins.faults import FaultSpec
from twins.microscope import TwinMicroscope

torch.set_num_threads(1)
IMAGING = {"fov": 20e-6, "pixels": 128, "dwell": 2e-6}


@pytest.fixture(scope="module")
def classifier():
    return untrained(SEM_CLASSES)


class LoggingTwin(TwinMicroscope):
    """The twin, noting when each scan starts (from whichever thread asks)."""

    def __init__(self, log: list, **kw) -> None:
        super().__init__(**kw)
        self.log = log

    def acquire(self):
        self.log.append(("scan", time.monotonic()))
        return super().acquire()


def survey(tmp_path, classifier, frames: int = 6, faults: FaultSpec | None = None,
           log: list | None = None, **config) -> tuple[Session, list[dict]]:
    twin = LoggingTwin([] if log is None else log, seed=0, faults=faults)
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i}
                 for i, p in enumerate(twin.specimen.survey_centres(20e-6)[:frames])]
    config = {"confidence": 0.0, "max_set_size": 10, **config}
    cfg = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"),
                    state_dir=str(tmp_path / "state"), frames=frames, imaging=IMAGING,
                    **config)
    parts = SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                         survey_positions=positions)
    return Session(cfg, parts), positions


def _scans_and_records(log: list) -> tuple[list[float], list[float]]:
    return ([t for kind, t in log if kind == "scan"], [t for kind, t in log if kind == "record"])


def test_the_next_tile_is_scanned_while_the_current_one_is_decided(tmp_path, classifier):
    log: list = []
    session, positions = survey(tmp_path, classifier, log=log,
                                faults=FaultSpec(slow_seconds=0.2))
    session.run(on_step=lambda node, _: node == "record" and log.append(
        ("record", time.monotonic())))
    session.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        records, outcome = reader.records(), reader.provenance["outcome"]
    assert [(r.position.x, r.position.y) for r in records] == [
        (p["x"], p["y"]) for p in positions]                       # each tile once, in order
    assert [r.sequence for r in records] == list(range(len(positions)))
    scans, recorded = _scans_and_records(log)
    assert len(scans) == len(positions)                             # no scan wasted
    assert all(scan < done for scan, done in zip(scans[1:], recorded, strict=False))
    assert all(r.timings.acquire_s >= 0.2 for r in records)        # the instrument's time
    # a frame's whole time begins with its acquisition, also one taken ahead
    assert all(r.timings.total_s >= r.timings.acquire_s for r in records)
    assert outcome["counts"].get("speculative_discarded", 0) == 0


def test_without_pipelining_a_tile_is_scanned_after_the_previous_decision(tmp_path,
                                                                         classifier):
    log: list = []
    session, _ = survey(tmp_path, classifier, frames=3, log=log, pipeline=False)
    session.run(on_step=lambda node, _: node == "record" and log.append(
        ("record", time.monotonic())))
    session.close()
    scans, recorded = _scans_and_records(log)
    assert all(scan > done for scan, done in zip(scans[1:], recorded, strict=False))


def _planned(position: dict, settings: ImagingSettings) -> DecisionRecord:
    return DecisionRecord(position=Position(x=position["x"], y=position["y"]),
                          settings=settings, timings=Timings(acquire_s=0.0, classify_s=0.0))


def test_a_frame_taken_with_other_settings_than_planned_is_discarded_and_counted(
        tmp_path, classifier):
    """The rule: a speculative frame stands only for its position and exact settings (here
    a focus found on the previous tile changed the defocus after it was taken)."""
    session, positions = survey(tmp_path, classifier, frames=2)
    ctx = session.context
    taken_with = ImagingSettings(**IMAGING)
    ctx.acquirer.prefetch((positions[1]["x"], positions[1]["y"]), taken_with)
    state = {"current": _planned(positions[1], replace(taken_with, defocus=3e-6)),
             "session_id": "s", "sequence": 1, "plan_index": 2,
             "plan": ctx.plan.fix(positions), "objective": {"kind": "survey"},
             "consecutive_errors": 0}
    update = acquire.make(ctx)(state)
    session.close()
    assert update["counts"] == {"speculative_discarded": 1}
    assert [e["kind"] for e in update["events"]] == ["speculative_discarded"]
    assert "the plan asks" in update["events"][0]["message"]
    assert update["current"].frame_id and update["current"].settings.defocus == 3e-6
    assert update["progress"] == "acquired"
    assert ctx.acquirer.leftover() is None                  # nothing else was taken ahead


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_failed_speculative_acquisition_is_that_tiles_failure_as_without_pipelining(
        tmp_path, classifier, pipeline):
    # the twin's 2nd and 3rd scans (tile 1 and its one retry) are NaN frames
    session, positions = survey(tmp_path, classifier, frames=3, pipeline=pipeline,
                                faults=FaultSpec(nan_at={2, 3}))
    session.run()
    session.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        records, outcome = reader.records(), reader.provenance["outcome"]
    assert [(r.position.x, r.position.y) for r in records] == [
        (p["x"], p["y"]) for p in positions[::2]]           # tile 1 skipped, the others kept
    assert outcome["counts"]["errors"] == 1
    assert [e["position"]["x"] for e in outcome["events"] if e["kind"] == "bad_frame"] == [
        positions[1]["x"]]
    assert outcome["counts"].get("speculative_discarded", 0) == 0


def test_a_rescan_waits_for_the_tile_in_flight_and_keeps_it_for_later(tmp_path, classifier):
    """Every frame is rescanned once (SNR threshold out of reach): the rescan uses the
    instrument only after the next tile's scan is done, and that tile is still used."""
    session, positions = survey(tmp_path, classifier, frames=3, max_rescans=1, confidence=1.01,
                                thresholds={"min_sharpness": 0.0, "min_snr": 1e9,
                                            "max_drift_px": 1e9},
                                budgets={"rescans": 3, "adjudications": 0})
    session.run()
    session.close()
    with SessionReader(tmp_path / "s.h5") as reader:
        records, outcome = reader.records(), reader.provenance["outcome"]
    assert [len(r.rescans) for r in records] == [1, 1, 1]
    assert [(r.position.x, r.position.y) for r in records] == [
        (p["x"], p["y"]) for p in positions]
    assert outcome["counts"].get("speculative_discarded", 0) == 0
