"""Telling a rescan that changed the image from one that did not (same quality within noise),
and which kinds of change a rescan would make."""

from __future__ import annotations

from agent.rescan_effect import had_effect, kinds_planned, kinds_tried


def q(sharpness=0.05, snr=1.0, drift=0.0, failures=()):
    return {"sharpness": sharpness, "snr": snr, "drift_px": drift, "failures": list(failures)}


def test_a_failure_that_is_gone_or_a_measure_that_moved_is_an_effect():
    assert had_effect(q(snr=0.1, failures=["noise"]), q(snr=0.3))
    assert had_effect(q(snr=0.5, failures=["noise"]), q(snr=0.9, failures=["noise"]))
    assert had_effect(q(sharpness=0.005, failures=["blur"]),
                      q(sharpness=0.012, failures=["blur"]))
    assert had_effect(q(drift=9.0, failures=["drift"]), q(drift=7.0, failures=["drift"]))
    assert had_effect(q(), q())           # a zoom on a good frame is not a repair


def test_the_same_quality_within_noise_is_no_effect():
    # Nion's simulator: four times the dwell, the same SNR (its estimate scatters near 0)
    assert not had_effect(q(snr=0.12, failures=["noise"]), q(snr=0.08, failures=["noise"]))
    assert not had_effect(q(snr=0.0, failures=["noise"]),
                          q(snr=0.04, failures=["noise", "drift"], drift=5.0))
    assert not had_effect(q(sharpness=0.01, failures=["blur"]),
                          q(sharpness=0.011, failures=["blur"]))
    assert not had_effect(q(snr=2.0, failures=["noise"]), q(snr=2.2, failures=["noise"]))


def test_kinds_of_change():
    assert kinds_planned(["noise"], last_chance=False) == {"dwell"}
    assert kinds_planned(["blur", "drift"], last_chance=True) == {"dwell", "focus", "fov"}
    assert kinds_planned([], last_chance=False) == {"fov"}
    assert kinds_tried({"dwell": 8e-6, "focus_sweep": [[0.0, 0.1]]}) == {"dwell", "focus"}
    assert kinds_tried({"refused": "outside"}) == set()
