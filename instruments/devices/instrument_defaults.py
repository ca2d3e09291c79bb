"""A session's imaging settings and safety envelope from what the instrument reports.

Imaging (`run` with no imaging flags): a setting the user did not give (None) is taken from the
instrument's `Capabilities`:
- FOV: the built-in 20 um where the instrument's FOV range holds it and its stage range is at
  least TILES_PER_AXIS such tiles wide; else the largest FOV that gives TILES_PER_AXIS tiles
  across the stage range (a survey of single-tile fields would see one place), clipped to the
  FOV range (on Nion's simulator: +-0.5 um of stage -> 100 nm);
- pixels: the built-in 256 where offered, else the offered size nearest to it;
- dwell: the built-in 2 us clipped to the dwell range;
- detector: the instrument's first.

Envelope: the stage x/y, FOV and dwell ranges start as the instrument's reported ranges; a range
from `--envelope`/`--limit` can only narrow them (its intersection with the instrument's; a
range with nothing in common is an error). The other limits (dose, moves, tilt, z, free zone)
are the user's or SafetyEnvelope's defaults, as before.
"""

from __future__ import annotations

from typing import Any

from instruments.devices.frame import ImagingSettings
from instruments.devices.microscope import Capabilities

TILES_PER_AXIS = 10
BUILT_IN = ImagingSettings()
IMAGING_KEYS = ("fov", "pixels", "dwell", "detector")
RANGES = ("stage_x", "stage_y", "fov", "dwell")


class ImagingError(ValueError):
    """Envelope limits the instrument's ranges leave nothing of."""


def describe(imaging: dict[str, Any], envelope: dict[str, Any], given_imaging: dict[str, Any],
             given_envelope: dict[str, Any]) -> str:
    """One line for the terminal: the values a session runs with, which of them came from
    the instrument and which of the user's ranges the instrument's narrowed."""
    im, env = imaging, envelope
    line = (f"imaging: FOV {im['fov']:.3g} m, {im['pixels']} px, dwell {im['dwell']:.3g} s, "
            f"detector {im['detector']}; envelope: FOV {_span(env['fov'])} m, dwell "
            f"{_span(env['dwell'])} s, stage x {_span(env['stage_x'])} m, y "
            f"{_span(env['stage_y'])} m")
    taken = [k for k in IMAGING_KEYS if given_imaging.get(k) is None]
    taken += [f"envelope {k}" for k in RANGES if k not in given_envelope]
    cut = [f"{k} {_span(given_envelope[k])} -> {_span(env[k])}" for k in RANGES
           if k in given_envelope and list(given_envelope[k]) != list(env[k])]
    if taken:
        line += f"; from the instrument: {', '.join(taken)}"
    if cut:
        line += f"; narrowed to the instrument's ranges: {', '.join(cut)}"
    return line


def _span(pair: Any) -> str:
    return f"[{pair[0]:.3g}, {pair[1]:.3g}]"


def instrument_ranges(caps: Capabilities) -> dict[str, tuple[float, float]]:
    """The envelope ranges the instrument reports."""
    (sx, sy) = caps.stage_range
    return {"stage_x": tuple(sx), "stage_y": tuple(sy), "fov": tuple(caps.fov_range),
            "dwell": tuple(caps.dwell_range)}


def narrowed_envelope(caps: Capabilities, given: dict[str, Any]) -> dict[str, Any]:
    """The envelope values: the instrument's ranges, each narrowed by the user's (their
    intersection); ImagingError where they have nothing in common."""
    out = dict(given)
    for name, (lo, hi) in instrument_ranges(caps).items():
        user_lo, user_hi = (float(v) for v in given.get(name, (lo, hi)))
        low, high = max(user_lo, lo), min(user_hi, hi)
        if low > high:
            raise ImagingError(f"envelope {name} [{user_lo:g}, {user_hi:g}] has nothing in "
                               f"common with the instrument's range [{lo:g}, {hi:g}]")
        out[name] = [low, high]
    return out


def default_fov(caps: Capabilities, fov_range: tuple[float, float]) -> float:
    """BUILT_IN.fov where the range holds it and the stage is TILES_PER_AXIS tiles wide;
    else the FOV giving TILES_PER_AXIS tiles across the stage, within the range."""
    lo, hi = fov_range
    widths = [b - a for a, b in caps.stage_range] if caps.can_move_stage else []
    largest = min([hi, *(w / TILES_PER_AXIS for w in widths if w > 0)])
    return float(min(max(BUILT_IN.fov, lo), max(largest, lo)))


def nearest_pixels(options: tuple[int, ...]) -> int:
    """BUILT_IN.pixels where offered, else the offered size nearest to it (ratio)."""
    if not options:
        return BUILT_IN.pixels
    return int(min(options, key=lambda p: (abs(p / BUILT_IN.pixels - 1), p)))


def resolve(caps: Capabilities, imaging: dict[str, Any], envelope: dict[str, Any]
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The imaging settings (those left None filled from `caps`) and the envelope values
    (ranges narrowed to the instrument's). Given settings are not checked here: the
    instrument refuses what it cannot do, the guard what the envelope forbids."""
    env = narrowed_envelope(caps, envelope)
    defaults = {"fov": lambda: default_fov(caps, tuple(env["fov"])),
                "pixels": lambda: nearest_pixels(tuple(caps.pixel_options)),
                "dwell": lambda: float(min(max(BUILT_IN.dwell, env["dwell"][0]),
                                           env["dwell"][1])),
                "detector": lambda: caps.detectors[0] if caps.detectors else BUILT_IN.detector}
    chosen = {**imaging, **{k: defaults[k]() for k in IMAGING_KEYS if imaging.get(k) is None}}
    return chosen, env
