"""Client for DTMicroscope's TEM instrument-server protocol: JSON-RPC 2.0 over netstrings.

One persistent TCP connection (re-opened after any failure); every call has a socket
timeout; replies are framed by their declared length. Implements the Microscope protocol
on top of the raw methods (get_detectors, activate_device, device_settings, get_stage,
set_stage, acquire_image, ...). Where the server offers binary frames (its capabilities say
`binary_transport`), each connection asks for them, and arrays arrive as raw bytes instead
of JSON lists (`binary=False` keeps the list path).
"""

from __future__ import annotations

import math
import select
import socket
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from instruments.devices.dtm_client import capabilities_from_dict
from instruments.devices.errors import (
    InstrumentError,
    InstrumentTimeout,
    InstrumentUnreachable,
    ProtocolError,
    RemoteError,
)
from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.devices.jsonrpc import decode_reply, dumps, request
from instruments.devices.microscope import Capabilities, InstrumentStatus
from instruments.devices.netstring import NetstringReader, encode
from instruments.devices.wire_arrays import as_array, attach_buffers

BINARY_TRANSPORTS = ("netstring-buffers-1",)

DEFAULT_PORT = 9093
VACUUM_OK_BELOW = 1e-3


class TemClient:
    """A Microscope over the netstring JSON-RPC TEM protocol."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 timeout: float = 10.0, binary: bool = True) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.instrument_id = f"tem://{host}:{port}"
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._reader: NetstringReader | None = None
        self._next_id = 1
        self.binary = False
        self._connect()
        try:
            self.server_info: dict[str, Any] | None = self._call("get_capabilities")
        except RemoteError:  # DTMicroscope's own server has no get_capabilities
            self.server_info = None
        if binary and self.server_info and (self.server_info.get("binary_transport")
                                            in BINARY_TRANSPORTS):
            with self._lock:
                self.binary = True
                self._negotiate()
        self._settings = self._readback() or ImagingSettings()
        self._sequence = 0

    # --- transport ------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except TimeoutError as exc:
            raise InstrumentTimeout(f"connect: no answer within {self.timeout} s",
                                    self.instrument_id) from exc
        except OSError as exc:
            raise InstrumentUnreachable(f"connect: {exc}", self.instrument_id) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = NetstringReader(sock, where=self.instrument_id)
        if self.binary:
            self._negotiate()

    def _negotiate(self) -> None:
        """Ask this connection's server side for binary frames."""
        try:
            self._exchange("set_transport", {"binary": True})
        except InstrumentError:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._reader = None, None

    def _exchange(self, method: str, params: dict[str, Any] | None) -> Any:
        """Send one request on the open connection and read its reply (and the raw buffers
        a binary reply announces)."""
        request_id, self._next_id = self._next_id, self._next_id + 1
        self._sock.sendall(encode(dumps(request(request_id, method, params))))
        payload = self._reader.read()
        if payload is None:
            raise InstrumentUnreachable(f"{method}: server closed the connection without "
                                        "replying", self.instrument_id)
        reply = decode_reply(payload, request_id, self.instrument_id)
        sizes = reply.get("buffers")
        if not sizes:
            return reply["result"]
        if not isinstance(sizes, list):
            raise ProtocolError(f"{method}: malformed buffer list {sizes!r}", self.instrument_id)
        buffers = []
        for _ in sizes:
            buffer = self._reader.read()
            if buffer is None:
                raise InstrumentUnreachable(f"{method}: server closed the connection inside "
                                            "a binary reply", self.instrument_id)
            buffers.append(buffer)
        return attach_buffers(reply["result"], buffers, self.instrument_id)

    def _peer_closed(self) -> bool:
        """Whether the server has closed this connection meanwhile (e.g. its idle timeout):
        then the next request goes on a new one instead of failing."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One request/reply; any transport failure closes the connection."""
        with self._lock:
            if self._sock is not None and self._peer_closed():
                self._disconnect()
            if self._sock is None:
                self._connect()
            try:
                return self._exchange(method, params)
            except TimeoutError as exc:
                self._disconnect()
                raise InstrumentTimeout(f"{method}: no reply within {self.timeout} s",
                                        self.instrument_id) from exc
            except OSError as exc:
                self._disconnect()
                raise InstrumentUnreachable(f"{method}: {exc}", self.instrument_id) from exc
            except RemoteError:
                raise                      # the server answered: the connection is fine
            except InstrumentError:
                self._disconnect()
                raise

    # --- the TEM server's methods ---------------------------------------------------------
    def get_detectors(self) -> list[str]:
        return list(self._call("get_detectors"))

    def activate_device(self, device: str) -> int:
        return self._call("activate_device", {"device": device})

    def device_settings(self, device: str, **settings: Any) -> int:
        return self._call("device_settings", {"device": device, **settings})

    def get_stage(self) -> list[float]:
        return list(self._call("get_stage"))

    def set_stage(self, stage_positions: dict[str, float] | list[float],
                  relative: bool = True) -> Any:
        return self._call("set_stage", {"stage_positions": stage_positions,
                                        "relative": relative})

    def acquire_image(self, device: str, **settings: Any) -> np.ndarray:
        reply = self._call("acquire_image", {"device": device, **settings})
        if reply is None:
            raise RemoteError(f"server returned no image for device {device!r}",
                              self.instrument_id)
        return as_array(reply, self.instrument_id)

    def acquire_image_stack(self, device: str, **settings: Any) -> Any:
        reply = self._call("acquire_image_stack", {"device": device, **settings})
        if isinstance(reply, np.ndarray) or (isinstance(reply, list) and len(reply) == 3
                                             and isinstance(reply[2], str)):
            return as_array(reply, self.instrument_id)
        return reply

    def acquire_spectrum(self, device: str, **settings: Any) -> np.ndarray:
        return np.asarray(self._call("acquire_spectrum", {"device": device, **settings}))

    def acquire_spectrum_points(self, device: str, points: list, **settings: Any) -> Any:
        return self._call("acquire_spectrum_points",
                          {"device": device, "points": points, **settings})

    def set_beam_position(self, x: float, y: float) -> Any:
        return self._call("set_beam_position", {"x": x, "y": y})

    def get_vacuum(self) -> Any:
        return self._call("get_vacuum")

    def get_microscope_status(self) -> Any:
        return self._call("get_microscope_status")

    def aberration_correction(self, order: int, **settings: Any) -> Any:
        return self._call("aberration_correction", {"order": order, **settings})

    def close_server(self) -> Any:
        """The server's own `close` method (releases its resources)."""
        return self._call("close")

    # --- Microscope protocol --------------------------------------------------------------
    def _stage(self) -> StagePosition:
        values = self.get_stage()
        if len(values) < 4:
            raise ProtocolError(f"get_stage returned {values!r}; expected [x, y, z, a, b]",
                                self.instrument_id)
        x, y, z, alpha = (float(v) for v in values[:4])
        return StagePosition(x=x, y=y, z=z, tilt=math.degrees(alpha))

    def status(self) -> InstrumentStatus:
        state, vacuum = self.get_microscope_status(), self.get_vacuum()
        vacuum_ok = float(vacuum) < VACUUM_OK_BELOW if isinstance(vacuum, int | float) else None
        return InstrumentStatus(instrument_id=self.instrument_id, connected=True,
                                stage=self._stage(), settings=self._settings,
                                vacuum_ok=vacuum_ok,
                                extra={"microscope_status": state, "vacuum": vacuum})

    def capabilities(self) -> Capabilities:
        if self.server_info is not None:
            return capabilities_from_dict(dict(self.server_info["capabilities"]))
        return Capabilities(detectors=tuple(self.get_detectors()), can_move_stage=True,
                            has_spectra=True)

    def set_imaging(self, settings: ImagingSettings) -> ImagingSettings:
        device = settings.detector
        if not self.activate_device(device):
            raise RemoteError(f"server does not know device {device!r}", self.instrument_id)
        wanted = {"size": settings.pixels, "dwell_time": settings.dwell,
                  "field_of_view": [settings.fov, settings.fov], "defocus": settings.defocus,
                  "beam_energy": settings.beam_energy, "beam_current": settings.beam_current}
        settable = (self.server_info or {}).get("settings")
        if isinstance(settable, list):   # a server that lists its settings gets only those
            wanted = {k: v for k, v in wanted.items() if k in settable}
        done = self.device_settings(device, **wanted)
        if not done:
            raise RemoteError(f"server refused settings for {device!r}", self.instrument_id)
        self._settings = self._readback() or settings
        return self._settings

    def imaging(self) -> ImagingSettings:
        """The settings the server reports now (`get_imaging`), else the last applied."""
        return self._readback() or self._settings

    def _readback(self) -> ImagingSettings | None:
        """The settings the instrument holds, where the server reports them."""
        if not (self.server_info or {}).get("imaging_readback"):
            return None
        try:
            return ImagingSettings(**self._call("get_imaging"))
        except TypeError as exc:
            raise ProtocolError(f"malformed get_imaging reply: {exc}",
                                self.instrument_id) from exc

    def move_stage(self, position: StagePosition) -> StagePosition:
        self.set_stage({"x": position.x, "y": position.y, "z": position.z,
                        "a": math.radians(position.tilt)}, relative=False)
        return self._stage()

    def acquire(self) -> Frame:
        device = self._settings.detector
        if self.server_info is not None and self.server_info.get("frame_metadata"):
            reply = self._call("acquire_frame", {"device": device})
            if reply is None:
                raise RemoteError(f"server returned no frame for {device!r}",
                                  self.instrument_id)
            return self._frame(reply)
        image = self.acquire_image(device)
        self._sequence += 1
        return Frame(image=image, instrument_id=self.instrument_id,
                     settings=replace(self._settings), stage=self._stage(),
                     sequence=self._sequence,
                     original_metadata={"source": "acquire_image", "dtype": str(image.dtype)})

    def _frame(self, reply: dict[str, Any]) -> Frame:
        try:
            meta = reply["metadata"]
            image = as_array(reply["image"], self.instrument_id)
            original = dict(reply.get("original_metadata") or {})
            original.update(remote_instrument_id=meta.get("instrument_id"),
                            transport="binary" if self.binary else "json")
            return Frame.from_dict({**meta, "original_metadata": original,
                                    "evaluation": reply.get("evaluation")}, image,
                                   instrument_id=self.instrument_id)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"malformed acquire_frame reply: {exc!r}",
                                self.instrument_id) from exc

    def close(self) -> None:
        with self._lock:
            self._disconnect()
