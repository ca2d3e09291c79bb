"""ReplayMicroscope: a stored file served as an instrument (`replay://FILE.h5`).

Serves, in order, the frames of a micagent session file (exactly as recorded, same frame ids)
or the 2-D IMAGE datasets of any NSID file written by another tool (each channel a frame).
The input is opened with h5py read-only and never modified; `start`/`stop` serve a slice of
the stored frames (an archive replay splits large sessions into frame ranges). Stage moves and
imaging changes are accepted and recorded, not acted on (`can_move_stage` is False); when the
frames run out, `acquire` raises ReplayExhausted.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import h5py
import numpy as np

from instruments.devices.errors import InstrumentError, InstrumentUnreachable
from instruments.devices.frame import Frame, ImagingSettings, StagePosition, dataclass_from
from instruments.devices.microscope import Capabilities, InstrumentStatus
from instruments.devices.nsid_calibration import dataset_fov
from instruments.session_file.layout import (
    ATTR_FORMAT,
    FORMAT_NAME,
    NotASessionFile,
    SessionFileError,
)
from instruments.session_file.reader import SessionReader, open_hdf5_readonly


class ReplayExhausted(InstrumentError):
    """Every stored frame has been served."""


class ReplaySourceError(InstrumentError):
    """The file cannot be replayed (missing, corrupt, or holds no 2-D images)."""


@dataclass(frozen=True)
class _Meta:
    settings: ImagingSettings
    stage: StagePosition


class _Source(Protocol):
    kind: str
    metas: list[_Meta]

    def frame(self, index: int) -> Frame: ...

    def close(self) -> None: ...


class _SessionSource:
    """Frames of a micagent session file."""

    kind = "session"

    def __init__(self, path: str) -> None:
        self._reader = SessionReader(path)
        self.metas = [_Meta(dataclass_from(ImagingSettings, m.get("settings", {})),
                            dataclass_from(StagePosition, m.get("stage", {})))
                      for m in self._reader.frame_metadata()]

    def frame(self, index: int) -> Frame:
        return self._reader.frame(index)

    def close(self) -> None:
        self._reader.close()


def _plain(value: Any) -> Any:
    """JSON-safe copy of metadata read from HDF5 (numpy scalars/arrays, bytes)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class _NsidSource:
    """2-D IMAGE main datasets of an NSID file from another tool, in NSIDReader's order."""

    kind = "nsid"

    def __init__(self, path: str, f: h5py.File) -> None:
        from pyNSID.io.hdf_utils import get_all_main

        self._path = path
        self._file = f
        self._dsets = [d for d in get_all_main(f) if d.ndim == 2
                       and str(d.attrs.get("data_type", "")).upper() == "IMAGE"]
        if not self._dsets:
            raise NotASessionFile("HDF5 file holds no NSID IMAGE datasets to replay", path)
        self._mtime = os.path.getmtime(path)
        fovs = [dataset_fov(d) for d in self._dsets]
        known = [f for f in fovs if f is not None]
        fallback = float(np.median(known)) if known else ImagingSettings().fov
        self.metas = [_Meta(ImagingSettings(fov=fov if fov is not None else fallback,
                                            pixels=int(max(d.shape)),
                                            detector=str(d.attrs.get("quantity", "unknown"))),
                            StagePosition())
                      for d, fov in zip(self._dsets, fovs, strict=True)]

    @staticmethod
    def _dimensions(dset: h5py.Dataset) -> dict[str, dict[str, Any]]:
        """Name -> units/quantity of each dimension scale attached to `dset`."""
        out = {}
        for dim in dset.dims:
            if dim.label and dim.label in dset.parent:
                attrs = dset.parent[dim.label].attrs
                out[dim.label] = {"units": attrs.get("units"), "quantity": attrs.get("quantity")}
        return out

    def frame(self, index: int) -> Frame:
        from pyNSID.io.hdf_utils import read_h5py_dataset

        dset = self._dsets[index]
        ds = read_h5py_dataset(dset)
        meta = self.metas[index]
        return Frame(
            image=np.asarray(ds, dtype=np.float32),
            instrument_id=f"replay:{os.path.basename(self._path)}",
            settings=meta.settings,
            stage=meta.stage,
            sequence=index,
            frame_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"file://{self._path}#{dset.name}")),
            timestamp=self._mtime,
            original_metadata=_plain({
                "source_file": self._path, "dataset": dset.name, "quantity": ds.quantity,
                "units": ds.units, "modality": ds.modality, "source": ds.source,
                "dimensions": self._dimensions(dset),
                "original_metadata": dict(ds.original_metadata),
                "metadata": dict(ds.metadata)}),
        )

    def close(self) -> None:
        self._file.close()


def _open_source(path: str) -> _Source:
    f = open_hdf5_readonly(path)
    if f.attrs.get(ATTR_FORMAT) == FORMAT_NAME:
        f.close()
        return _SessionSource(path)
    try:
        return _NsidSource(path, f)
    except Exception:
        f.close()
        raise


class ReplayMicroscope:
    """A stored session (or foreign NSID) file served frame by frame as a Microscope."""

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.instrument_id = f"replay://{self.path}"
        try:
            self._source: _Source | None = _open_source(self.path)
        except SessionFileError as exc:
            raise ReplaySourceError(f"cannot replay: {exc}", self.instrument_id) from exc
        self._first = max(0, start)
        self._metas = self._source.metas[self._first:stop]
        self._next = 0
        self.requests: list[dict[str, Any]] = []

    @property
    def kind(self) -> str:
        """'session' for micagent session files, 'nsid' for other NSID files."""
        return self._source.kind if self._source else "closed"

    def __len__(self) -> int:
        return len(self._metas)

    @property
    def remaining(self) -> int:
        return len(self._metas) - self._next

    def _current(self) -> _Meta:
        index = min(self._next, len(self._metas) - 1)
        return self._metas[index] if self._metas else _Meta(ImagingSettings(), StagePosition())

    def status(self) -> InstrumentStatus:
        meta = self._current()
        return InstrumentStatus(
            instrument_id=self.instrument_id, connected=self._source is not None,
            stage=meta.stage, settings=meta.settings,
            extra={"replay": self.path, "kind": self.kind, "served": self._next,
                   "remaining": self.remaining})

    def capabilities(self) -> Capabilities:
        settings = [m.settings for m in self._metas] or [ImagingSettings()]
        stages = [m.stage for m in self._metas] or [StagePosition()]

        def span(values: list[float]) -> tuple[float, float]:
            return (min(values), max(values))

        return Capabilities(
            detectors=tuple(sorted({s.detector for s in settings})),
            fov_range=span([s.fov for s in settings]),
            pixel_options=tuple(sorted({s.pixels for s in settings})),
            dwell_range=span([s.dwell for s in settings]),
            defocus_range=span([s.defocus for s in settings]),
            can_move_stage=False,
            stage_range=(span([p.x for p in stages]), span([p.y for p in stages])),
            replays_stored=True,
        )

    def stored_positions(self) -> list[dict[str, Any]]:
        """One plan position per stored frame, at the stage position it was taken (a foreign
        NSID file has none: its frames are numbered along a row)."""
        if self.kind == "nsid":
            return [{"x": 0.0, "y": 0.0, "row": 0, "col": i} for i in range(len(self))]
        return [{"x": m.stage.x, "y": m.stage.y} for m in self._metas]

    def set_imaging(self, settings: ImagingSettings) -> ImagingSettings:
        """Recorded only; returns the settings of the frame that will be served next."""
        self._require_open()
        self.requests.append({"set_imaging": settings.as_dict()})
        return self._current().settings

    def imaging(self) -> ImagingSettings:
        """The settings of the frame that will be served next."""
        return self._current().settings

    def move_stage(self, position: StagePosition) -> StagePosition:
        """Recorded only; returns the stage position of the frame that will be served next."""
        self._require_open()
        self.requests.append({"move_stage": position.as_dict()})
        return self._current().stage

    def acquire(self) -> Frame:
        self._require_open()
        if self._next >= len(self._metas):
            raise ReplayExhausted(f"all {len(self._metas)} stored frames served",
                                  self.instrument_id)
        try:
            frame = self._source.frame(self._first + self._next)
        except (SessionFileError, OSError, KeyError, ValueError) as exc:
            raise ReplaySourceError(f"stored frame {self._first + self._next} unreadable: {exc}",
                                    self.instrument_id) from exc
        self._next += 1
        return frame

    def rewind(self) -> None:
        """Serve from the first frame (of the slice) again."""
        self._next = 0

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def _require_open(self) -> None:
        if self._source is None:
            raise InstrumentUnreachable("replay instrument is closed", self.instrument_id)
