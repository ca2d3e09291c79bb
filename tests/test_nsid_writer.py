"""instruments.session_file.nsid_writer writes what the installed pyNSID writes: the same HDF5
objects,
attributes (names, HDF5 types, values), data and dimension-scale references, from scratch and
through NsidWriter's templates, and the pycroscopy readers read it back as the same sidpy
Dataset. A pyNSID release that changes its layout fails these tests."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from test_session_file import make_frame

from instruments.session_file import nsid_writer
from instruments.session_file.nsid_writer import Dimension, NsidDataset, NsidWriter, to_sidpy
from instruments.session_file.writer import frame_to_nsid

VOLATILE = {"timestamp", "from_array_"}     # the time of writing


def _attr(obj: h5py.HLObject, name: str) -> tuple:
    aid = obj.attrs.get_id(name)
    value = obj.attrs[name]
    if name == "DIMENSION_LIST":
        value = [[obj.file[ref].name for ref in refs] for refs in value]
    elif name == "REFERENCE_LIST":
        value = [(obj.file[ref].name, int(dim)) for ref, dim in value]
    elif name in VOLATILE:
        value = "<time>"
    elif isinstance(value, np.ndarray):
        value = (value.dtype.str, value.shape, value.tolist())
    else:
        value = (type(value).__name__, repr(value))
    tid = aid.get_type()
    cset = tid.get_cset() if isinstance(tid, h5py.h5t.TypeStringID) else None
    return aid.dtype.str, aid.shape, type(tid).__name__, cset, value


def tree(path: Path) -> dict[str, Any]:
    """Every object under the root: kind, creation properties, data digest, attributes."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: h5py.HLObject) -> None:
            attrs = {key: _attr(obj, key) for key in sorted(obj.attrs)}
            if isinstance(obj, h5py.Dataset):
                dcpl = obj.id.get_create_plist()
                data = hashlib.sha1(np.ascontiguousarray(obj[()]).tobytes()).hexdigest()
                out[name] = ("dataset", obj.dtype.str, obj.shape, obj.chunks,
                             dcpl.get_layout(), obj.fillvalue, dcpl.get_obj_track_times(),
                             data, attrs)
            else:
                gcpl = obj.id.get_create_plist()
                out[name] = ("group", gcpl.get_obj_track_times(), attrs)
        f.visititems(visit)
    return out


def write_pynsid(datasets: list[NsidDataset], path: Path) -> None:
    import dask
    from pyNSID.io.hdf_io import write_nsid_dataset

    with h5py.File(path, "w") as f, dask.config.set(scheduler="synchronous"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for i, dataset in enumerate(datasets):
            write_nsid_dataset(to_sidpy(dataset), f.create_group(f"C{i}"),
                               main_data_name="Image")


class Colour(enum.Enum):
    RED = 1


def awkward() -> NsidDataset:
    """Values outside the fast path: lists, numpy scalars, enums, lists of dicts, non-ASCII
    and duplicate (after strip) keys, None, an int too big for HDF5."""
    spec = frame_to_nsid(make_frame(3))
    spec.original_metadata = {
        "strings": ["a", "bcd"], "numbers": [1, 2.5], "ints": [1, 2], "tuple": (1, 2),
        "f32": np.float32(1.5), "f64": np.float64(2.5), "i64": np.int64(-3), "b": np.bool_(0),
        "npstr": np.str_("xy"), "colour": Colour.RED, "rows": [{"a": 1}, {"b": "x"}],
        "é": "ü", "dup ": 1, "dup": 2, "none": None, "big": 2 ** 70, 7: "seven",
        "nested": {"deeper": {"v": -0.0}}}
    return spec


def test_write_nsid_dataset_matches_pynsid(tmp_path: Path) -> None:
    datasets = [frame_to_nsid(make_frame(0)), awkward()]
    write_pynsid(datasets, tmp_path / "pynsid.h5")
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        for i, dataset in enumerate(datasets):
            nsid_writer.write_nsid_dataset(dataset, f.create_group(f"C{i}"), "Image")
    assert tree(tmp_path / "ours.h5") == tree(tmp_path / "pynsid.h5")


def test_templates_write_what_pynsid_writes(tmp_path: Path) -> None:
    """Same structure, other values (0.0 after -0.0, NaN, new dimension values, a changed
    string), a new structure, an odd dataset, and back: every copy is what pyNSID writes."""
    first = frame_to_nsid(make_frame(0))
    second = frame_to_nsid(make_frame(1))
    second.metadata["stage"]["y"] = 0.0            # -0.0 in `first`
    second.metadata["stage"]["z"] = float("nan")
    second.original_metadata["vendor"] = "other"
    third = frame_to_nsid(make_frame(2, size=32))  # another shape: another template
    fourth = frame_to_nsid(make_frame(4))
    fourth.original_metadata["extra"] = True       # another structure
    datasets = [first, second, third, awkward(), fourth, frame_to_nsid(make_frame(5))]
    write_pynsid(datasets, tmp_path / "pynsid.h5")
    writer = NsidWriter(max_templates=2)
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        for i, dataset in enumerate(datasets):
            main = writer.write(dataset, f.create_group(f"C{i}"), "Image")
            assert main.name == f"/C{i}/Image/Image"
    assert len(writer._templates) == 2
    writer.close()
    assert tree(tmp_path / "ours.h5") == tree(tmp_path / "pynsid.h5")


def test_readers_read_back_the_same_sidpy_dataset(scifi_read, tmp_path: Path) -> None:
    import sidpy

    datasets = [frame_to_nsid(make_frame(i)) for i in range(3)]
    path = tmp_path / "ours.h5"
    writer = NsidWriter()
    with h5py.File(path, "w") as f:
        measurement = f.create_group("Measurement_000")
        for i, dataset in enumerate(datasets):
            writer.write(dataset, measurement.create_group(f"Channel_{i:03}"), "Image")
    writer.close()
    back = scifi_read(path)
    assert list(back) == ["Channel_000", "Channel_001", "Channel_002"]
    for ds, spec in zip(back.values(), datasets, strict=True):
        assert isinstance(ds, sidpy.Dataset)
        assert ds.data_type == sidpy.DataType.IMAGE
        assert (ds.quantity, ds.units, ds.modality, ds.source) == (
            spec.quantity, spec.units, spec.modality, spec.source)
        np.testing.assert_array_equal(np.array(ds), spec.data)
        for axis, dim in enumerate(spec.dims):
            got = ds._axes[axis]
            assert (got.name, got.units, got.quantity) == (dim.name, dim.units,
                                                           dim.quantity)
            assert got.dimension_type == sidpy.DimensionType.SPATIAL
            np.testing.assert_array_equal(got.values, dim.values)
        assert ds.metadata["frame_id"] == spec.metadata["frame_id"]
        assert ds.metadata["stage"] == pytest.approx(spec.metadata["stage"])
        assert ds.original_metadata == spec.original_metadata
        assert ds.provenance == spec.provenance


def test_bad_dimensions_are_refused(tmp_path: Path) -> None:
    spec = frame_to_nsid(make_frame(0))
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        with pytest.raises(ValueError, match="dimensions given"):
            nsid_writer.write_nsid_dataset(dataclasses.replace(spec, dims=spec.dims[:1]), f)
        short = Dimension("y", np.arange(3.0), "m", "distance")
        with pytest.raises(ValueError, match="1-D of length"):
            NsidWriter().write(dataclasses.replace(spec, dims=[spec.dims[0], short]), f)
        assert list(f) == []


def test_the_layout_versions_are_the_installed_ones() -> None:
    """The bookkeeping attributes name the pyNSID/sidpy layout mirrored; the comparisons
    above are only meaningful when those are the versions installed."""
    import pyNSID
    import sidpy

    assert pyNSID.__version__ == nsid_writer.PYNSID_LAYOUT_VERSION
    assert sidpy.__version__ == nsid_writer.SIDPY_LAYOUT_VERSION
