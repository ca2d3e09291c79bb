"""TwinMicroscope: the in-process SEM digital twin behind the `Microscope` protocol.

It renders the virtual `Specimen` at the requested FOV, pixels, dwell, focus and detector,
applies the imaging physics of `twins.physics` (probe/defocus blur, shot noise, scan lines,
charging, drift) and the frame-level faults of a `FaultSpec` (nan/inf/shape@N, stuck, slow;
stall/drop are transport faults for the servers and are ignored here). Time is simulated
(frame time = pixels^2 * dwell plus line overhead), so drift is deterministic by seed.
Frames carry ground truth in `frame.evaluation`; decisions must never read it.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from instruments.devices.errors import InstrumentUnreachable, SafetyRefused
from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.devices.microscope import Capabilities, InstrumentStatus
from instruments.devices.safety import dose_per_nm2
from twins import physics
from twins.faults import FaultSpec
from twins.specimen import Specimen


class TwinMicroscope:
    """A seeded SEM twin; same seed and same calls give the same images. Calls from several
    threads (a threaded server) are serialised."""

    def __init__(self, seed: int = 0, specimen: Specimen | None = None,
                 faults: FaultSpec | None = None, instrument_id: str = "twin",
                 params: physics.PhysicsParams | None = None) -> None:
        self.seed = seed
        self.specimen = specimen if specimen is not None else Specimen(seed)
        self.faults = faults or FaultSpec()
        self.instrument_id = instrument_id
        self.params = params or physics.PhysicsParams()
        self._settings = ImagingSettings()
        self._stage = StagePosition()
        self._noise = physics.NoiseSource(seed)
        self._acquisitions = 0
        self._moves = 0
        self._clock = 0.0  # simulated seconds since the last stage move
        self._dose_here = 0.0  # e/nm^2 delivered since the last stage move
        self._drift_dir = self._new_drift_direction()
        self._closed = False
        self._lock = threading.RLock()
        (sx, sy) = self.specimen.extent
        self._caps = Capabilities(detectors=("SE", "BSE"), fov_range=(0.5e-6, 100e-6),
                                  pixel_options=(128, 224, 256, 512, 1024),
                                  dwell_range=(1e-7, 1e-4), defocus_range=(-50e-6, 50e-6),
                                  can_move_stage=True, stage_range=(sx, sy))

    # --- protocol ---------------------------------------------------------------------------
    def status(self) -> InstrumentStatus:
        return InstrumentStatus(instrument_id=self.instrument_id, connected=not self._closed,
                                stage=self._stage, settings=self._settings, vacuum_ok=True,
                                beam_on=not self._closed,
                                extra={"acquisitions": self._acquisitions, "seed": self.seed,
                                       "simulated_time_s": self._clock})

    def capabilities(self) -> Capabilities:
        return self._caps

    # --- implementations (called under the lock) --------------------------------------------
    def _set_imaging(self, settings: ImagingSettings) -> ImagingSettings:
        self._check_open()
        caps, where = self._caps, self.instrument_id
        checks = (("fov", settings.fov, caps.fov_range), ("dwell", settings.dwell,
                                                          caps.dwell_range),
                  ("defocus", settings.defocus, caps.defocus_range))
        for name, value, (lo, hi) in checks:
            if not (np.isfinite(value) and lo <= value <= hi):
                raise SafetyRefused(f"{name}={value!r} outside the twin's range [{lo}, {hi}]",
                                    where)
        if not (isinstance(settings.pixels, int | np.integer) and 16 <= settings.pixels <= 4096):
            raise SafetyRefused(f"pixels={settings.pixels!r} must be an int in [16, 4096]", where)
        if settings.detector not in caps.detectors:
            raise SafetyRefused(f"detector {settings.detector!r} not available; have "
                                f"{caps.detectors}", where)
        if not (np.isfinite(settings.beam_current) and 0 < settings.beam_current <= 1e-6):
            raise SafetyRefused(f"beam_current={settings.beam_current!r} outside (0, 1e-6] A",
                                where)
        self._settings = settings
        return settings

    def _move_stage(self, position: StagePosition) -> StagePosition:
        self._check_open()
        (x0, x1), (y0, y1) = self._caps.stage_range
        if not (np.isfinite(position.x) and np.isfinite(position.y)
                and x0 <= position.x <= x1 and y0 <= position.y <= y1):
            raise SafetyRefused(f"stage target ({position.x!r}, {position.y!r}) outside travel "
                                f"{self._caps.stage_range}", self.instrument_id)
        if self.faults.stuck_stage:
            return self._stage
        self._stage = position
        self._moves += 1
        self._clock = 0.0
        self._dose_here = 0.0
        self._drift_dir = self._new_drift_direction()
        return self._stage

    def _acquire(self) -> Frame:
        self._check_open()
        self._acquisitions += 1
        n = self._acquisitions
        if self.faults.slow_seconds > 0:
            time.sleep(self.faults.slow_seconds)
        s, stage = self._settings, self._stage
        frame_time = s.pixels * (s.pixels * s.dwell + self.params.line_overhead)
        offset = physics.drift_offset(self._clock + frame_time / 2, self._drift_dir,
                                      self.params)
        dose = dose_per_nm2(s)
        self._dose_here += dose
        image = self.render(stage, s, offset=offset, accumulated_dose=self._dose_here,
                            frame_seed=n)
        self._clock += frame_time
        image = self._inject_faults(image, n)
        focus_error = s.defocus - self._true_focus(stage)
        return Frame(
            image=image, instrument_id=self.instrument_id, settings=s, stage=stage, sequence=n,
            original_metadata={"twin": {"seed": self.seed, "frame_time_s": frame_time,
                                        "dose_e_per_nm2": dose,
                                        "drift_m": [float(offset[0]), float(offset[1])]}},
            evaluation={**self.specimen.evaluation(stage, s.fov),
                        "focus_error_m": float(focus_error)},
        )

    # --- protocol: state-changing calls ------------------------------------------------------
    def set_imaging(self, settings: ImagingSettings) -> ImagingSettings:
        """Apply settings within the twin's capabilities (else SafetyRefused, unchanged)."""
        with self._lock:
            return self._set_imaging(settings)

    def imaging(self) -> ImagingSettings:
        with self._lock:
            return self._settings

    def move_stage(self, position: StagePosition) -> StagePosition:
        """Move to `position` (inside the stage travel, else SafetyRefused). A stuck stage
        (fault `stuck`) stays where it is and reports its real position."""
        with self._lock:
            return self._move_stage(position)

    def acquire(self) -> Frame:
        """Scan one frame at the current stage position and settings."""
        with self._lock:
            return self._acquire()

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # --- twin extras ------------------------------------------------------------------------
    def ground_truth(self, position: StagePosition | tuple[float, float], fov: float) -> dict:
        """Evaluation dict (label, class_fractions, substrate_fraction) of a FOV."""
        return self.specimen.evaluation(position, fov)

    def render(self, stage: StagePosition, settings: ImagingSettings,
               offset: np.ndarray | None = None, accumulated_dose: float | None = None,
               frame_seed: int = 0) -> np.ndarray:
        """The physics pipeline for one frame (pure function of its arguments and seed)."""
        p = self.params
        rng = np.random.default_rng([self.seed, frame_seed, 11])
        dx, dy = (0.0, 0.0) if offset is None else (float(offset[0]), float(offset[1]))
        centre = (stage.x + dx, stage.y + dy)
        n, pixel = settings.pixels, settings.pixel_size
        signal, blocks = self.specimen.render(centre, settings.fov, n, settings.detector)
        focus_error = settings.defocus - self._true_focus(stage)
        signal = physics.blur(signal, physics.blur_sigma_px(focus_error, pixel, p))
        efficiency = p.bse_efficiency if settings.detector == "BSE" else p.se_efficiency
        detected = physics.electrons_per_pixel(settings.dwell, settings.beam_current) * efficiency
        image = physics.shot_noise(signal, detected, self._noise.normals((n, n), rng))
        image = physics.scan_line_noise(image, rng, p)
        dose = dose_per_nm2(settings) if accumulated_dose is None else accumulated_dose
        strength = physics.charging_strength(dose, p)
        if settings.detector == "BSE":
            strength *= 0.3  # BSE are energetic; charging shows far less
        insulating = [b for region, b in blocks if region.insulating]
        if strength > 0 and insulating:
            mask = np.zeros((n, n), np.float32)
            for r0, r1, c0, c1 in insulating:
                mask[r0:r1, c0:c1] = 1.0
            image = physics.charging(image, mask, strength, rng)
        return image

    def _true_focus(self, stage: StagePosition) -> float:
        return self.specimen.focus_height(stage.x, stage.y) + stage.z

    def _new_drift_direction(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self._moves, 13])
        angle = rng.uniform(0, 2 * np.pi)
        return np.array([np.cos(angle), np.sin(angle)])

    def _inject_faults(self, image: np.ndarray, n: int) -> np.ndarray:
        f = self.faults
        if n in f.nan_at or n in f.inf_at:
            image = image.copy()
            h, w = image.shape
            image[h // 4: h // 2, w // 4: w // 2] = np.nan if n in f.nan_at else np.inf
        if n in f.shape_at:
            image = image[:, : image.shape[1] // 2].copy()
        return image

    def _check_open(self) -> None:
        if self._closed:
            raise InstrumentUnreachable("twin microscope is closed", self.instrument_id)
