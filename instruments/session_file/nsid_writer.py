"""Write one sidpy-style dataset (e.g. an IMAGE) into an h5py group in pyNSID's exact layout.

pyNSID's `write_nsid_dataset` costs about 10 ms per dataset (a sidpy Dataset built on dask, a
dask `to_hdf5` that reopens the file by name, sidpy validation, a DNS lookup for `machine_id`,
~60 attribute writes through h5py's high-level API). This module mirrors its layout by hand,
for speed, with h5py's low-level API: what pyNSID 0.0.7.2 (with sidpy 0.12.9) writes for
`write_nsid_dataset(dataset, h5_group, main_data_name)`, object for object and attribute for
attribute (names, values, HDF5 types)::

    <h5_group>/<name>/                      machine_id, platform, pyNSID_version,
                                            sidpy_version, timestamp
        <name>       main dataset           quantity, units, main_data_name (the title),
                                            data_type, modality, source + the 5 above;
                                            dims attached as HDF5 dimension scales
                                            (DIMENSION_LIST, DIMENSION_LABELS)
        x, y, ...    1-D dimension datasets name, units, quantity, dimension_type
                                            (+ CLASS, NAME, REFERENCE_LIST of H5DS)
        metadata/, original_metadata/, provenance/
                     non-empty dicts as groups: nested dicts are subgroups, other values
                     attributes (sidpy.hdf.hdf_utils.write_simple_attrs rules: None skipped,
                     enums by name, lists of strings as fixed-length bytes, lists holding
                     dicts as {"0": ..., "1": ...}, keys stripped)

so `SciFiReaders.NSIDReader` and `pyNSID.io.hdf_utils.read_h5py_dataset` read it back as the
same sidpy Dataset (dims, units, quantity, data_type, modality, source, metadata,
original_metadata, provenance). Not mirrored: sidpy `structures` (crystal structures; session
frames have none). pyNSID_version and sidpy_version name the layout written: the versions
this module was checked against. tests/test_nsid_writer.py writes the same datasets with the
installed pyNSID and with this module and compares the two HDF5 trees.

Even by hand, ~60 HDF5 attribute and group creations cost ~1.5 ms, so `NsidWriter` (one per
output file) keeps, in an in-memory HDF5 file, a template of each dataset structure it has
written (same shape, dims, names and attribute types; no image data) and writes each dataset
as one H5Ocopy of its template, the image data, and only the attribute and dimension values
that differ from the template's, then attaches the dimension scales. The result is the same
objects and attributes as writing from scratch. Datasets with values outside str/float/int/
bool (lists, numpy scalars, non-ASCII names...) are written from scratch, values through h5py's
`attrs[...] = value` exactly as sidpy does.
"""

from __future__ import annotations

import functools
import itertools
import math
import platform as _platform
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5ds, h5g, h5o, h5p, h5s, h5t

PYNSID_LAYOUT_VERSION = "0.0.7.2"
SIDPY_LAYOUT_VERSION = "0.12.9"

_METADATA_GROUPS = ("metadata", "original_metadata", "provenance")   # dir() order, as pyNSID

_STR = h5py.string_dtype("utf-8")
_SCALAR = h5s.create(h5s.SCALAR)
_GCPL = h5p.create(h5p.GROUP_CREATE)
_GCPL.set_obj_track_times(False)          # as h5py's create_group / create_dataset
_DCPL = h5p.create(h5p.DATASET_CREATE)
_DCPL.set_obj_track_times(False)
_COPY = h5p.create(h5p.OBJECT_COPY)


def _types(dtype: Any) -> tuple[np.dtype, h5t.TypeID, h5t.TypeID]:
    """(numpy dtype, file type, memory type) as h5py's AttributeManager.create makes them."""
    dt = np.dtype(dtype)
    return dt, h5t.py_create(dt, logical=True), h5t.py_create(dt)


# Python types whose attribute h5py stores as a scalar of one fixed HDF5 type (and which
# sidpy's clean_string_att passes through unchanged). Not np.str_: sidpy splits it into bytes.
_FAST: dict[type, tuple[np.dtype, h5t.TypeID, h5t.TypeID]] = {
    str: _types(_STR), float: _types(np.float64), np.float64: _types(np.float64),
    int: _types(np.int64), np.int64: _types(np.int64), bool: _types(np.bool_),
    np.bool_: _types(np.bool_)}


def _fast_value(value: Any) -> bool:
    """True when `value` is stored as a scalar of one fixed HDF5 type (see _FAST)."""
    return type(value) in _FAST and (type(value) is not int or -(2 ** 63) <= value < 2 ** 63)


def _create_fast_attr(oid: Any, raw_name: bytes, value: Any) -> None:
    """A new scalar attribute for a `_fast_value`, with the HDF5 type h5py would choose."""
    dtype, file_type, mem_type = _FAST[type(value)]
    h5a.create(oid, raw_name, file_type, _SCALAR).write(np.array(value, dtype=dtype),
                                                        mtype=mem_type)


@dataclass(frozen=True)
class Dimension:
    """One axis: 1-D values and their name/units/quantity (sidpy.Dimension's attributes)."""

    name: str
    values: np.ndarray
    units: str = "generic"
    quantity: str = "generic"
    dimension_type: str = "SPATIAL"      # a sidpy.DimensionType name


@dataclass
class NsidDataset:
    """What pyNSID reads from a sidpy.Dataset, without the sidpy/dask object around it."""

    data: np.ndarray
    dims: Sequence[Dimension]
    title: str = "generic"
    quantity: str = "generic"
    units: str = "generic"
    data_type: str = "IMAGE"             # a sidpy.DataType name
    modality: str = "generic"
    source: str = "generic"
    metadata: dict[str, Any] = field(default_factory=dict)
    original_metadata: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.data))


def to_sidpy(dataset: NsidDataset) -> Any:
    """The sidpy.Dataset that pyNSID's write_nsid_dataset writes as `dataset` (for pyNSID
    itself: comparisons, the benchmark's pyNSID row)."""
    import copy

    import sidpy

    ds = sidpy.Dataset.from_array(np.asarray(dataset.data), title=dataset.title)
    ds.data_type = dataset.data_type
    ds.quantity, ds.units = dataset.quantity, dataset.units
    ds.modality, ds.source = dataset.modality, dataset.source
    for axis, dim in enumerate(dataset.dims):
        ds.set_dimension(axis, sidpy.Dimension(np.asarray(dim.values), name=dim.name,
                                               units=dim.units, quantity=dim.quantity,
                                               dimension_type=dim.dimension_type.lower()))
    ds.metadata = copy.deepcopy(dataset.metadata)
    ds.original_metadata = copy.deepcopy(dataset.original_metadata)
    ds.provenance = copy.deepcopy(dataset.provenance)
    return ds


@functools.cache
def _host() -> tuple[str, str]:
    """(machine_id, platform) as sidpy's write_book_keeping_attrs writes them; looked up once
    per process (getfqdn may ask DNS)."""
    return socket.getfqdn(), _platform.platform()


def book_keeping_attrs() -> dict[str, str]:
    """sidpy's write_book_keeping_attrs + pyNSID's pyNSID_version, as of now."""
    machine_id, plat = _host()
    return {"machine_id": machine_id, "timestamp": time.strftime("%Y_%m_%d-%H_%M_%S"),
            "platform": plat, "sidpy_version": SIDPY_LAYOUT_VERSION,
            "pyNSID_version": PYNSID_LAYOUT_VERSION}


def main_data_name_for(dataset: NsidDataset, main_data_name: str = "") -> str:
    """The group/dataset name pyNSID uses: main_data_name, else the title's last part, else
    'nDim_Data'; stripped, '-' replaced by '_'."""
    if main_data_name == "":
        title = dataset.title.strip()
        main_data_name = dataset.title.split("/")[-1] if title else "nDim_Data"
    return main_data_name.strip().replace("-", "_")


def _ascii(name: str) -> bytes | None:
    """`name` as h5py passes it to HDF5 when it is a plain ASCII link/attribute name."""
    if name and name.isascii() and "/" not in name and name != ".":
        return name.encode("ascii")
    return None


def _same(a: Any, b: Any) -> bool:
    """a and b would be stored as the same attribute (0.0 and -0.0 differ, NaN never same)."""
    if type(a) is not type(b) or a != b:
        return False
    return not (isinstance(a, float) and a == 0.0) or math.copysign(1.0, a) == math.copysign(
        1.0, b)


# -- the plan: every group and attribute write_nsid_dataset makes, in its order ------------

Path = tuple[str, ...]          # an object below the dataset's group; () is the group itself


@dataclass
class _Plan:
    name: str
    steps: list[tuple]          # ("group", parent, name) | ("attr", path, name, value, fast)
    #                           | ("main",) | ("dim", index) | ("scales",)
    templatable: bool           # every name plain ASCII and unique, every value fast

    def key(self, dataset: NsidDataset, data: np.ndarray) -> tuple:
        """What a template must share: everything but attribute values, data and dim values."""
        shape = tuple((s[0], s[1], s[2], type(s[3])) if s[0] == "attr" else s
                      for s in self.steps)
        dims = tuple((dim.name, np.asarray(dim.values).dtype.str, len(dim.values))
                     for dim in dataset.dims)
        return self.name, data.shape, data.dtype.str, dims, shape

    def values(self) -> list[Any]:
        return [s[3] for s in self.steps if s[0] == "attr"]


def _plan(dataset: NsidDataset, name: str) -> _Plan:
    """The steps of pyNSID's write_nsid_dataset for `dataset` (sidpy's write_simple_attrs
    rules for every dict); raises what sidpy would raise for values it cannot clean."""
    steps: list[tuple] = []
    ok = [_ascii(name) is not None]
    children: set[str] = {name}

    def attrs(path: Path, mapping: Mapping[Any, Any]) -> None:
        seen: set[str] = set()
        for key, val in mapping.items():
            key = (key if isinstance(key, str) else str(key)).strip()
            if val is None:
                continue
            if isinstance(val, Enum):
                val = val.name
            if isinstance(val, list) and any(isinstance(item, dict) for item in val):
                val = {str(i): item for i, item in enumerate(val)}
            if isinstance(val, dict):
                steps.append(("group", path, key))
                ok[0] &= _ascii(key) is not None and key not in seen
                seen.add(key)
                attrs((*path, key), val)
                continue
            fast = _fast_value(val) and _ascii(key) is not None and key not in seen
            if not fast:
                from sidpy.base.string_utils import clean_string_att  # raises as sidpy does
                val = clean_string_att(val)
            ok[0] &= fast
            seen.add(key)
            steps.append(("attr", path, key, val, fast))

    book = book_keeping_attrs()
    attrs((), book)
    steps.append(("main",))
    for index, dim in enumerate(dataset.dims):
        steps.append(("dim", index))
        ok[0] &= _ascii(dim.name) is not None and dim.name not in children
        children.add(dim.name)
        attrs((dim.name,), {"name": dim.name, "units": dim.units, "quantity": dim.quantity,
                            "dimension_type": dim.dimension_type})
    for attr in _METADATA_GROUPS:
        mapping = getattr(dataset, attr)
        if mapping:                                  # write_dict_to_h5_group skips {}
            group = attr.replace(" ", "_")
            ok[0] &= group not in children
            children.add(group)
            steps.append(("group", (), group))
            attrs((group,), mapping)
    attrs((name,), {"quantity": dataset.quantity, "units": dataset.units,
                    "main_data_name": dataset.title, "data_type": dataset.data_type,
                    "modality": dataset.modality, "source": dataset.source, **book})
    steps.append(("scales",))
    return _Plan(name, steps, ok[0])


def _wrap(oid: h5py.h5o.ObjectID) -> h5py.HLObject:
    return h5py.Dataset(oid) if isinstance(oid, h5d.DatasetID) else h5py.Group(oid)


def _execute(plan: _Plan, dataset: NsidDataset, data: np.ndarray, parent: h5g.GroupID, *,
             template: bool = False) -> tuple[h5g.GroupID, h5d.DatasetID]:
    """Create the dataset's group under `parent` step by step (ids of the group and main
    dataset). A template gets no image data and no attached scales."""
    raw = _ascii(plan.name)
    group = h5g.create(parent, raw, gcpl=_GCPL) if raw else \
        h5py.Group(parent).create_group(plan.name).id
    objs: dict[Path, Any] = {(): group}
    main: h5d.DatasetID | None = None
    scales: list[h5d.DatasetID] = []
    for step in plan.steps:
        kind = step[0]
        if kind == "attr":
            _, path, key, val, fast = step
            obj = objs[path]
            try:
                if fast:
                    _create_fast_attr(obj, key.encode("ascii"), val)
                else:
                    _wrap(obj).attrs[key] = val     # h5py replaces an existing attribute
            except Exception:  # noqa: BLE001 - sidpy skips what HDF5 refuses, silently
                continue
        elif kind == "group":
            _, path, key = step
            raw_key = _ascii(key)
            objs[(*path, key)] = h5g.create(objs[path], raw_key, gcpl=_GCPL) if raw_key else \
                _wrap(objs[path]).create_group(key).id
        elif kind == "main":
            main = _create_dataset(group, plan.name, data, write=not template)
            objs[(plan.name,)] = main
        elif kind == "dim":
            dim = dataset.dims[step[1]]
            scale = _create_dataset(group, dim.name, np.asarray(dim.values))
            objs[(dim.name,)] = scale
            scales.append(scale)
        else:                                         # "scales": pyNSID's link_as_main
            for index, (dim, scale) in enumerate(zip(dataset.dims, scales, strict=True)):
                label = dim.name.encode("utf-8")
                h5ds.set_scale(scale, label)
                h5ds.set_label(main, index, label)
                if not template:
                    h5ds.attach_scale(main, scale, index)
    assert main is not None
    return group, main


def _create_dataset(parent: h5g.GroupID, name: str, data: np.ndarray,
                    write: bool = True) -> h5d.DatasetID:
    """parent.create_dataset(name, data=data): contiguous, no filters, no time stamps."""
    raw = _ascii(name)
    data = np.ascontiguousarray(data)
    if raw is None or data.dtype.kind not in "biuf":
        hl = h5py.Group(parent)
        dset = hl.create_dataset(name, data=data) if write else \
            hl.create_dataset(name, shape=data.shape, dtype=data.dtype)
        return dset.id
    dset = h5d.create(parent, raw, h5t.py_create(data.dtype, logical=True),
                      h5s.create_simple(data.shape), dcpl=_DCPL)
    if write:
        dset.write(h5s.ALL, h5s.ALL, data)
    return dset


def create_group(parent: h5py.Group, name: str) -> h5py.Group:
    """`parent.create_group(name)` (same group: no time stamps), without h5py's per-call
    property-list set-up for a plain name."""
    raw = _ascii(name)
    if raw is None:
        return parent.create_group(name)
    return h5py.Group(h5g.create(parent.id, raw, gcpl=_GCPL))


def create_attrs(obj: h5py.Group | h5py.Dataset, values: Mapping[str, Any]) -> None:
    """`obj.attrs[name] = value` for each new attribute, the str/float/int/bool ones straight
    through h5a (same HDF5 types as h5py makes, a third of the time)."""
    for name, value in values.items():
        raw = _ascii(name)
        if raw is None or not _fast_value(value):
            obj.attrs[name] = value
        else:
            _create_fast_attr(obj.id, raw, value)


def _check(dataset: NsidDataset, data: np.ndarray) -> None:
    if len(dataset.dims) != data.ndim:
        raise ValueError(f"{len(dataset.dims)} dimensions given for data of shape {data.shape}")
    for dim, length in zip(dataset.dims, data.shape, strict=True):
        if np.ndim(dim.values) != 1 or len(dim.values) != length:
            raise ValueError(f"dimension {dim.name!r} must be 1-D of length {length}")


def write_nsid_dataset(dataset: NsidDataset, h5_group: h5py.Group,
                       main_data_name: str = "") -> h5py.Dataset:
    """Create `h5_group/<name>/` holding `dataset` as an NSID main dataset, from scratch;
    returns the main h5py.Dataset. Same call as pyNSID's (no h5py dataset kwargs). To write
    many datasets into one file, NsidWriter is several times faster."""
    if not isinstance(h5_group, h5py.Group):
        raise TypeError("h5_group should be a h5py.File or h5py.Group object")
    data = np.asarray(dataset.data)
    _check(dataset, data)
    plan = _plan(dataset, main_data_name_for(dataset, main_data_name))
    return h5py.Dataset(_execute(plan, dataset, data, h5_group.id)[1])


@dataclass
class _Template:
    name: bytes                 # its group in the template file: /<name>/<dataset name>
    group: h5g.GroupID          # that group, open
    values: list[Any]           # attribute values, in plan order
    targets: list[tuple[bytes, bytes]]   # (object path, attribute name), in plan order
    dims: list[bytes]           # dimension values, as bytes


class NsidWriter:
    """Writes NsidDatasets in pyNSID's layout like `write_nsid_dataset`, copying a template
    of each dataset structure it has seen (see the module docstring). One per output file
    (or thread); close() frees the templates."""

    def __init__(self, max_templates: int = 8) -> None:
        self._max = max_templates
        self._file: h5py.File | None = None
        self._templates: OrderedDict[tuple, _Template] = OrderedDict()
        self._names = itertools.count()

    def write(self, dataset: NsidDataset, h5_group: h5py.Group,
              main_data_name: str = "") -> h5py.Dataset:
        """Create `h5_group/<name>/` holding `dataset`; returns the main h5py.Dataset. The
        main dataset gets its dimension scales last: until then no NSID reader takes the
        group for a dataset."""
        if not isinstance(h5_group, h5py.Group):
            raise TypeError("h5_group should be a h5py.File or h5py.Group object")
        data = np.asarray(dataset.data)
        _check(dataset, data)
        plan = _plan(dataset, main_data_name_for(dataset, main_data_name))
        if not plan.templatable or data.dtype.kind not in "biuf":
            return h5py.Dataset(_execute(plan, dataset, data, h5_group.id)[1])
        key = plan.key(dataset, data)
        template = self._templates.get(key)
        if template is None:
            template = self._make_template(key, plan, dataset, data)
        else:
            self._templates.move_to_end(key)
        return h5py.Dataset(self._copy(template, plan, dataset, data, h5_group.id))

    def _make_template(self, key: tuple, plan: _Plan, dataset: NsidDataset,
                       data: np.ndarray) -> _Template:
        if self._file is None:       # a unique name: HDF5 refuses two open files of one name
            self._file = h5py.File(f"micagent-nsid-templates-{uuid.uuid4()}.h5", "w",
                                   driver="core", backing_store=False)
        name = b"t%d" % next(self._names)
        group = h5g.create(self._file.id, name)
        _execute(plan, dataset, data, group, template=True)
        targets = [("/".join(s[1]).encode("ascii") or b".", s[2].encode("ascii"))
                   for s in plan.steps if s[0] == "attr"]
        template = _Template(name, group, plan.values(), targets,
                             [np.asarray(dim.values).tobytes() for dim in dataset.dims])
        self._templates[key] = template
        while len(self._templates) > self._max:
            _, old = self._templates.popitem(last=False)
            del self._file[old.name.decode("ascii")]
        return template

    def _copy(self, template: _Template, plan: _Plan, dataset: NsidDataset, data: np.ndarray,
              parent: h5g.GroupID) -> h5d.DatasetID:
        raw = plan.name.encode("ascii")
        h5o.copy(template.group, raw, parent, raw, copypl=_COPY)
        group = h5g.open(parent, raw)
        main = h5d.open(group, raw)
        main.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(data))
        scales = []
        for dim, stored in zip(dataset.dims, template.dims, strict=True):
            scale = h5d.open(group, dim.name.encode("ascii"))
            values = np.ascontiguousarray(dim.values)
            if values.tobytes() != stored:
                scale.write(h5s.ALL, h5s.ALL, values)
            scales.append(scale)
        objects: dict[bytes, Any] = {b".": group, raw: main}
        for value, old, (path, attr) in zip(plan.values(), template.values, template.targets,
                                            strict=True):
            if _same(value, old):
                continue
            obj = objects.get(path)
            if obj is None:
                obj = objects[path] = h5o.open(group, path)
            dtype, _, mem_type = _FAST[type(value)]
            h5a.open(obj, attr).write(np.array(value, dtype=dtype), mtype=mem_type)
        for index, scale in enumerate(scales):
            h5ds.attach_scale(main, scale, index)
        return main

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._templates.clear()
