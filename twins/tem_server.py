"""The twin behind DTMicroscope's TEM instrument-server protocol: JSON-RPC 2.0 messages
framed as netstrings over TCP (default port 9093), several requests per connection.

Method names, parameters and reply forms follow that server (`get_detectors`,
`activate_device`, `device_settings`, `get_stage` -> [x, y, z, a, b] in m and rad,
`set_stage`, `acquire_image` -> [list, shape, dtype], ..., errors as {"error": "..."}).
Additions: `get_capabilities`, `acquire_frame` (image plus frame metadata) and, through the
shared server (`instruments.devices.rpc_server`), binary frames for clients that ask for them.
Transport faults: drop@N closes the connection instead of answering request N,
stall@N:S answers it S seconds late.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from instruments.devices.frame import ImagingSettings, StagePosition
from instruments.devices.jsonrpc import to_plain
from instruments.devices.microscope import Microscope
from instruments.devices.rpc_server import BINARY_TRANSPORT, RpcServer
from instruments.devices.stage_request import stage_target
from twins.dtm_server import API_VERSION
from twins.faults import FaultSpec, TransportFaults

DEFAULT_PORT = 9093
SETTING_KEYS = ("size", "dwell_time", "field_of_view", "defocus", "beam_energy",
                "beam_current")


class TemService:
    """The methods a TEM-protocol client may call, over one twin (thread-safe)."""

    def __init__(self, twin: Microscope) -> None:
        self.twin = twin
        self._lock = threading.RLock()
        self._settings = ImagingSettings()
        self._active = self._settings.detector
        self._beam = (0.0, 0.0)

    def _detectors(self) -> list[str]:
        return list(self.twin.capabilities().detectors)

    def get_capabilities(self) -> dict[str, Any]:
        return {"server": "micagent-tem", "api_version": API_VERSION, "acquisition": True,
                "binary_transport": BINARY_TRANSPORT, "frame_metadata": True,
                "settings": list(SETTING_KEYS), "instrument_id": self.twin.instrument_id,
                "capabilities": to_plain(self.twin.capabilities().as_dict())}

    def get_detectors(self) -> list[str]:
        return self._detectors()

    def activate_device(self, device: str) -> int:
        if device not in self._detectors():
            return 0
        with self._lock:
            self._settings = self.twin.set_imaging(replace(self._settings, detector=device))
            self._active = device
        return 1

    def device_settings(self, device: str, **settings: Any) -> int:
        """Set scan settings of a detector: size (px), dwell_time (s), field_of_view
        (m, or [m, m]), defocus (m), beam_energy (eV), beam_current (A)."""
        if device not in self._detectors():
            return 0
        unknown = set(settings) - set(SETTING_KEYS)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)} for {device}; "
                             f"known: {list(SETTING_KEYS)}")
        fov = settings.get("field_of_view", self._settings.fov)
        if isinstance(fov, list | tuple):
            if len(fov) != 2 or not math.isclose(fov[0], fov[1]):
                raise ValueError(f"field_of_view {fov} must be square")
            fov = fov[0]
        wanted = replace(
            self._settings, detector=device, fov=float(fov),
            pixels=int(settings.get("size", self._settings.pixels)),
            dwell=float(settings.get("dwell_time", self._settings.dwell)),
            defocus=float(settings.get("defocus", self._settings.defocus)),
            beam_energy=float(settings.get("beam_energy", self._settings.beam_energy)),
            beam_current=float(settings.get("beam_current", self._settings.beam_current)))
        with self._lock:
            self._settings = self.twin.set_imaging(wanted)
            self._active = device
        return 1

    def get_stage(self) -> list[float]:
        stage = self.twin.status().stage
        return [stage.x, stage.y, stage.z, math.radians(stage.tilt), 0.0]

    def set_stage(self, stage_positions: Any, relative: bool = True) -> dict[str, list[float]]:
        """Move to (or by, if relative) x, y, z (m) and a (alpha tilt, rad); b must be 0."""
        with self._lock:
            target = stage_target(stage_positions, self.get_stage(), relative,
                                  movable=("x", "y", "z", "a"))
            self.twin.move_stage(StagePosition(x=target[0], y=target[1], z=target[2],
                                               tilt=math.degrees(target[3])))
            return {"new_stage": self.get_stage()}

    def _acquire(self, device: str, settings: dict[str, Any]):
        if settings or device != self._active:
            if not self.device_settings(device, **settings):
                return None
        with self._lock:
            return self.twin.acquire()

    def acquire_image(self, device: str, **settings: Any) -> Any:
        """One frame (on the wire [list, shape, dtype], or binary), or None for an unknown
        device."""
        frame = self._acquire(device, settings)
        return None if frame is None else frame.image

    def acquire_frame(self, device: str, **settings: Any) -> Any:
        """Image, frame metadata, instrument metadata and twin ground truth."""
        frame = self._acquire(device, settings)
        if frame is None:
            return None
        return {"image": np.asarray(frame.image), "metadata": to_plain(frame.metadata()),
                "original_metadata": to_plain(frame.original_metadata),
                "evaluation": to_plain(frame.evaluation)}

    def acquire_image_stack(self, device: str, frames: int = 2, **settings: Any) -> Any:
        """[list, shape, dtype] of `frames` successive frames stacked (frames, H, W)."""
        if not 1 <= int(frames) <= 64:
            raise ValueError("frames must be within 1..64")
        stack = []
        for _ in range(int(frames)):
            frame = self._acquire(device, settings)
            if frame is None:
                return None
            stack.append(frame.image)
        return np.stack(stack)

    def acquire_spectrum(self, device: str, **settings: Any) -> Any:
        raise ValueError(f"the SEM twin has no spectrometer ({device!r})")

    def acquire_spectrum_points(self, device: str, points: list, **settings: Any) -> Any:
        raise ValueError(f"the SEM twin has no spectrometer ({device!r})")

    def set_beam_position(self, x: float, y: float) -> int:
        self._beam = (float(x), float(y))
        return 1

    def get_vacuum(self) -> float:
        status = self.twin.status()
        return 1e-5 if status.vacuum_ok in (True, None) else 1.0

    def get_microscope_status(self) -> str:
        return "Idle" if self.twin.status().connected else "Offline"

    def aberration_correction(self, order: int, **settings: Any) -> int:
        return 1

    def close(self) -> int:
        return 1


class TemServer:
    """The shared netstring JSON-RPC server over one twin."""

    def __init__(self, twin: Microscope, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 faults: FaultSpec | None = None, **limits: Any) -> None:
        """`limits`: idle_timeout, max_workers, max_request of `RpcServer`."""
        self.service = TemService(twin)
        self.tcp = RpcServer(self.service, host, port, faults=TransportFaults(faults),
                             **limits)

    @property
    def address(self) -> str:
        return self.tcp.address

    def serve_forever(self) -> None:
        self.tcp.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self.tcp.stop()
        self.service.twin.close()
