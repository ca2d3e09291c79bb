"""Client for DTMicroscope's STEM Pyro5 server (and our twin server, which extends it).

Speaks DTMicroscope's API unchanged (arrays as `(list, shape, dtype)`) and implements the
Microscope protocol on top. Against our twin server (`get_capabilities` advertises it) it
uses the acquisition API and the binary transport (raw bytes over Pyro5's msgpack
serializer); against DTMicroscope's own server, and on any server once this client has
registered a dataset, `acquire()` returns the overview image and the stage cannot move. What
the server offers is asked, never assumed (`offers`: Pyro5's method list). Pyro5 failures
become the typed errors of `instruments.devices.errors`.
"""

from __future__ import annotations

import threading
from dataclasses import fields, replace
from typing import Any

import numpy as np
import Pyro5.api
import Pyro5.errors

from instruments.devices.errors import (
    InstrumentError,
    InstrumentTimeout,
    InstrumentUnreachable,
    ProtocolError,
    RemoteError,
)
from instruments.devices.frame import Frame, ImagingSettings, StagePosition, dataclass_from
from instruments.devices.jsonrpc import remote_error
from instruments.devices.microscope import Capabilities, InstrumentStatus
from instruments.devices.nsid_calibration import Calibration, channel_calibration
from instruments.devices.wire_arrays import from_binary, from_tuple
from instruments.session_file.layout import SessionFileError

DEFAULT_PORT = 9091
OBJECT_ID = "microscope.server"
BINARY_SERIALIZER = "msgpack"
MAX_PROBED_CHANNELS = 64


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def capabilities_from_dict(values: dict[str, Any]) -> Capabilities:
    """Capabilities from a wire dict (lists back to tuples)."""
    values = _known(Capabilities, values)
    for name in ("detectors", "fov_range", "pixel_options", "dwell_range", "defocus_range"):
        if name in values:
            values[name] = tuple(values[name])
    if "stage_range" in values:
        values["stage_range"] = tuple(tuple(axis) for axis in values["stage_range"])
    return Capabilities(**values)


class DTMicroscopeClient:
    """A Microscope over DTMicroscope's Pyro5 STEM protocol.

    `binary`: None = use the binary transport when the server offers it; False = always the
    `(list, shape, dtype)` path; True = require it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 timeout: float = 10.0, binary: bool | None = None,
                 object_id: str = OBJECT_ID) -> None:
        self.uri = f"PYRO:{object_id}@{host}:{port}"
        self.instrument_id = f"dtm://{host}:{port}"
        self.timeout = timeout
        self._lock = threading.RLock()
        self._proxy = Pyro5.api.Proxy(self.uri)
        self._proxy._pyroTimeout = timeout
        self._guard("connect", self._proxy._pyroBind)
        self.server_info: dict[str, Any] | None = (
            dict(self._call("get_capabilities")) if self.offers("get_capabilities") else None)
        offered = bool(self.server_info and self.server_info.get("binary_transport"))
        if binary and not offered:
            raise ProtocolError("server offers no binary transport", self.uri)
        self.binary = offered if binary is None else bool(binary and offered)
        self.acquisition = bool(self.server_info and self.server_info.get("acquisition"))
        self._settings = ImagingSettings()
        self._stage = StagePosition()
        self._sequence = 0
        self._overview_shape: tuple[int, ...] | None = None
        self._spectrum_channel: str | None | bool = False      # False: not asked yet
        self.calibration: Calibration | None = None              # of the registered overview
        self._calibration_note = "no data registered by this client"
        self._setup: list[tuple[str, str]] = []     # calls a new connection must repeat

    # --- transport ------------------------------------------------------------------------
    def offers(self, method: str) -> bool:
        """Whether the server exposes `method` (Pyro5's method list of this connection)."""
        return method in self._proxy._pyroMethods

    def _guard(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one Pyro5 call, mapping its failures to typed instrument errors."""
        try:
            return func(*args, **kwargs)
        except Pyro5.errors.TimeoutError as exc:
            raise InstrumentTimeout(f"{what}: no reply within {self.timeout} s",
                                    self.uri) from exc
        except Pyro5.errors.ConnectionClosedError as exc:
            raise InstrumentUnreachable(f"{what}: connection closed by the server ({exc})",
                                        self.uri) from exc
        except Pyro5.errors.ProtocolError as exc:
            raise ProtocolError(f"{what}: {exc}", self.uri) from exc
        except Pyro5.errors.CommunicationError as exc:
            raise InstrumentUnreachable(f"{what}: {exc}", self.uri) from exc
        except Pyro5.errors.PyroError as exc:
            raise ProtocolError(f"{what}: {type(exc).__name__}: {exc}", self.uri) from exc
        except InstrumentError:
            raise
        except RuntimeError as exc:  # the server sends instrument errors as RuntimeError
            raise remote_error(str(exc), self.uri, what=f"{what} on the server") from exc
        except Exception as exc:  # raised on the server and re-raised here by Pyro5
            raise RemoteError(f"{what} failed on the server: {type(exc).__name__}: {exc}",
                              self.uri) from exc

    def _call(self, method: str, *args: Any, serializer: str | None = None,
              **kwargs: Any) -> Any:
        with self._lock:
            self._proxy._pyroClaimOwnership()
            if self._proxy._pyroConnection is None:
                self._reconnect()
            if not self.offers(method):
                raise RemoteError(f"server exposes no method {method!r}", self.uri)
            self._proxy._pyroSerializer = serializer
            return self._guard(method, getattr(self._proxy, method), *args, **kwargs)

    def _reconnect(self) -> None:
        """Connect again after the connection was lost or closed. DTMicroscope's server makes
        one MicroscopeServer per connection, which knows nothing of this client's microscope
        and data: both are set up again on the new connection."""
        self._guard("reconnect", self._proxy._pyroBind)
        for method, argument in self._setup:
            self._guard(f"{method} (again, on the new connection)",
                        getattr(self._proxy, method), argument)

    def _array(self, method: str, *args: Any) -> np.ndarray:
        """Fetch an array by the binary variant when in use, else the tuple form."""
        if self.binary and self.offers(f"{method}_bytes"):
            reply = self._call(f"{method}_bytes", *args, serializer=BINARY_SERIALIZER)
            return from_binary(reply, self.uri)
        return from_tuple(self._call(method, *args), self.uri)

    # --- DTMicroscope's STEM server API ---------------------------------------------------
    def initialize_microscope(self, microscope: str = "dummy") -> None:
        self._call("initialize_microscope", microscope)
        self._setup = [("initialize_microscope", microscope)]
        self._overview_shape, self._spectrum_channel = None, False

    def register_data(self, data_source: str = "test.h5") -> None:
        """Register an NSID file on the server; from then on this client serves that dataset
        (its overview, stage-less), also on a server with an acquisition API. The overview's
        calibration is read here too where the file is readable from this machine (the
        server's API carries none)."""
        self._call("register_data", data_source)
        self._setup = [*self._setup[:1], ("register_data", str(data_source))]
        self.acquisition = False
        self._overview_shape, self._spectrum_channel = None, False
        try:
            self.calibration = channel_calibration(str(data_source), 0)
        except (InstrumentError, SessionFileError, OSError, IndexError) as exc:
            self.calibration = None
            self._calibration_note = f"not readable on the client: {exc}"

    def get_dataset_info(self) -> list[tuple[str, Any]]:
        info = self._call("get_dataset_info")
        return [tuple(item) for item in info]

    def get_overview_image(self) -> np.ndarray:
        return self._array("get_overview_image")

    def get_point_data(self, spectrum_image_index: str | int, x: int, y: int) -> np.ndarray:
        return self._array("get_point_data", spectrum_image_index, x, y)

    def get_spectrum_image(self, spectrum_image_index: str = "Channel_001") -> np.ndarray:
        return self._array("get_spectrum_image", spectrum_image_index)

    def get_spectrum_image_e_axis(self, spectrum_image_index: str = "Channel_001"
                                  ) -> np.ndarray:
        return from_tuple(self._call("get_spectrum_image_e_axis", spectrum_image_index),
                          self.uri)

    # --- Microscope protocol --------------------------------------------------------------
    def status(self) -> InstrumentStatus:
        if self.acquisition:
            values = self._call("get_status")
            extra = dict(values.get("extra") or {})
            extra["remote_instrument_id"] = values.get("instrument_id")
            return InstrumentStatus(
                instrument_id=self.instrument_id, connected=bool(values.get("connected", True)),
                stage=dataclass_from(StagePosition, values["stage"]),
                settings=dataclass_from(ImagingSettings, values["settings"]),
                vacuum_ok=values.get("vacuum_ok"), beam_on=values.get("beam_on"), extra=extra)
        with self._lock:
            self._proxy._pyroClaimOwnership()
            if self._proxy._pyroConnection is None:
                self._reconnect()
        return InstrumentStatus(instrument_id=self.instrument_id, connected=True,
                                stage=self._stage, settings=self._settings,
                                extra={"server": "STEM dataset (no acquisition)"})

    def capabilities(self) -> Capabilities:
        if self.acquisition:
            return capabilities_from_dict(dict(self.server_info["capabilities"]))
        side = self._overview_side()
        channel = self.spectral_channel()
        return Capabilities(detectors=("overview",), pixel_options=(side,),
                            can_move_stage=False, has_overview=True,
                            has_spectra=channel is not None, spectrum_channel=channel)

    def spectral_channel(self) -> str | None:
        """The key of the registered dataset's first spectrum image (None without one).

        From `get_dataset_info` where the server offers it (our twin). DTMicroscope's own STEM
        server has no such call: there the channels are probed in order with
        `get_spectrum_image_e_axis`, which answers only for a channel with an energy axis
        (a 3-D spectrum image) and fails with KeyError past the last channel."""
        if self._spectrum_channel is False:
            self._spectrum_channel = self._find_spectral_channel()
        return self._spectrum_channel  # type: ignore[return-value]

    def _find_spectral_channel(self) -> str | None:
        if self.offers("get_dataset_info"):
            found = dict(self.get_dataset_info()).get("spectral_image_channel_index") or []
            return f"Channel_{int(found[0]):03}" if found else None
        for index in range(1, MAX_PROBED_CHANNELS):
            key = f"Channel_{index:03}"
            try:
                if self.get_spectrum_image_e_axis(key).size > 0:
                    return key
            except RemoteError as exc:
                if "KeyError" in str(exc):      # past the last channel
                    return None
        return None

    def _overview_side(self) -> int:
        if self._overview_shape is None:
            self._overview_shape = tuple(self.get_overview_image().shape)
        return int(self._overview_shape[0])

    def set_imaging(self, settings: ImagingSettings) -> ImagingSettings:
        if self.acquisition:
            applied = self._call("set_imaging", settings.as_dict())
            self._settings = dataclass_from(ImagingSettings, applied)
        else:
            self._settings = self._served(settings)
        return self._settings

    def imaging(self) -> ImagingSettings:
        """The twin's settings from `get_status` (acquisition API), else what this client
        serves (a stored dataset: no beam)."""
        return self.status().settings if self.acquisition else self._settings

    def _served(self, settings: ImagingSettings) -> ImagingSettings:
        """What a stage-less server serves: the overview's size, and its calibration where
        known (field of view, signal quantity as the detector)."""
        settings = replace(settings, pixels=self._overview_side())
        if self.calibration is not None and self.calibration.fov is not None:
            settings = replace(settings, fov=self.calibration.fov,
                               detector=self.calibration.quantity)
        return settings

    def move_stage(self, position: StagePosition) -> StagePosition:
        if not self.acquisition:
            raise InstrumentError("this STEM server serves a stored dataset: no stage to move "
                                  "(capabilities: can_move_stage=False)", self.uri)
        reached = self._call("move_stage", position.as_dict())
        self._stage = dataclass_from(StagePosition, reached)
        return self._stage

    def acquire(self) -> Frame:
        if not self.acquisition:
            image = self.get_overview_image()
            self._overview_shape = tuple(image.shape)
            self._settings = self._served(self._settings)
            self._sequence += 1
            original: dict[str, Any] = {"source": "get_overview_image",
                                        "dtype": str(image.dtype),
                                        "calibration": self._calibration_note}
            if self.calibration is not None:      # the signal, as the session file records it
                original.update(calibration=self.calibration.as_dict(),
                                quantity=self.calibration.quantity,
                                units=self.calibration.units)
            return Frame(image=image, instrument_id=self.instrument_id,
                         settings=self._settings, stage=self._stage, sequence=self._sequence,
                         original_metadata=original)
        serializer = BINARY_SERIALIZER if self.binary else None
        reply = self._call("acquire_frame", self.binary, serializer=serializer)
        return self._frame(reply)

    def _frame(self, reply: dict[str, Any]) -> Frame:
        try:
            meta = reply["metadata"]
            image = (from_binary if self.binary else from_tuple)(reply["image"], self.uri)
            original = dict(reply.get("original_metadata") or {})
            original.update(remote_instrument_id=meta.get("instrument_id"),
                            transport="binary" if self.binary else "tuple")
            frame = Frame.from_dict({**meta, "original_metadata": original,
                                     "evaluation": reply.get("evaluation")}, image,
                                    instrument_id=self.instrument_id)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"malformed acquire_frame reply: {exc!r}", self.uri) from exc
        self._settings, self._stage = frame.settings, frame.stage
        return frame

    def close(self) -> None:
        with self._lock:
            self._proxy._pyroClaimOwnership()
            self._proxy._pyroRelease()
