"""Values as a microscopist reads them: numbers rounded, fractions as percentages, lengths
in µm or nm, times in µs or ms, booleans as yes/no, nested settings as rows of a table. The
report never shows a Python or JSON rendering of a value."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

# the SI unit of a setting, by its name as run configurations and provenance store it
UNITS = {"fov": "m", "dwell": "s", "defocus": "m", "beam_energy": "eV", "beam_current": "A",
         "stage_x": "m", "stage_y": "m", "stage_z": "m", "tilt": "°", "wall_s": "s",
         "vlm_timeout_s": "s", "max_drift_px": "px", "x": "m", "y": "m", "pixel_size": "m"}
PREFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"),
            (1e-9, "n"), (1e-12, "p"))
MISSING = "–"


def number(value: float, digits: int = 3) -> str:
    """A number with `digits` significant digits, integers as integers (0.8888888 -> 0.889)."""
    if not math.isfinite(value):
        return MISSING
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}".replace(",", " ")
    return f"{value:.{digits}g}"


def with_unit(value: float, unit: str) -> str:
    """A quantity with an SI prefix that keeps the number readable (2e-05 m -> 20 µm)."""
    if unit in ("°", "px", "") or value == 0 or not math.isfinite(value):
        return f"{number(value)} {unit}".strip()
    for factor, prefix in PREFIXES:
        if abs(value) >= factor * 0.9995:
            return f"{number(value / factor)} {prefix}{unit}"
    return f"{number(value / PREFIXES[-1][0])} {PREFIXES[-1][1]}{unit}"


def percent(fraction: float | None, digits: int = 1) -> str:
    return MISSING if fraction is None else f"{100 * fraction:.{digits}f} %"


def when(value: float | str | None) -> str:
    """A timestamp (epoch seconds or ISO text) as `2026-12-05 13:11:56 UTC`."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return value
    if isinstance(value, int | float) and math.isfinite(value):
        return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return MISSING


def duration(seconds: float | None) -> str:
    """Seconds as `47 s`, `3 min 20 s` or `2 h 05 min`."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    if seconds < 60:
        return f"{number(seconds, 2)} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def value(key: str, item: Any) -> str:
    """One setting's value as text, its unit chosen from its name."""
    if item is None:
        return MISSING
    if isinstance(item, bool):
        return "yes" if item else "no"
    if isinstance(item, int | float):
        unit = UNITS.get(key)
        return with_unit(float(item), unit) if unit else number(float(item))
    if isinstance(item, list | tuple):
        if len(item) == 2 and all(isinstance(v, int | float) for v in item) and key in UNITS:
            return f"{value(key, item[0])} to {value(key, item[1])}"
        return ", ".join(value(key, v) for v in item) or "none"
    return str(item)


def rows(settings: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """A nested mapping as (name, formatted value) rows, nested names joined with ` › `;
    an empty mapping is one row that says so."""
    if not settings:
        yield prefix or "settings", "none"
        return
    for key, item in settings.items():
        label = str(key).replace("_", " ")
        name = f"{prefix} › {label}" if prefix else label
        if isinstance(item, Mapping):
            yield from rows(item, name)
        elif isinstance(item, list) and item and all(isinstance(v, Mapping) for v in item):
            for i, entry in enumerate(item, 1):
                yield from rows(entry, f"{name} {i}")
        else:
            yield name, value(str(key), item)
