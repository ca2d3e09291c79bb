"""Spatial calibration of NSID main datasets written by other tools: field of view from the
dimension scales, signal quantity and units. Read with h5py read-only (never through a reader
that opens files r+)."""

from __future__ import annotations

from dataclasses import dataclass

import h5py

from instruments.session_file.reader import open_hdf5_readonly

_LENGTH_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6,
                 "nm": 1e-9, "pm": 1e-12, "a": 1e-10, "å": 1e-10, "ang": 1e-10,
                 "angstrom": 1e-10}


@dataclass(frozen=True)
class Calibration:
    """What a dataset says about its pixels: field of view (m, None where its axes are not
    lengths), pixels along the first axis, the signal's quantity and units."""

    fov: float | None
    pixels: int
    quantity: str
    units: str
    source: str = ""

    @property
    def pixel_size(self) -> float | None:
        return self.fov / self.pixels if self.fov is not None else None

    def as_dict(self) -> dict[str, object]:
        return {"fov_m": self.fov, "pixel_size_m": self.pixel_size, "pixels": self.pixels,
                "quantity": self.quantity, "units": self.units, "source": self.source}


def metres_per_unit(units: str) -> float | None:
    """Metres per one `units` of length; None for a unit that is not a length."""
    return _LENGTH_UNITS.get(str(units).strip().lower())


def dataset_fov(dset: h5py.Dataset) -> float | None:
    """Field of view (m) from the first dimension scale, None where its units are not a
    length (e.g. AFM phase channels whose axes carry 'deg')."""
    label = dset.dims[0].label
    if not label or label not in dset.parent:
        return None
    scale = dset.parent[label]
    factor = metres_per_unit(scale.attrs.get("units", ""))
    if factor is None or scale.ndim != 1 or scale.shape[0] < 2:
        return None
    step = abs(float(scale[1]) - float(scale[0])) * factor
    return step * dset.shape[0] if step > 0 else None


def dataset_calibration(dset: h5py.Dataset, source: str = "") -> Calibration:
    return Calibration(fov=dataset_fov(dset), pixels=int(dset.shape[0]),
                       quantity=str(dset.attrs.get("quantity", "unknown")),
                       units=str(dset.attrs.get("units", "")), source=source)


def channel_calibration(path: str, index: int = 0) -> Calibration:
    """Calibration of `Channel_{index:03}` as SciFiReaders' NSIDReader (and so DTMicroscope's
    STEM server) numbers the file's main datasets. Raises SessionFileError for a missing or
    corrupt file, IndexError for a channel it does not hold."""
    from pyNSID.io.hdf_utils import get_all_main

    with open_hdf5_readonly(path) as f:
        mains = get_all_main(f, verbose=False)
        if not 0 <= index < len(mains):
            raise IndexError(f"{path} holds {len(mains)} NSID datasets, no Channel_{index:03}")
        return dataset_calibration(mains[index], source=f"{path}#{mains[index].name}")
