"""An atomic-resolution STEM HAADF image written as NSID by pyNSID, for what DTMicroscope's own
STEM server serves (`dtm://HOST:PORT?data=FILE.h5`): a 2-D crystal built by ASE (MoS2, or
graphene), its atom columns drawn as Gaussian probes with Z^1.7 (HAADF, "Z-contrast")
intensities, with shot noise. A stand-in for the real MoS2 / graphene scans DTMicroscope's
notebooks use, which are not distributed with its sources."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

MATERIALS = ("MoS2", "graphene")


def haadf_image(material: str = "MoS2", side: int = 256, pixel_m: float = 4e-11,
                probe_m: float = 6e-11, dose: float = 200.0, seed: int = 0) -> np.ndarray:
    """(side, side) float32 counts of `material` seen down its c axis."""
    from ase.build import graphene, mx2
    if material not in MATERIALS:
        raise ValueError(f"material must be one of {MATERIALS}")
    cell = mx2("MoS2", a=3.16) if material == "MoS2" else graphene(a=2.46)
    extent_a = side * pixel_m * 1e10
    reps = int(np.ceil(extent_a / cell.cell[1][1] * 1.2)) + 2
    crystal = cell.repeat((2 * reps, 2 * reps, 1))
    xy = crystal.positions[:, :2] - crystal.positions[:, :2].mean(axis=0)
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, np.pi / 3)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    xy = xy @ rot.T + extent_a / 2                      # centred on the field of view
    z = crystal.numbers.astype(np.float64) ** 1.7
    keep = np.all((xy > -3) & (xy < extent_a + 3), axis=1)
    px = np.arange(side) * pixel_m * 1e10
    sigma = probe_m * 1e10 / 2.355
    gx = np.exp(-(px[None, :] - xy[keep, 0, None]) ** 2 / (2 * sigma ** 2))  # (atoms, side)
    gy = np.exp(-(px[None, :] - xy[keep, 1, None]) ** 2 / (2 * sigma ** 2))
    image = np.einsum("a,ay,ax->yx", z[keep], gy, gx)
    image = image / image.max() * dose + 0.05 * dose      # amorphous background
    return rng.poisson(image).astype(np.float32)


def write_stem_nsid(path: Path, material: str = "MoS2", side: int = 256,
                    pixel_m: float = 4e-11, seed: int = 0) -> np.ndarray:
    """Write the image as one NSID IMAGE channel (HAADF, counts, metres); returns it."""
    image = haadf_image(material, side, pixel_m, seed=seed)
    write_image_nsid(path, image, pixel_m, "HAADF", "counts")
    return image


def write_image_nsid(path: Path, image: np.ndarray, pixel_m: float, title: str,
                     units: str) -> None:
    """Write `image` (rows along x, as DTMicroscope indexes it) as the one NSID IMAGE channel
    (Measurement_000/Channel_000) of a new file, its axes in metres, by pyNSID."""
    import sidpy
    from pyNSID.io.hdf_io import write_nsid_dataset

    data = sidpy.Dataset.from_array(image, title=title)
    data.data_type, data.quantity, data.units = "IMAGE", "intensity", units
    for axis, label in enumerate("xy"):
        data.set_dimension(axis, sidpy.Dimension(np.arange(image.shape[axis]) * pixel_m, label,
                                                 units="m", quantity="distance",
                                                 dimension_type="spatial"))
    with h5py.File(path, "w") as f:
        write_nsid_dataset(data, f.create_group("Measurement_000").create_group("Channel_000"),
                           main_data_name=title)
