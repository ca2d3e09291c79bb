"""Telling a rescan that changed the image from one that did not (same quality within noise),
and which kinds of change a rescan would make."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import gaussian

from agent.quality import snr
from agent.rescan_effect import had_effect, kinds_planned, kinds_tried

SHAPE = (128, 128)


def q(sharpness=0.05, snr=1.0, drift=0.0, failures=()):
    return {"sharpness": sharpness, "snr": snr, "drift_px": drift, "failures": list(failures)}


def test_a_failure_that_is_gone_or_a_measure_that_moved_is_an_effect():
    assert had_effect(q(snr=0.1, failures=["noise"]), q(snr=0.3), SHAPE)
    assert had_effect(q(snr=0.5, failures=["noise"]), q(snr=0.9, failures=["noise"]), SHAPE)
    assert had_effect(q(sharpness=0.005, failures=["blur"]),
                      q(sharpness=0.012, failures=["blur"]), SHAPE)
    assert had_effect(q(drift=9.0, failures=["drift"]), q(drift=7.0, failures=["drift"]), SHAPE)
    assert had_effect(q(), q(), SHAPE)           # a zoom on a good frame is not a repair


def test_the_same_quality_within_noise_is_no_effect():
    # Nion's simulator: four times the dwell, the same SNR (its estimate scatters near 0)
    assert not had_effect(q(snr=0.12, failures=["noise"]), q(snr=0.08, failures=["noise"]),
                          SHAPE)
    assert not had_effect(q(snr=0.0, failures=["noise"]),
                          q(snr=0.04, failures=["noise", "drift"], drift=5.0), SHAPE)
    assert not had_effect(q(snr=0.0, failures=["noise"]), q(snr=0.2, failures=["noise"]),
                          SHAPE)         # the two ends of the simulator's scatter at 128 px
    assert not had_effect(q(sharpness=0.01, failures=["blur"]),
                          q(sharpness=0.011, failures=["blur"]), SHAPE)
    assert not had_effect(q(snr=2.0, failures=["noise"]), q(snr=2.2, failures=["noise"]),
                          SHAPE)


def frame(rng, noise_std, pixels=128):
    signal = gaussian(np.random.default_rng(0).normal(size=(pixels, pixels)), sigma=3.0)
    return signal / signal.std() + rng.normal(scale=noise_std, size=signal.shape)


@pytest.mark.parametrize("pixels", [64, 128, 512])
def test_two_frames_of_pure_noise_are_never_an_effect(pixels):
    """The estimate's own scatter between two frames of one place (what Nion's simulator
    gives for any dwell) is not taken for a change: 0 of 300 pairs per frame size."""
    rng = np.random.default_rng(1)
    shape = (pixels, pixels)
    pairs = [(snr(rng.normal(size=shape)), snr(rng.normal(size=shape))) for _ in range(300)]
    assert not any(had_effect(q(snr=a, failures=["noise"]), q(snr=b, failures=["noise"]),
                              shape) for a, b in pairs)
    assert max(b for _, b in pairs) > 0            # the estimates do scatter


@pytest.mark.parametrize("noise_std", [2.0, 4.0])      # SNR 0.5 and 0.25 before
def test_four_times_the_dwell_on_a_noisy_frame_is_an_effect(noise_std):
    """Shot noise halves with four times the dwell: 20 of 20 such rescans count as effects."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        before, after = snr(frame(rng, noise_std)), snr(frame(rng, noise_std / 2))
        assert had_effect(q(snr=before, failures=["noise"]), q(snr=after, failures=["noise"]),
                          SHAPE)


def test_kinds_of_change():
    assert kinds_planned(["noise"], last_chance=False) == {"dwell"}
    assert kinds_planned(["blur", "drift"], last_chance=True) == {"dwell", "focus", "fov"}
    assert kinds_planned([], last_chance=False) == {"fov"}
    assert kinds_tried({"dwell": 8e-6, "focus_sweep": [[0.0, 0.1]]}) == {"dwell", "focus"}
    assert kinds_tried({"refused": "outside"}) == set()
