"""The safety envelope is enforced below every caller, and frames are validated."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from instruments.devices.dose_ledger import DoseLedger
from instruments.devices.errors import ApprovalRequired, BadFrame, SafetyRefused
from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.devices.frame_checks import check_image
from instruments.devices.microscope import Capabilities, InstrumentStatus
from instruments.devices.safety import Approval, GuardedMicroscope, SafetyEnvelope, dose_per_nm2


class RecordingMicroscope:
    """A minimal instrument that records what reached it and returns a given image."""

    instrument_id = "recording"

    def __init__(self, image: np.ndarray | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.image = image if image is not None else np.random.default_rng(0).random((8, 8))
        self.settings = ImagingSettings(pixels=8)
        self.stage = StagePosition()
        self.console: dict[str, float] = {}   # what an operator changed at the console

    def status(self) -> InstrumentStatus:
        return InstrumentStatus(self.instrument_id, True, self.stage, self.settings)

    def capabilities(self) -> Capabilities:
        return Capabilities()

    def set_imaging(self, settings: ImagingSettings) -> ImagingSettings:
        self.calls.append(("set_imaging", settings))
        self.settings = settings
        return settings

    def imaging(self) -> ImagingSettings:
        return replace(self.settings, **self.console)

    def move_stage(self, position: StagePosition) -> StagePosition:
        self.calls.append(("move_stage", position))
        self.stage = position
        return position

    def acquire(self) -> Frame:
        self.calls.append(("acquire", None))
        return Frame(self.image, self.instrument_id, self.imaging(), self.stage)

    def close(self) -> None:
        self.calls.append(("close", None))


def test_move_outside_stage_travel_never_reaches_hardware():
    inner = RecordingMicroscope()
    guard = GuardedMicroscope(inner, SafetyEnvelope(stage_x=(-1e-4, 1e-4)))
    with pytest.raises(SafetyRefused, match="stage x"):
        guard.move_stage(StagePosition(x=2e-4))
    assert inner.calls == []


def test_non_finite_target_is_refused():
    guard = GuardedMicroscope(RecordingMicroscope())
    with pytest.raises(SafetyRefused):
        guard.move_stage(StagePosition(x=float("nan")))


def test_move_budget_is_enforced():
    inner = RecordingMicroscope()
    guard = GuardedMicroscope(inner, SafetyEnvelope(max_moves=2))
    guard.move_stage(StagePosition(x=1e-6))
    guard.move_stage(StagePosition(x=2e-6))
    with pytest.raises(SafetyRefused, match="move budget"):
        guard.move_stage(StagePosition(x=3e-6))
    assert len(inner.calls) == 2


def test_fov_dwell_and_dose_limits():
    guard = GuardedMicroscope(RecordingMicroscope(),
                              SafetyEnvelope(fov=(1e-6, 50e-6), dwell=(1e-7, 1e-5),
                                             max_dose_per_nm2=100.0))
    with pytest.raises(SafetyRefused, match="FOV"):
        guard.set_imaging(ImagingSettings(fov=100e-6))
    with pytest.raises(SafetyRefused, match="dwell"):
        guard.set_imaging(ImagingSettings(dwell=1e-3))
    dense = ImagingSettings(fov=1e-6, pixels=1024, dwell=1e-5, beam_current=1e-9)
    assert dose_per_nm2(dense) > 100.0
    with pytest.raises(SafetyRefused, match="dose"):
        guard.set_imaging(dense)


def test_free_zone_requires_a_recorded_approval_for_that_exact_target():
    inner = RecordingMicroscope()
    guard = GuardedMicroscope(inner, SafetyEnvelope(free_zone=((-1e-5, 1e-5), (-1e-5, 1e-5))))
    guard.move_stage(StagePosition(x=5e-6))
    target = StagePosition(x=5e-5)
    with pytest.raises(ApprovalRequired) as refused:
        guard.move_stage(target)
    assert refused.value.request["target"]["x"] == 5e-5
    guard.grant(Approval(target=StagePosition(x=6e-5), operator="ana"))
    with pytest.raises(ApprovalRequired):
        guard.move_stage(target)
    guard.grant(Approval(target=target, operator="ana", note="check edge"))
    assert guard.move_stage(target) == target
    assert [a.operator for a in guard.approvals_used] == ["ana"]
    with pytest.raises(ApprovalRequired):  # an approval is consumed by its move
        guard.move_stage(target)


@pytest.mark.parametrize("image, message", [
    (np.full((8, 8), np.nan), "non-finite"),
    (np.zeros((8, 8)), "empty"),
    (np.ones((8, 8, 3)), "2-D"),
    (np.r_[np.ones(50), np.zeros(14)].reshape(8, 8), "saturated"),
])
def test_bad_frames_are_typed_errors(image, message):
    with pytest.raises(BadFrame, match=message):
        check_image(image)


def test_guard_rejects_frame_of_wrong_shape():
    guard = GuardedMicroscope(RecordingMicroscope(np.random.default_rng(1).random((4, 4))))
    guard.set_imaging(ImagingSettings(pixels=8))
    with pytest.raises(BadFrame, match="shape"):
        guard.acquire()


def test_good_frame_passes_as_float32():
    guard = GuardedMicroscope(RecordingMicroscope())
    frame = guard.acquire()
    assert frame.image.dtype == np.float32 and frame.shape == (8, 8)


def test_envelope_from_the_command_line_file_limits_and_free_zone(tmp_path):
    from instruments.devices.safety import envelope_from_dict
    from workflows.cli.envelope_options import envelope_values

    path = tmp_path / "envelope.json"
    path.write_text('{"fov": [1e-9, 1e-6], "max_moves": 50, "stage_x": [-1e-6, 1e-6]}')
    values = envelope_values(str(path), ["stage_x=-5e-7:5e-7", "max_dose_per_nm2=1e5"],
                             "-2e-7:2e-7,-1e-7:1e-7")
    envelope = envelope_from_dict(values)
    assert envelope.fov == (1e-9, 1e-6) and envelope.max_moves == 50
    assert envelope.stage_x == (-5e-7, 5e-7) and envelope.max_dose_per_nm2 == 1e5
    assert envelope.free_zone == ((-2e-7, 2e-7), (-1e-7, 1e-7))
    for args, message in (((None, ["speed=1:2"], None), "unknown envelope keys"),
                          ((None, ["fov=2:1"], None), "min <= max"),
                          ((None, ["fov"], None), "KEY=MIN:MAX"),
                          ((None, [], "1:2"), "X0:X1,Y0:Y1"),
                          ((str(tmp_path / "none.json"), [], None), "none.json")):
        with pytest.raises(ValueError, match=message):
            envelope_values(*args)


def guarded(envelope: SafetyEnvelope | None = None) -> tuple[GuardedMicroscope,
                                                             RecordingMicroscope, list]:
    """A guard over a RecordingMicroscope, with the incidents it reports."""
    inner, incidents = RecordingMicroscope(), []
    guard = GuardedMicroscope(inner, envelope,
                              on_incident=lambda kind, message, **extra:
                              incidents.append({"kind": kind, "message": message, **extra}))
    return guard, inner, incidents


DOSE_LIMIT = SafetyEnvelope(max_dose_per_nm2=1.0)    # 0.2 e/nm^2 at 100 pA, 2 at 1 uA


def test_a_beam_current_raised_at_the_console_refuses_the_frame_before_the_scan():
    guard, inner, incidents = guarded(DOSE_LIMIT)
    guard.set_imaging(ImagingSettings(pixels=8))
    assert guard.acquire().settings.beam_current == 100e-12
    inner.console = {"beam_current": 1e-6}           # 1 uA, set outside the agent
    inner.calls.clear()
    with pytest.raises(SafetyRefused, match="dose .* exceeds envelope"):
        guard.acquire()
    assert inner.calls == []                          # the scan never started
    assert [(i["kind"], i["check"], i["settings"]["beam_current"]) for i in incidents] == \
        [("safety_refused", "readback", 1e-6)]


def test_a_frame_whose_own_metadata_shows_a_dose_over_the_limit_is_refused():
    guard, inner, incidents = guarded(DOSE_LIMIT)

    class ChangedDuringScan(RecordingMicroscope):
        def acquire(self) -> Frame:
            frame = super().acquire()
            return replace(frame, settings=replace(frame.settings, beam_current=1e-6))

    guard.inner = ChangedDuringScan()
    with pytest.raises(SafetyRefused, match="dose"):
        guard.acquire()
    assert [(i["kind"], i["check"]) for i in incidents] == [("safety_refused",
                                                             "frame_metadata")]
    assert guard.frames == 1 and len(guard.dose) == 1   # it was scanned: its dose counts


def test_the_dose_per_area_budget_counts_rescans_and_overlaps():
    one = dose_per_nm2(ImagingSettings(pixels=8))
    guard, inner, incidents = guarded(SafetyEnvelope(max_dose_per_nm2_total=2.5 * one))
    fov = ImagingSettings(pixels=8).fov
    guard.acquire()
    guard.acquire()                                   # a rescan of the same area: 2 doses
    guard.move_stage(StagePosition(x=fov / 2))        # half of it overlaps that area
    with pytest.raises(SafetyRefused, match="dose budget"):
        guard.acquire()
    assert incidents[-1]["check"] == "dose_budget"
    guard.move_stage(StagePosition(x=2 * fov))        # fresh specimen
    guard.acquire()
    assert guard.frames == 3


def test_the_dose_ledger_peak_is_the_most_exposed_point_under_a_footprint():
    ledger = DoseLedger()
    ledger.add(0.0, 0.0, 2.0, 1.0)
    ledger.add(1.0, 0.0, 2.0, 10.0)                  # overlaps x in [0, 1]
    ledger.add(0.0, 0.0, 2.0, 1.0)                   # merged with the first
    assert len(ledger) == 2
    assert ledger.peak(0.0, 0.0, 2.0) == 12.0
    assert ledger.peak(-0.75, 0.0, 1.0) == 2.0       # only the first reaches x < 0
    assert ledger.peak(10.0, 10.0, 1.0) == 0.0
    assert DoseLedger(ledger.snapshot()).peak(0.0, 0.0, 2.0) == 12.0


def test_counters_restored_into_a_new_guard_continue_the_move_budget():
    first, _, _ = guarded(SafetyEnvelope(max_moves=3))
    first.move_stage(StagePosition(x=1e-6))
    first.move_stage(StagePosition(x=2e-6))
    first.acquire()
    snapshot = first.counters()
    assert snapshot["moves"] == 2 and snapshot["frames"] == 1 and snapshot["exposures"]
    second, inner, _ = guarded(SafetyEnvelope(max_moves=3))      # a resumed process
    second.restore(snapshot)
    second.move_stage(StagePosition(x=3e-6))
    with pytest.raises(SafetyRefused, match="move budget of 3"):
        second.move_stage(StagePosition(x=4e-6))
    assert second.counters()["exposures"] == snapshot["exposures"]
