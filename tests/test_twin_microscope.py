"""TwinMicroscope: the Microscope protocol, ground truth, layout, faults and typed errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from instruments.devices.errors import BadFrame, InstrumentUnreachable, SafetyRefused
from instruments.devices.frame import ImagingSettings, StagePosition
from instruments.devices.safety import GuardedMicroscope
from twins.classes import SEM_CLASSES, SUBSTRATE
from twins.faults import FaultSpec
from twins.microscope import TwinMicroscope
from twins.specimen import Specimen


@pytest.fixture(scope="module")
def specimen() -> Specimen:
    return Specimen(seed=11, tile=256)


def test_twin_counts_its_acquisitions_and_refuses_work_once_closed(specimen):
    """(The Microscope contract itself: test_microscope_contract.py.)"""
    scope = TwinMicroscope(seed=0, specimen=specimen)
    scope.set_imaging(ImagingSettings(fov=10e-6, pixels=128))
    assert scope.acquire().sequence == 1 and scope.acquire().sequence == 2
    assert scope.status().extra["acquisitions"] == 2
    scope.close()
    assert not scope.status().connected
    with pytest.raises(InstrumentUnreachable):
        scope.acquire()


def test_every_class_has_regions_separated_by_substrate(specimen):
    labels = [r.label for r in specimen.regions]
    assert set(labels) == set(SEM_CLASSES)
    first, second = specimen.regions[0], specimen.regions[1]
    gap_x = (first.x1 + second.x0) / 2
    assert specimen.label_at(gap_x, (first.y0 + first.y1) / 2) == SUBSTRATE
    assert specimen.label_at((first.x0 + first.x1) / 2, (first.y0 + first.y1) / 2) == first.label


def test_label_map_agrees_with_frame_evaluation(specimen):
    scope = TwinMicroscope(seed=0, specimen=specimen)
    region = specimen.regions[3]
    edge = StagePosition(region.x1, (region.y0 + region.y1) / 2)  # straddles the gap
    scope.move_stage(edge)
    scope.set_imaging(ImagingSettings(fov=40e-6, pixels=128))
    frame = scope.acquire()
    names = specimen.decode(specimen.label_map(edge, 40e-6, 128))
    assert frame.evaluation["label"] in set(names.ravel())
    for label, fraction in frame.evaluation["class_fractions"].items():
        assert abs((names == label).mean() - fraction) < 0.02
    assert abs((names == SUBSTRATE).mean() - frame.evaluation["substrate_fraction"]) < 0.02
    assert frame.evaluation["substrate_fraction"] > 0
    assert scope.ground_truth(edge, 40e-6)["label"] == frame.evaluation["label"]


def test_survey_centres_lie_inside_single_class_regions(specimen):
    region = specimen.regions[5]
    box = ((region.x0 - 30e-6, region.x0 + 120e-6), (region.y0 - 30e-6, region.y0 + 90e-6))
    centres = specimen.survey_centres(20e-6, region=box)
    assert len(centres) >= 6
    ys = [c.y for c in centres]
    assert ys == sorted(ys)  # row-major
    for c in centres:
        truth = specimen.evaluation(c, 20e-6)
        assert truth["label"] == region.label
        assert truth["class_fractions"][region.label] == pytest.approx(1.0)
        assert truth["substrate_fraction"] == pytest.approx(0.0, abs=1e-9)


def test_frame_faults_and_the_guard_rejecting_them(specimen):
    faults = FaultSpec.parse("nan@1,inf@2,shape@3,slow:0.05,stall@1:5,drop@2")
    scope = TwinMicroscope(seed=0, specimen=specimen, faults=faults)
    scope.set_imaging(ImagingSettings(fov=10e-6, pixels=64))
    assert np.isnan(scope.acquire().image).any()
    assert np.isposinf(scope.acquire().image).any()
    assert scope.acquire().shape != (64, 64)
    start = time.perf_counter()
    good = scope.acquire()
    assert time.perf_counter() - start >= 0.05
    assert np.isfinite(good.image).all() and good.shape == (64, 64)

    guarded = GuardedMicroscope(TwinMicroscope(seed=0, specimen=specimen, faults=faults))
    guarded.set_imaging(ImagingSettings(fov=10e-6, pixels=64))
    for _ in range(3):  # NaN, inf, wrong shape
        with pytest.raises(BadFrame):
            guarded.acquire()
    assert guarded.acquire().shape == (64, 64)


def test_stuck_stage_reports_that_it_did_not_move(specimen):
    scope = TwinMicroscope(seed=0, specimen=specimen, faults=FaultSpec.parse("stuck"))
    start = scope.status().stage
    assert scope.move_stage(StagePosition(2e-4, 2e-4)) == start
    assert scope.status().stage == start


@pytest.mark.parametrize("settings", [
    ImagingSettings(fov=1.0), ImagingSettings(dwell=-1.0), ImagingSettings(detector="EDX"),
    ImagingSettings(pixels=3), ImagingSettings(defocus=float("nan")),
])
def test_settings_outside_capabilities_are_refused_and_keep_the_old_ones(specimen, settings):
    scope = TwinMicroscope(seed=0, specimen=specimen)
    before = scope.status().settings
    with pytest.raises(SafetyRefused):
        scope.set_imaging(settings)
    assert scope.status().settings == before


def test_stage_move_off_the_specimen_is_refused(specimen):
    scope = TwinMicroscope(seed=0, specimen=specimen)
    with pytest.raises(SafetyRefused, match="outside travel"):
        scope.move_stage(StagePosition(5e-3, 0.0))
