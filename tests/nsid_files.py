"""NSID test files: one the project writes itself with pyNSID (so tests run on a clone with
no ../shared beside it), and the real file from ../shared/data where present, each with what
a reader must find in it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

SHARED_NSID = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsid" / \
    "PTO_Funakubo0001.h5"
WRITTEN_PIXEL_M = 2e-9
ENERGIES_EV = np.linspace(100.0, 250.0, 16)


@dataclass
class NsidFile:
    """A file and what it holds: Channel_000's image and pixel size, the channel of a
    spectrum image (None without one) with its cube and energy axis."""

    path: Path
    overview: np.ndarray
    pixel_m: float
    quantity: str
    units: str
    spectrum_channel: str | None = None
    cube: np.ndarray | None = None
    energies: np.ndarray | None = None


def write_spectral_nsid(path: Path, side: int = 128, more_images: int = 0) -> NsidFile:
    """An NSID file written by pyNSID: an IMAGE (Channel_000, `side` px, 2 nm pixels), a
    SPECTRAL_IMAGE of 16 energies (Channel_001) over the same pixels, then `more_images`
    further IMAGEs."""
    import sidpy
    from pyNSID.io.hdf_io import write_nsid_dataset

    rng = np.random.default_rng(0)
    image = rng.random((side, side)).astype(np.float32)
    cube = rng.random((side, side, len(ENERGIES_EV))).astype(np.float32)
    datasets = []
    channels = [("HAADF", image, "IMAGE"), ("EELS", cube, "SPECTRAL_IMAGE")]
    channels += [(f"HAADF_{i + 1}", rng.random((side, side)).astype(np.float32), "IMAGE")
                 for i in range(more_images)]
    for name, array, kind in channels:
        data = sidpy.Dataset.from_array(array, title=name)
        data.data_type, data.quantity, data.units = kind, name, "counts"
        for axis, label in enumerate("xy"):
            data.set_dimension(axis, sidpy.Dimension(np.arange(side) * WRITTEN_PIXEL_M, label,
                                                     units="m", quantity="distance",
                                                     dimension_type="spatial"))
        if kind == "SPECTRAL_IMAGE":
            data.set_dimension(2, sidpy.Dimension(ENERGIES_EV, "energy", units="eV",
                                                  quantity="energy loss",
                                                  dimension_type="spectral"))
        datasets.append((name, data))
    with h5py.File(path, "w") as f:
        group = f.create_group("Measurement_000")
        for i, (name, data) in enumerate(datasets):
            write_nsid_dataset(data, group.create_group(f"Channel_{i:03}"),
                               main_data_name=name)
    return NsidFile(path, image, WRITTEN_PIXEL_M, "HAADF", "counts", "Channel_001", cube,
                    ENERGIES_EV)


def copy_shared_nsid(folder: Path) -> NsidFile:
    """A copy of the real PTO scan (4 AFM IMAGE channels, 256 px of 1 um / 255) in `folder`;
    the caller skips where SHARED_NSID is absent."""
    copy = folder / SHARED_NSID.name
    shutil.copyfile(SHARED_NSID, copy)
    with h5py.File(SHARED_NSID, "r") as f:
        main = f["Measurement_000/Channel_0/Channel_0/Channel_0"]
        x = f["Measurement_000/Channel_0/Channel_0/x"][()]
        return NsidFile(copy, main[()], float(x[1] - x[0]), main.attrs["quantity"],
                        main.attrs["units"])
