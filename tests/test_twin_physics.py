"""The SEM twin's imaging physics: determinism, shot noise, defocus, drift, charging."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from instruments.devices.frame import ImagingSettings, StagePosition
from twins.microscope import TwinMicroscope
from twins.physics import PhysicsParams
from twins.specimen import Specimen

STILL = PhysicsParams(drift_settle=0.0, drift_rate=0.0, line_noise=0.0, jitter_fraction=0.0)


@pytest.fixture(scope="module")
def specimen() -> Specimen:
    return Specimen(seed=5, tile=512)


def centre_of(specimen: Specimen, label: str) -> tuple[StagePosition, float]:
    region = next(r for r in specimen.regions if r.label == label)
    return StagePosition((region.x0 + region.x1) / 2, (region.y0 + region.y1) / 2), region.z


def snap(scope: TwinMicroscope, pos: StagePosition, **settings) -> np.ndarray:
    scope.move_stage(pos)
    scope.set_imaging(ImagingSettings(**settings))
    return scope.acquire().image


def sharpness(image: np.ndarray) -> float:
    return float(ndimage.laplace(image.astype(np.float64)).var())


def test_same_seed_same_frames_different_seed_different_frames(specimen):
    pos, _ = centre_of(specimen, "Particles")
    frames = [snap(TwinMicroscope(seed=s, specimen=specimen), pos, fov=5e-6, pixels=128)
              for s in (1, 1, 2)]
    np.testing.assert_array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[0], frames[2])
    other = Specimen(seed=6, tile=512)
    assert [r.label for r in other.regions] != [r.label for r in specimen.regions]


def test_snr_grows_with_square_root_of_dwell(specimen):
    pos, z = centre_of(specimen, "Films_Coated_Surface")
    scope = TwinMicroscope(seed=0, specimen=specimen, params=STILL)

    def snr(dwell: float) -> float:
        a, b = (snap(scope, pos, fov=5e-6, pixels=128, dwell=dwell, defocus=z)
                for _ in range(2))
        return float((a.mean() + b.mean()) / 2 / ((a - b).std() / np.sqrt(2)))

    low, high = snr(1e-6), snr(10e-6)
    assert 2.5 < high / low < 4.0  # sqrt(10) = 3.16


def test_defocus_blurs_and_true_focus_is_the_region_height(specimen):
    pos, z = centre_of(specimen, "Porous_Sponge")
    scope = TwinMicroscope(seed=0, specimen=specimen, params=STILL)
    settings = dict(fov=4e-6, pixels=256, dwell=50e-6)
    focused = sharpness(snap(scope, pos, defocus=z, **settings))
    blurred = sharpness(snap(scope, pos, defocus=z + 15e-6, **settings))
    assert focused > 3 * blurred
    sweep = np.linspace(-8e-6, 8e-6, 17)
    scores = [sharpness(snap(scope, pos, defocus=d, **settings)) for d in sweep]
    assert abs(sweep[int(np.argmax(scores))] - z) <= 1.5e-6


def test_drift_moves_content_by_the_reported_offset(specimen):
    pos, z = centre_of(specimen, "Particles")
    params = PhysicsParams(drift_settle=150e-9, drift_tau=1.0, drift_rate=0.0, line_noise=0.0,
                           jitter_fraction=0.0)
    scope = TwinMicroscope(seed=0, specimen=specimen, params=params)
    settings = ImagingSettings(fov=2e-6, pixels=256, dwell=20e-6, defocus=z)
    scope.move_stage(pos)
    scope.set_imaging(settings)
    first, second = scope.acquire(), scope.acquire()
    shift, _, _ = phase_cross_correlation(first.image, second.image, upsample_factor=4)
    d1 = np.array(first.original_metadata["twin"]["drift_m"])
    d2 = np.array(second.original_metadata["twin"]["drift_m"])
    expected_px = np.linalg.norm(d2 - d1) / settings.pixel_size
    assert expected_px > 2
    assert abs(np.hypot(*shift) - expected_px) < 1.5
    still = TwinMicroscope(seed=0, specimen=specimen, params=STILL)
    still.move_stage(pos)
    still.set_imaging(settings)
    a, b = still.acquire(), still.acquire()
    shift0, _, _ = phase_cross_correlation(a.image, b.image, upsample_factor=4)
    assert np.hypot(*shift0) < 0.5


def test_insulators_charge_at_high_dose_conductors_do_not(specimen):
    scope = TwinMicroscope(seed=0, specimen=specimen, params=STILL)
    settings = ImagingSettings(fov=3e-6, pixels=128, dwell=5e-6)
    for label, charges in (("Powder", True), ("Patterned_surface", False)):
        pos, _ = centre_of(specimen, label)
        low = scope.render(pos, settings, accumulated_dose=1.0, frame_seed=1)
        high = scope.render(pos, settings, accumulated_dose=5000.0, frame_seed=1)
        if charges:
            assert high.mean() > 1.2 * low.mean()
        else:
            np.testing.assert_array_equal(high, low)


def test_se_and_bse_detectors_give_different_contrast(specimen):
    pos, z = centre_of(specimen, "Particles")
    scope = TwinMicroscope(seed=0, specimen=specimen, params=STILL)
    se = snap(scope, pos, fov=3e-6, pixels=128, dwell=20e-6, defocus=z, detector="SE")
    bse = snap(scope, pos, fov=3e-6, pixels=128, dwell=20e-6, defocus=z, detector="BSE")
    assert np.corrcoef(se.ravel(), bse.ravel())[0, 1] < 0.95
    assert bse.std() > 0 and se.std() > 0
