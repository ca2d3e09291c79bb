"""The Nion objects a bridge drives, opened and closed in one place.

`usim`: Nion's STEM simulator (`nionswift-usim`), built the way its own tests build it.
`hardware`: the instrument's plug-in packages (the ones Nion Swift loads on that PC) are
imported and started, and the scan device and STEM controller are looked up by id through the
same registry. Both must be opened on the main thread (the scan hardware source needs that
thread's asyncio event loop; elsewhere it fails to appear), one per process; `close` ends every
thread the kit started (the simulator's cameras run non-daemon threads: without it the process
never exits).
"""

from __future__ import annotations

import asyncio
import importlib
import pathlib
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any


class NionStartError(RuntimeError):
    """The Nion instrument could not be opened (wrong thread, missing plug-in or device)."""


@dataclass
class NionObjects:
    """What the bridge drives: the scan hardware source and the STEM controller."""

    scan: Any
    instrument: Any
    backend: str
    sample: dict[str, Any]
    stage_limit_m: float
    _closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Stop acquisition, close hardware sources, instruments and plug-ins (idempotent)."""
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:  # noqa: BLE001 - close the rest whatever one of them does
                pass


def _start_kit(configuration: pathlib.Path) -> list[Any]:
    """Start the instrumentation kit's registries; returns its closers."""
    if threading.current_thread() is not threading.main_thread():
        raise NionStartError("the Nion instrumentation kit must be opened on the main thread")
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    from nion.instrumentation import HardwareSource, camera_base, scan_base

    HardwareSource.run()
    camera_base.run(configuration)
    scan_base.run(configuration)

    def close_kit() -> None:
        manager = HardwareSource.HardwareSourceManager()
        for source in list(manager.hardware_sources):
            if getattr(source, "is_playing", False):
                source.abort_playing(sync_timeout=5.0)
        manager.close()               # closes every hardware source and its device threads
        scan_base.stop()
        camera_base.stop()
        HardwareSource.stop()

    return [close_kit]


def _remover(folder: pathlib.Path) -> Any:
    """A closer that deletes the bridge's own configuration folder (run last: closers pop)."""
    return lambda: shutil.rmtree(folder, ignore_errors=True)


def _find(scan_id: str, instrument_id: str) -> tuple[Any, Any]:
    from nion.instrumentation import HardwareSource

    manager = HardwareSource.HardwareSourceManager()
    scan = manager.get_hardware_source_for_hardware_source_id(scan_id)
    instrument = manager.get_instrument_by_id(instrument_id)
    if scan is None:
        known = [s.hardware_source_id for s in manager.hardware_sources]
        raise NionStartError(f"no scan device {scan_id!r}; hardware sources: {known}")
    if instrument is None:
        from nion.utils import Registry

        instrument = Registry.get_component("stem_controller")
    if instrument is None:
        raise NionStartError(f"no STEM controller {instrument_id!r}")
    return scan, instrument


def open_usim(sample: int = 0) -> NionObjects:
    """Nion's simulator with sample `sample` (0 flake, 1 amorphous, 2 combined test)."""
    configuration = pathlib.Path(tempfile.mkdtemp(prefix="nion-bridge-"))
    closers = [_remover(configuration), *_start_kit(configuration)]
    try:
        from nion.usim_device import DeviceConfiguration

        titles = ["Flake", "Amorphous", "CTS"]
        if not 0 <= sample < len(titles):
            raise NionStartError(f"--sample {sample}: the simulator has samples 0..2 "
                                 f"({', '.join(titles)})")
        config = DeviceConfiguration.AcquisitionContextConfiguration(
            sample_index=sample, set_configuration_location=False)
        config.run()
        closers.append(config.stop)
        scan, instrument = _find(config.scan_module.device.scan_device_id,
                                 config.instrument_id)
        generator = config._instrument.scan_data_generator
        half = generator.stage_size_nm / 2 * 1e-9
        return NionObjects(scan, instrument, "usim",
                           {"index": sample, "title": generator.sample_titles[sample]},
                           half, closers)
    except BaseException:
        NionObjects(None, None, "usim", {}, 0.0, closers).close()
        raise


def open_hardware(plugins: list[str], scan_id: str, instrument_id: str,
                  stage_limit_m: float, configuration: str | None = None) -> NionObjects:
    """The instrument behind the given plug-in packages (each has `run()`/`stop()`, as the
    packages under `nionswift_plugin` that Nion Swift loads)."""
    location = pathlib.Path(configuration or tempfile.mkdtemp(prefix="nion-bridge-"))
    closers = [] if configuration else [_remover(location)]
    closers += _start_kit(location)
    try:
        for name in plugins:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise NionStartError(f"cannot import plug-in {name!r}: {exc}") from exc
            run = getattr(module, "run", None)
            if run is None:
                raise NionStartError(f"plug-in {name!r} has no run()")
            run()
            if hasattr(module, "stop"):
                closers.append(module.stop)
        scan, instrument = _find(scan_id, instrument_id)
        return NionObjects(scan, instrument, "hardware", {"plugins": list(plugins)},
                           stage_limit_m, closers)
    except BaseException:
        NionObjects(None, None, "hardware", {}, 0.0, closers).close()
        raise
