"""The twin behind DTMicroscope's TEM instrument-server protocol: JSON-RPC 2.0 messages
framed as netstrings over TCP (default port 9093), several requests per connection.

Method names, parameters and reply forms follow that server (`get_detectors`,
`activate_device`, `device_settings`, `get_stage` -> [x, y, z, a, b] in m and rad,
`set_stage`, `acquire_image` -> [list, shape, dtype], ..., errors as {"error": "..."}).
Additions: `get_capabilities`, `acquire_frame` (image plus frame metadata), `get_imaging`
(the settings the twin holds, beam current included), `get_control`/`set_control`/
`get_controls` (Nion's control names: C10, EHT, BeamCurrent, stage_position_m.x/.y) and,
through the shared server (`instruments.devices.rpc_server`), binary frames for clients that
ask for them. Every change a client asks for passes the server's `ControlPolicy`: focus within
the twin's range, the stage within its limit, high tension and beam current only where
`--allow-control` names them (a setting sent with the value the twin already holds is no
change and passes).
Transport faults: drop@N closes the connection instead of answering request N,
stall@N:S answers it S seconds late.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from instruments.devices.control_policy import ControlPolicy, policy_from_args
from instruments.devices.frame import StagePosition
from instruments.devices.jsonrpc import to_plain
from instruments.devices.microscope import Microscope
from instruments.devices.rpc_server import BINARY_TRANSPORT, RpcServer
from instruments.devices.stage_request import stage_target
from twins.dtm_server import API_VERSION
from twins.faults import FaultSpec, TransportFaults

DEFAULT_PORT = 9093
SETTING_KEYS = ("size", "dwell_time", "field_of_view", "defocus", "beam_energy",
                "beam_current")
# the settings (ImagingSettings fields of the same name) that are controls, by control name
CONTROLS = {"C10": "defocus", "EHT": "beam_energy", "BeamCurrent": "beam_current"}


def twin_policy(twin: Microscope, allow: list[str] | None = None,
                stage_limit_m: float | None = None) -> ControlPolicy:
    """The policy of `--allow-control` (None: focus within the twin's defocus range and
    stigmators) and `--stage-limit` (None: the twin's own travel)."""
    caps = twin.capabilities()
    travel = max(abs(v) for axis in caps.stage_range for v in axis)
    return policy_from_args(allow, caps.defocus_range,
                            travel if stage_limit_m is None else stage_limit_m)


class TemService:
    """The methods a TEM-protocol client may call, over one twin (thread-safe)."""

    def __init__(self, twin: Microscope, policy: ControlPolicy | None = None) -> None:
        self.twin = twin
        self.policy = policy or twin_policy(twin)
        self._lock = threading.RLock()
        self._active = twin.imaging().detector
        self._beam = (0.0, 0.0)

    def _detectors(self) -> list[str]:
        return list(self.twin.capabilities().detectors)

    def get_capabilities(self) -> dict[str, Any]:
        return {"server": "micagent-tem", "api_version": API_VERSION, "acquisition": True,
                "binary_transport": BINARY_TRANSPORT, "frame_metadata": True,
                "imaging_readback": True, "settings": self._settable(),
                "instrument_id": self.twin.instrument_id, "controls": self.policy.as_dict(),
                "capabilities": to_plain(self.twin.capabilities().as_dict())}

    def _settable(self) -> list[str]:
        """The settings a client may change: scan settings, and those controls the policy
        allows."""
        controlled = {setting: name for name, setting in CONTROLS.items()}
        return [key for key in SETTING_KEYS
                if key not in controlled or controlled[key] in self.policy.allowed]

    def get_imaging(self) -> dict[str, Any]:
        """The settings the next frame will be taken with, as the twin holds them."""
        return self.twin.status().settings.as_dict()

    def get_detectors(self) -> list[str]:
        return self._detectors()

    def activate_device(self, device: str) -> int:
        if device not in self._detectors():
            return 0
        with self._lock:
            self.twin.set_imaging(replace(self.twin.imaging(), detector=device))
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
        fov = settings.get("field_of_view")
        if isinstance(fov, list | tuple):
            if len(fov) != 2 or not math.isclose(fov[0], fov[1]):
                raise ValueError(f"field_of_view {fov} must be square")
            fov = fov[0]
        with self._lock:
            controlled = {}
            held = self.twin.imaging()         # the beam as the console may have left it
            for name, key in CONTROLS.items():
                if key in settings and float(settings[key]) != getattr(held, key):
                    controlled[key] = self.policy.check(name, settings[key])
            wanted = replace(
                held, detector=device, fov=held.fov if fov is None else float(fov),
                pixels=int(settings.get("size", held.pixels)),
                dwell=float(settings.get("dwell_time", held.dwell)), **controlled)
            self.twin.set_imaging(wanted)
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
            self.policy.check_stage("x", target[0])
            self.policy.check_stage("y", target[1])
            self.twin.move_stage(StagePosition(x=target[0], y=target[1], z=target[2],
                                               tilt=math.degrees(target[3])))
            return {"new_stage": self.get_stage()}

    # --- controls (Nion's names) ------------------------------------------------------------
    def get_controls(self) -> dict[str, float]:
        held = self.twin.status()
        stage = {"stage_position_m.x": held.stage.x, "stage_position_m.y": held.stage.y}
        return {**{name: float(getattr(held.settings, key)) for name, key in CONTROLS.items()},
                **stage}

    def get_control(self, name: str) -> float:
        controls = self.get_controls()
        if name not in controls:
            raise ValueError(f"unknown control {name!r}; known: {sorted(controls)}")
        return controls[name]

    def set_control(self, name: str, value: float) -> float:
        """Set a control the policy allows (else SafetyRefused, nothing set); the value read
        back."""
        value = self.policy.check(name, value)
        self.get_control(name)
        with self._lock:
            if name in CONTROLS:
                self.twin.set_imaging(replace(self.twin.imaging(), **{CONTROLS[name]: value}))
            else:
                axis = name.rsplit(".", 1)[1]
                self.set_stage({axis: value}, relative=False)
        return self.get_control(name)

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
                 faults: FaultSpec | None = None, policy: ControlPolicy | None = None,
                 **limits: Any) -> None:
        """`limits`: idle_timeout, max_workers, max_request of `RpcServer`."""
        self.service = TemService(twin, policy)
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
