"""Nion Swift instrumentation bridge: a Nion STEM (or Nion's simulator) over the TEM JSON-RPC
netstring protocol, run in the instrument PC's own Python (stdlib, numpy, the Nion packages).

    PYTHONPATH=CLONE python -P -m instruments.devices.bridges.nion --port 0 [--host H]
        [--sample N] [--backend usim|hardware] [--plugin MODULE ...] [--stage-limit M]
        [--allow-control NAME[=MIN:MAX] ...]

(`-P` and PYTHONPATH: the instrument's Python does not hold micagent, and a folder called
`instruments/` in the working directory must not replace this one.)

The first line printed is `READY tem://HOST:PORT`. Methods: DTMicroscope's TEM set
(`get_detectors`, `activate_device`, `device_settings`, `get_stage`, `set_stage`,
`acquire_image`, `acquire_image_stack`, `set_beam_position`, `get_vacuum`,
`get_microscope_status`, `aberration_correction`, `acquire_spectrum*`, `close`) plus
`get_capabilities`, `acquire_frame` (image, calibrated settings, instrument metadata),
`get_control`, `set_control` and `get_controls`. Units on the wire: m, s, rad.

Whatever a client sets passes the server's `ControlPolicy` first: stage positions within
`--stage-limit`, focus and stigmators within their ranges, every other control (high tension,
beam current, convergence angle, ...) refused unless `--allow-control` names it.

Every call runs on the main thread, one at a time (the kit is built there and two overlapping
recordings would fail); SIGTERM/SIGINT stop the server and close the instrument.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np

from instruments.devices.bridges.main_thread import MainThreadExecutor
from instruments.devices.bridges.nion_backend import (
    NionObjects,
    NionStartError,
    open_hardware,
    open_usim,
)
from instruments.devices.control_policy import (
    ControlPolicy,
    add_arguments,
    parse_allow,
    policy_from_args,
)
from instruments.devices.rpc_server import BINARY_TRANSPORT, RpcServer
from instruments.devices.stage_request import stage_target

API_VERSION = 1
SETTINGS = ("size", "dwell_time", "field_of_view", "defocus")
PIXEL_OPTIONS = (64, 128, 256, 512, 1024, 2048)
DWELL_RANGE_S = (1e-7, 1e-3)
DEFOCUS_RANGE_M = (-5e-6, 5e-6)
CONTROL_TIMEOUT_MS = 3000
HARDWARE_STAGE_LIMIT_M = 50e-6
REPORTED_CONTROLS = ("C10", "C12.x", "C12.y", "C30", "EHT", "BeamCurrent", "ConvergenceAngle",
                     "beam_shift_m.x", "beam_shift_m.y", "stage_position_m.x",
                     "stage_position_m.y")
_LENGTH_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "nm": 1e-9, "pm": 1e-12}


def _metres(value: float, units: str) -> float:
    if units not in _LENGTH_UNITS:
        raise ValueError(f"frame calibration in {units!r}, not a length unit")
    return value * _LENGTH_UNITS[units]


class NionService:
    """The TEM protocol's methods over one Nion scan device and STEM controller."""

    def __init__(self, nion: NionObjects, policy: ControlPolicy | None = None) -> None:
        self.nion = nion
        self.policy = policy or policy_from_args(None, DEFOCUS_RANGE_M, nion.stage_limit_m)
        self.scan, self.instrument = nion.scan, nion.instrument
        self._channels = [self.scan.get_channel_state(i)
                          for i in range(self.scan.get_channel_count())]
        self._active = ""
        self.activate_device(self._channels[0].name)
        self._sequence = 0
        self.instrument_id = f"nion-{nion.backend}:{self.instrument.instrument_id}"

    # --- what the instrument offers --------------------------------------------------------
    def get_capabilities(self) -> dict[str, Any]:
        limit = self.nion.stage_limit_m
        return {"server": "micagent-nion-bridge", "api_version": API_VERSION,
                "acquisition": True, "binary_transport": BINARY_TRANSPORT,
                "frame_metadata": True, "settings": list(SETTINGS), "imaging_readback": True,
                "instrument_id": self.instrument_id, "backend": self.nion.backend,
                "sample": self.nion.sample, "controls": self.policy.as_dict(),
                "capabilities": {
                    "detectors": self.get_detectors(),
                    "fov_range": [1e-9, 2 * limit], "pixel_options": list(PIXEL_OPTIONS),
                    "dwell_range": list(DWELL_RANGE_S),
                    "defocus_range": list(DEFOCUS_RANGE_M), "can_move_stage": True,
                    "stage_range": [[-limit, limit], [-limit, limit]],
                    "has_overview": False, "has_spectra": False}}

    def get_detectors(self) -> list[str]:
        return [channel.name for channel in self._channels]

    def _channel_index(self, device: str) -> int:
        for index, channel in enumerate(self._channels):
            if channel.name == device:
                return index
        raise ValueError(f"unknown detector {device!r}; known: {self.get_detectors()}")

    # --- settings ---------------------------------------------------------------------------
    def activate_device(self, device: str) -> int:
        index = self._channel_index(device)
        for i in range(len(self._channels)):   # one channel: a frame records one detector
            self.scan.set_channel_enabled(i, i == index)
        self._active = device
        return 1

    def device_settings(self, device: str, **settings: Any) -> int:
        """size (px), dwell_time (s), field_of_view (m, or [m, m] square), defocus (m, the
        C10 aberration)."""
        self._channel_index(device)
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; this bridge sets "
                             f"{list(SETTINGS)} (column settings stay with the operator)")
        params = self.scan.get_current_frame_parameters()
        if "size" in settings:
            size = int(settings["size"])
            if size not in PIXEL_OPTIONS:
                raise ValueError(f"size {size} px: choose one of {list(PIXEL_OPTIONS)}")
            from nion.utils import Geometry

            params.pixel_size = Geometry.IntSize(size, size)
        if "dwell_time" in settings:
            dwell = float(settings["dwell_time"])
            if not DWELL_RANGE_S[0] <= dwell <= DWELL_RANGE_S[1]:
                raise ValueError(f"dwell_time {dwell:g} s outside {DWELL_RANGE_S}")
            params.pixel_time_us = dwell * 1e6
        if "field_of_view" in settings:
            fov = settings["field_of_view"]
            if isinstance(fov, list | tuple):
                if len(fov) != 2 or not math.isclose(fov[0], fov[1]):
                    raise ValueError(f"field_of_view {fov} must be square")
                fov = fov[0]
            fov = float(fov)
            if not 1e-9 <= fov <= 2 * self.nion.stage_limit_m:
                raise ValueError(f"field_of_view {fov:g} m outside the instrument's range")
            params.fov_nm = fov * 1e9
        self.scan.set_current_frame_parameters(params)
        if "defocus" in settings:
            self.set_control("C10", float(settings["defocus"]))
        return self.activate_device(device)

    def get_imaging(self) -> dict[str, Any]:
        """The settings the next frame will be taken with (ImagingSettings' fields: m, s, eV,
        A), as the instrument holds them."""
        from nion.instrumentation import scan_base

        params = self.scan.get_current_frame_parameters()
        width = params.pixel_size.width
        calibration = scan_base.get_scan_calibrations(params)[1]
        controls = self.get_controls()
        return {"fov": _metres(calibration.scale * width, calibration.units), "pixels": width,
                "dwell": params.pixel_time_us * 1e-6, "detector": self._active,
                "defocus": controls.get("C10", 0.0), "beam_energy": controls.get("EHT", 0.0),
                "beam_current": controls.get("BeamCurrent", 0.0)}

    # --- controls ---------------------------------------------------------------------------
    def get_control(self, name: str) -> float:
        found, value = self.instrument.TryGetVal(name)
        if not found or value is None:
            raise ValueError(f"unknown control {name!r}")
        return float(value)

    def set_control(self, name: str, value: float) -> float:
        """Set a control the policy allows (else SafetyRefused, nothing set) through
        SetValAndConfirm; returns the value read back."""
        return self._set_control(name, self.policy.check(name, value))

    def _set_control(self, name: str, value: float) -> float:
        self.get_control(name)
        if not self.instrument.SetValAndConfirm(name, float(value), 1.0, CONTROL_TIMEOUT_MS):
            raise RuntimeError(f"control {name} did not confirm {value!r}")
        return self.get_control(name)

    def get_controls(self) -> dict[str, float]:
        out = {}
        for name in REPORTED_CONTROLS:
            found, value = self.instrument.TryGetVal(name)
            if found and value is not None:
                out[name] = float(value)
        return out

    # --- stage ------------------------------------------------------------------------------
    def get_stage(self) -> list[float]:
        """[x, y, z, alpha, beta] in m and rad (this stage moves x and y)."""
        return [self.get_control("stage_position_m.x"), self.get_control("stage_position_m.y"),
                0.0, 0.0, 0.0]

    def set_stage(self, stage_positions: Any, relative: bool = True) -> dict[str, list[float]]:
        """Move to (or by, if relative) x and y (m); z, a and b must stay 0."""
        x, y, *_ = stage_target(stage_positions, self.get_stage(), relative, movable=("x", "y"))
        target = {"x": x, "y": y}
        for axis, value in target.items():
            self.policy.check_stage(axis, value)
        for axis, value in target.items():
            self._set_control(f"stage_position_m.{axis}", value)
        return {"new_stage": self.get_stage()}

    # --- acquisition ------------------------------------------------------------------------
    def _record(self, device: str, settings: dict[str, Any]) -> Any:
        """One frame of `device` (its xdata: data plus Nion's calibrations and metadata)."""
        if settings:
            self.device_settings(device, **settings)
        if device != self._active:
            self.activate_device(device)
        if self.scan.is_recording:
            raise RuntimeError("another recording is running on this scan device")
        params = self.scan.get_current_frame_parameters()
        try:
            xdatas = self.scan.record_immediate(params)
        except AssertionError as exc:   # the kit's own check for overlapping recordings
            raise RuntimeError(f"the scan device refused the recording: {exc!r}") from exc
        for xdata in xdatas:
            channel = (xdata.metadata.get("hardware_source") or {}).get("channel_name")
            if xdata is not None and channel == device:
                return xdata
        raise RuntimeError(f"the recording returned no {device} channel")

    def acquire_image(self, device: str, **settings: Any) -> Any:
        """One float32 frame (the wire carries it as [list, shape, dtype] or binary)."""
        return self._record(device, settings).data

    def acquire_frame(self, device: str, **settings: Any) -> dict[str, Any]:
        """Image, settings from the frame's own calibration, stage, instrument metadata."""
        xdata = self._record(device, settings)
        image = xdata.data
        calibrations = {axis: {"offset": c.offset, "scale": c.scale, "units": c.units}
                        for axis, c in zip(("y", "x"), xdata.dimensional_calibrations,
                                           strict=True)}
        height, width = image.shape
        fov_y = _metres(calibrations["y"]["scale"] * height, calibrations["y"]["units"])
        fov_x = _metres(calibrations["x"]["scale"] * width, calibrations["x"]["units"])
        if not math.isclose(fov_x, fov_y, rel_tol=1e-6):
            raise ValueError(f"frame is not square in physical units ({fov_x} x {fov_y} m)")
        controls = self.get_controls()
        params = xdata.metadata.get("scan", {}).get("scan_device_parameters", {})
        self._sequence += 1
        stage = self.get_stage()
        metadata = {
            "frame_id": str(uuid.uuid4()), "sequence": self._sequence,
            "instrument_id": self.instrument_id, "timestamp": time.time(),
            "stage": {"x": stage[0], "y": stage[1], "z": 0.0, "tilt": 0.0},
            "settings": {"fov": fov_x, "pixels": width,
                         "dwell": float(params.get("pixel_time_us", 0.0)) * 1e-6,
                         "detector": device, "defocus": controls.get("C10", 0.0),
                         "beam_energy": controls.get("EHT", 0.0),
                         "beam_current": controls.get("BeamCurrent", 0.0)}}
        original = {"backend": self.nion.backend, "sample": self.nion.sample,
                    "controls": controls, "calibrations": calibrations,
                    "intensity_calibration": {
                        "offset": xdata.intensity_calibration.offset,
                        "scale": xdata.intensity_calibration.scale,
                        "units": xdata.intensity_calibration.units},
                    "nion_metadata": _plain(dict(xdata.metadata))}
        return {"image": image, "metadata": metadata, "original_metadata": original,
                "evaluation": {}}

    def acquire_image_stack(self, device: str, frames: int = 2, **settings: Any) -> Any:
        if not 1 <= int(frames) <= 64:
            raise ValueError("frames must be within 1..64")
        return np.stack([self._record(device, settings if i == 0 else {}).data
                         for i in range(int(frames))])

    def acquire_spectrum(self, device: str, **settings: Any) -> Any:
        raise ValueError(f"this bridge serves scan images only ({device!r})")

    def acquire_spectrum_points(self, device: str, points: list, **settings: Any) -> Any:
        raise ValueError(f"this bridge serves scan images only ({device!r})")

    def set_beam_position(self, x: float, y: float) -> int:
        """Park the probe at fractional scan coordinates (0..1) of the current scan."""
        x, y = float(x), float(y)
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"beam position ({x}, {y}) outside the scan (0..1)")
        from nion.utils import Geometry

        self.instrument.set_probe_position(Geometry.FloatPoint(y=y, x=x))
        return 1

    def get_vacuum(self) -> None:
        """None: vacuum is not reported through the instrumentation kit."""
        return None

    def get_microscope_status(self) -> str:
        return "Acquiring" if self.scan.is_recording or self.scan.is_playing else "Idle"

    def aberration_correction(self, order: int, **settings: Any) -> int:
        raise ValueError("aberration correction is run by the operator in Nion Swift, not "
                         "through this bridge")

    def close(self) -> int:
        """Stop any scan in progress (the bridge keeps serving)."""
        if self.scan.is_playing:
            self.scan.abort_playing(sync_timeout=5.0)
        return 1


def _plain(value: Any) -> Any:
    """JSON-shaped copy of Nion metadata (tuples to lists, other objects to str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def open_nion(args: argparse.Namespace) -> NionObjects:
    """The instrument; on the simulator `--stage-limit`, where given, narrows its stage."""
    if args.backend == "usim":
        nion = open_usim(args.sample)
        if args.stage_limit is not None:
            nion.stage_limit_m = min(nion.stage_limit_m, args.stage_limit)
        return nion
    limit = HARDWARE_STAGE_LIMIT_M if args.stage_limit is None else args.stage_limit
    return open_hardware(args.plugin, args.scan_device, args.instrument, limit)


def serve(args: argparse.Namespace) -> int:
    """Open the instrument on this (main) thread, serve until SIGTERM/SIGINT, close."""
    executor = MainThreadExecutor()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: executor.stop())
    try:
        nion = open_nion(args)
    except NionStartError as exc:
        print(f"nion bridge: {exc}", file=sys.stderr)
        return 2
    server = None
    run = _logged(executor.call) if args.log else executor.call
    try:
        policy = policy_from_args(args.allow_control, DEFOCUS_RANGE_M, nion.stage_limit_m)
        server = RpcServer(NionService(nion, policy), args.host, args.port, executor=run,
                           idle_timeout=args.idle_timeout)
        server.start()
        print(f"READY tem://{server.address}", flush=True)
        executor.run()
    finally:
        if server is not None:
            server.stop()
        nion.close()
    return 0


def _logged(call):
    """The executor with one line per call on stdout: `CALL <method> <seconds> ok|<error>`."""
    def run(func, args: tuple, kwargs: dict) -> Any:
        started, outcome = time.monotonic(), "ok"
        try:
            return call(func, args, kwargs)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            print(f"CALL {func.__name__} {time.monotonic() - started:.3f} {outcome}",
                  flush=True)
    return run


def _exit_without_hanging(code: int, grace_s: float = 5.0) -> None:
    """Exit; if a thread the kit started is still alive after `grace_s`, say which and end
    the process anyway (a bridge that cannot exit holds the instrument)."""
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if alive:
        print(f"nion bridge: threads still running after close: {alive}; exiting anyway",
              file=sys.stderr, flush=True)
        import os

        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m instruments.devices.bridges.nion",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9093, help="0 picks a free port")
    parser.add_argument("--backend", choices=("usim", "hardware"), default="usim")
    parser.add_argument("--sample", type=int, default=0,
                        help="usim: 0 flake, 1 amorphous, 2 combined test sample")
    parser.add_argument("--plugin", action="append", default=[],
                        help="hardware: plug-in package to start (repeatable)")
    parser.add_argument("--scan-device", default="superscan",
                        help="hardware: scan hardware source id")
    parser.add_argument("--instrument", default="autostem_controller",
                        help="hardware: STEM controller id")
    parser.add_argument("--stage-limit", type=float, default=None,
                        help="stage travel allowed, +/- m on x and y (hardware: default "
                             f"{HARDWARE_STAGE_LIMIT_M:g}; usim: at most the simulator's)")
    add_arguments(parser)
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="close connections silent this long (s)")
    parser.add_argument("--log", action="store_true",
                        help="print one line per call served (CALL method seconds outcome)")
    args = parser.parse_args(argv)
    try:
        parse_allow(args.allow_control or [])
    except ValueError as exc:
        parser.error(str(exc))
    _exit_without_hanging(serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
