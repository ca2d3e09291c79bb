"""A drop-in for DTMicroscope's STEM Pyro5 server, plus an acquisition API over our twin.

DTMicroscope part (same object id, method names, argument names/defaults and return forms
as `DTMicroscope/server/server_stem.py`): `initialize_microscope`, `register_data`,
`get_dataset_info`, `get_overview_image`, `get_point_data`, `get_spectrum_image`,
`get_spectrum_image_e_axis`; arrays come back as `(array.tolist(), shape, dtype_str)`.

Additions (detected by clients through `get_capabilities`): `get_status`, `set_imaging`,
`move_stage`, `acquire_frame` on the twin, and `*_bytes` variants returning raw bytes for
Pyro5's msgpack serializer. Transport faults (drop/stall) apply to every call.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import Pyro5
import Pyro5.api
import Pyro5.callcontext

from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.devices.jsonrpc import to_plain
from instruments.devices.microscope import Microscope
from instruments.devices.wire_arrays import to_binary, to_tuple
from twins.faults import FaultSpec, TransportFaults

DEFAULT_PORT = 9091
OBJECT_ID = "microscope.server"
API_VERSION = 1
MICROSCOPE_KINDS = ("STEM", "dummy")
HANDSHAKE_TIMEOUT_S = 3.0      # a connection that does not say hello within this is dropped
IDLE_TIMEOUT_S = 300.0         # a client silent this long between calls is disconnected
POOL_SIZE = 512                # worker threads (one per connected client)
MAX_DATA_BYTES = 1 << 30       # register_data refuses larger files (--max-data-bytes)
MAX_REGISTRATIONS = 2          # register_data calls opening a file at the same time


def resolve_data_source(root: str | None, data_source: str) -> str:
    """`data_source` (relative paths: to `root`) as a real path inside `root`, else a
    PermissionError (builtin, so it reaches Pyro5 clients as itself) with the same message
    whether or not the path exists."""
    if root is None:
        raise PermissionError("this server registers no data files (started without a data "
                            "root)")
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, os.fspath(data_source)))
    if os.path.commonpath([base, path]) != base:
        raise PermissionError(f"data_source {str(data_source)!r} is outside the server's data "
                            "root")
    return path


def settings_from_dict(values: dict[str, Any]) -> ImagingSettings:
    """ImagingSettings from a wire dict; unknown keys are an error, missing ones default."""
    known = {f.name for f in fields(ImagingSettings)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown imaging settings {sorted(unknown)}; known: {sorted(known)}")
    return ImagingSettings(**values)


def stage_from_dict(values: dict[str, Any]) -> StagePosition:
    known = {f.name for f in fields(StagePosition)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown stage axes {sorted(unknown)}; known: {sorted(known)}")
    return StagePosition(**{k: float(v) for k, v in values.items()})


def frame_reply(frame: Frame, binary: bool) -> dict[str, Any]:
    """A frame on the wire: image (binary or tuple form), metadata, ground truth."""
    image = np.asarray(frame.image)
    return {"image": to_binary(image) if binary else to_tuple(image),
            "metadata": to_plain(frame.metadata()),
            "original_metadata": to_plain(frame.original_metadata),
            "evaluation": to_plain(frame.evaluation)}


def _remote(method):
    """Apply transport faults, then run; non-builtin exceptions travel as RuntimeError
    (Pyro5 rebuilds only builtin exception classes on the client)."""

    @functools.wraps(method)
    def wrapper(self: DTMicroscopeService, *args: Any, **kwargs: Any) -> Any:
        self._transport()
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if type(exc).__module__ == "builtins":
                raise
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None

    return wrapper


class _Dataset:
    """Datasets of one NSID HDF5 file keyed Channel_000, Channel_001, ... like DTMicroscope's
    STEM._load_dataset (SciFiReaders' NSIDReader.read: pyNSID's main datasets in file order).
    The file is opened read-only in place (NSIDReader would open it r+) and nothing is copied:
    a channel's values are read when first served. Error messages name the file as `shown`
    (its path under the data root), never by the server's absolute path."""

    def __init__(self, source: str, shown: str, max_bytes: int = MAX_DATA_BYTES) -> None:
        import h5py
        from pyNSID.io.hdf_utils import get_all_main, read_h5py_dataset

        if not os.path.isfile(source):
            raise FileNotFoundError(f"no such data file: {shown}")
        size = os.path.getsize(source)
        if size > max_bytes:
            raise ValueError(f"data file {shown} is {size} bytes, over this server's limit "
                             f"of {max_bytes} (--max-data-bytes)")
        self._file = None
        try:
            self._file = h5py.File(source, "r")
            mains = get_all_main(self._file, verbose=False)
            self.channels: dict[str, Any] = {f"Channel_{i:03}": read_h5py_dataset(dataset)
                                             for i, dataset in enumerate(mains)}
        except Exception as exc:
            self.close()
            message = str(exc).replace(source, shown)
            raise ValueError(f"{shown} is not a readable NSID HDF5 file: "
                             f"{type(exc).__name__}: {message}") from None
        if not self.channels:
            self.close()
            raise ValueError(f"{shown} holds no NSID datasets")
        self._arrays: dict[str, np.ndarray] = {}

    def key(self, index: str | int) -> str:
        key = f"Channel_{index:03}" if isinstance(index, int) else str(index)
        if key not in self.channels:
            raise KeyError(f"no channel {key!r}; channels: {list(self.channels)}")
        return key

    def array(self, index: str | int) -> np.ndarray:
        """A channel's values as numpy (read from the file once)."""
        key = self.key(index)
        if key not in self._arrays:
            self._arrays[key] = np.array(self.channels[key])
        return self._arrays[key]

    def info(self) -> list[tuple[str, Any]]:
        """The (name, value) list of DTMicroscope's STEM.get_dataset_info."""
        import sidpy

        kinds: dict[str, list[int]] = {"IMAGE": [], "SPECTRUM": [], "POINT_CLOUD": [],
                                       "SPECTRAL_IMAGE": []}
        for i, dataset in enumerate(self.channels.values()):
            for name, found in kinds.items():
                if dataset.data_type == sidpy.DataType[name]:
                    found.append(i)
        keys = list(self.channels)
        return [
            ("channel_keys", keys),
            ("signals", [str(self.channels[k].quantity) for k in keys]),
            ("units", [str(self.channels[k].units) for k in keys]),
            ("scans_channel_index", kinds["IMAGE"]),
            ("spectra_channel_index", kinds["SPECTRUM"]),
            ("point_clouds_channel_index", kinds["POINT_CLOUD"]),
            ("spectral_image_channel_index", kinds["SPECTRAL_IMAGE"]),
            ("indexing", "image data['Channel_000'] top left corner is (0,0)"),
        ]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _checkerboard(size: tuple[int, int] = (128, 128)) -> np.ndarray:
    image = np.zeros(size)
    image[::2, ::2] = 1
    image[1::2, 1::2] = 1
    return image


@Pyro5.api.expose
class DTMicroscopeService:
    """The Pyro5 servant registered as `microscope.server` (one instance for all clients)."""

    def __init__(self, twin: Microscope | None, faults: FaultSpec | None = None,
                 data_root: str | os.PathLike | None = None,
                 max_data_bytes: int = MAX_DATA_BYTES) -> None:
        self._twin = twin
        self._data_root = None if data_root is None else os.fspath(data_root)
        self._max_data_bytes = max_data_bytes
        self._registrations = threading.BoundedSemaphore(MAX_REGISTRATIONS)
        self._faults = TransportFaults(faults)
        self._kind: str | None = None
        self._data: _Dataset | None = None
        self._lock = threading.RLock()

    # --- plumbing -------------------------------------------------------------------------
    def _transport(self) -> None:
        action, seconds = self._faults.next_call()
        if action == "drop":
            Pyro5.callcontext.current_context.client.close()
            raise ConnectionAbortedError(f"fault injection: dropped call {self._faults.calls}")
        if action == "stall":
            time.sleep(seconds)

    def _dataset(self) -> _Dataset:
        if self._kind is None:
            raise RuntimeError("no microscope: call initialize_microscope('STEM') first")
        if self._data is None:
            raise RuntimeError("no data registered: call register_data(<NSID .h5 path>)")
        return self._data

    def _instrument(self) -> Microscope:
        if self._twin is None:
            raise RuntimeError("this server has no acquisition twin")
        return self._twin

    # --- DTMicroscope STEM server API --------------------------------------------------------
    @_remote
    def initialize_microscope(self, microscope="dummy"):
        """Select the emulated microscope: "STEM" (dataset-backed) or "dummy"."""
        self._initialize(microscope)

    @_remote
    def register_data(self, data_source="test.h5"):
        """Load an NSID HDF5 file; its datasets become Channel_000, Channel_001, ..."""
        self._register(data_source)

    def _initialize(self, microscope: str) -> None:
        if microscope not in MICROSCOPE_KINDS:
            raise ValueError(f"unknown microscope {microscope!r}; known: {list(MICROSCOPE_KINDS)}")
        with self._lock:
            self._kind = microscope
            if self._data is not None:
                self._data.close()
            self._data = None

    def _register(self, data_source: str) -> None:
        if self._kind != "STEM":
            raise RuntimeError("register_data needs initialize_microscope('STEM') first")
        path = resolve_data_source(self._data_root, str(data_source))
        shown = os.path.relpath(path, os.path.realpath(self._data_root))
        if not self._registrations.acquire(blocking=False):
            raise RuntimeError(f"busy: {MAX_REGISTRATIONS} register_data calls are opening "
                               "files; try again when one has finished")
        try:
            dataset = _Dataset(path, shown, self._max_data_bytes)
        finally:
            self._registrations.release()
        with self._lock:
            if self._data is not None:
                self._data.close()
            self._data = dataset
        print(dataset.info(), flush=True)

    def _preload(self, data_source: str) -> None:
        """Start as STEM with `data_source` registered (server start-up; not a client call,
        so it does not count for transport faults)."""
        self._initialize("STEM")
        self._register(data_source)

    @_remote
    def get_dataset_info(self):
        """[(name, value), ...]: channel keys, signals, units and channel indices by type."""
        return self._dataset().info()

    @_remote
    def get_overview_image(self):
        """Channel_000 as (list, shape, dtype)."""
        return to_tuple(self._overview())

    @_remote
    def get_point_data(self, spectrum_image_index, x, y):
        """The data of channel `spectrum_image_index` at pixel (x, y) as (list, shape, dtype)."""
        return to_tuple(self._point(spectrum_image_index, x, y))

    @_remote
    def get_spectrum_image(self, spectrum_image_index="Channel_001"):
        """A whole channel (e.g. a spectrum image) as (list, shape, dtype)."""
        return to_tuple(self._channel(spectrum_image_index))

    @_remote
    def get_spectrum_image_e_axis(self, spectrum_image_index="Channel_001"):
        """The values of a channel's third dimension (the energy axis) as (list, shape, dtype)."""
        return to_tuple(self._e_axis(spectrum_image_index))

    def _overview(self) -> np.ndarray:
        if self._kind == "dummy":
            return _checkerboard()
        return self._dataset().array("Channel_000")

    def _point(self, index: str | int, x: int, y: int) -> np.ndarray:
        if self._kind == "dummy":
            return np.array([x, y])
        return np.array(self._dataset().array(index)[int(x)][int(y)])

    def _channel(self, index: str | int) -> np.ndarray:
        return self._dataset().array(index)

    def _e_axis(self, index: str | int) -> np.ndarray:
        data = self._dataset()
        dataset = data.channels[data.key(index)]
        if dataset.ndim < 3:
            raise ValueError(f"channel {data.key(index)!r} has {dataset.ndim} dimensions; "
                             "an energy axis needs a third")
        return np.asarray(dataset.dim_2.values)

    # --- binary fast path (use Pyro5's msgpack serializer) ---------------------------------
    @_remote
    def get_overview_image_bytes(self):
        return to_binary(self._overview())

    @_remote
    def get_point_data_bytes(self, spectrum_image_index, x, y):
        return to_binary(self._point(spectrum_image_index, x, y))

    @_remote
    def get_spectrum_image_bytes(self, spectrum_image_index="Channel_001"):
        return to_binary(self._channel(spectrum_image_index))

    # --- acquisition API over the twin ------------------------------------------------------
    @_remote
    def get_capabilities(self):
        """Server features and the twin's capabilities."""
        caps = self._twin.capabilities().as_dict() if self._twin is not None else None
        return {"server": "micagent-dtm", "api_version": API_VERSION,
                "binary_transport": True, "acquisition": self._twin is not None,
                "instrument_id": getattr(self._twin, "instrument_id", None),
                "capabilities": to_plain(caps)}

    @_remote
    def get_status(self):
        with self._lock:
            status = self._instrument().status()
        return to_plain(asdict(status))

    @_remote
    def set_imaging(self, settings):
        with self._lock:
            applied = self._instrument().set_imaging(settings_from_dict(dict(settings)))
        return applied.as_dict()

    @_remote
    def move_stage(self, position):
        with self._lock:
            reached = self._instrument().move_stage(stage_from_dict(dict(position)))
        return reached.as_dict()

    @_remote
    def acquire_frame(self, binary=True):
        """Acquire at the current position: {"image", "metadata", "original_metadata",
        "evaluation"}; the image as raw bytes (binary) or as (list, shape, dtype)."""
        with self._lock:
            frame = self._instrument().acquire()
        return frame_reply(frame, bool(binary))

    def _release(self) -> None:
        """Release the registered data copy and the twin (not exposed: leading underscore)."""
        with self._lock:
            if self._data is not None:
                self._data.close()
                self._data = None
            if self._twin is not None:
                self._twin.close()


class BoundedDaemon(Pyro5.api.Daemon):
    """A Pyro5 daemon whose connections cannot hold a worker for ever: the hello must come
    within HANDSHAKE_TIMEOUT_S, and a client silent for IDLE_TIMEOUT_S between calls is
    disconnected (its proxy reconnects on the next call). Pyro5 sets socket timeouts only
    through its process-wide COMMTIMEOUT, which would bound every call of every proxy in the
    process as well; this daemon sets them per connection instead."""

    def _handshake(self, conn, denied_reason=None):
        conn.timeout = HANDSHAKE_TIMEOUT_S
        accepted = super()._handshake(conn, denied_reason)
        conn.timeout = IDLE_TIMEOUT_S
        return accepted


def _bound_pool() -> None:
    """One worker per connected client, up to POOL_SIZE (Pyro5's default is 80)."""
    Pyro5.config.THREADPOOL_SIZE = max(Pyro5.config.THREADPOOL_SIZE, POOL_SIZE)
    Pyro5.config.SERVERTYPE = "thread"


class DTMServer:
    """A Pyro5 daemon serving one DTMicroscopeService as `microscope.server`; register_data
    opens only files under `data_root`, of at most `max_data_bytes`."""

    def __init__(self, twin: Microscope | None, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, faults: FaultSpec | None = None,
                 data_root: str | os.PathLike | None = None,
                 max_data_bytes: int = MAX_DATA_BYTES) -> None:
        self.servant = DTMicroscopeService(twin, faults, data_root, max_data_bytes)
        _bound_pool()
        self.daemon = BoundedDaemon(host=host, port=port)
        self.uri = self.daemon.register(self.servant, objectId=OBJECT_ID)

    @property
    def address(self) -> str:
        return str(self.uri)

    def preload(self, data_source: str) -> None:
        """Start as a STEM microscope with `data_source` registered."""
        self.servant._preload(data_source)

    def serve_forever(self) -> None:
        self.daemon.requestLoop()

    def shutdown(self) -> None:
        self.daemon.shutdown()
        self.servant._release()
