"""The session's safety envelope from the command line: a JSON file (`--envelope`), single
limits (`--limit fov=10e-9:1e-6`, `--limit max_moves=200`) and the free zone
(`--free-zone X0:X1,Y0:Y1`, metres), later ones overriding earlier ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from instruments.devices.safety import envelope_from_dict


def _pair(text: str, what: str) -> list[float]:
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return [float(low), float(high)]
    except ValueError as exc:
        raise ValueError(f"{what}: expected MIN:MAX, got {text!r}") from exc


def envelope_values(path: str | None, limits: list[str], free_zone: str | None
                    ) -> dict[str, Any]:
    """JSON-shaped envelope values, checked by building the envelope once."""
    values: dict[str, Any] = {}
    if path:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--envelope {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"--envelope {path}: expected a JSON object of limits")
        values.update(loaded)
    for item in limits:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--limit {item!r}: expected KEY=MIN:MAX or KEY=VALUE")
        values[key] = _pair(text, f"--limit {key}") if ":" in text else text
    if free_zone:
        x, sep, y = free_zone.partition(",")
        if not sep:
            raise ValueError(f"--free-zone {free_zone!r}: expected X0:X1,Y0:Y1")
        values["free_zone"] = [_pair(x, "--free-zone x"), _pair(y, "--free-zone y")]
    envelope_from_dict(values)
    return values
