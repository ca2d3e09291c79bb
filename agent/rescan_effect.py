"""Whether a rescan changed anything, and which kinds of change are not worth trying again.

A rescan changes the imaging settings by kind: `dwell` (noise, drift), `focus` (blur: a
focus sweep) and `fov` (the last chance zooms in). It had an effect when a failure it was
meant to fix is gone, or a failing measure moved the right way by more than `MIN_REL` of its
value and more than its estimator's scatter between frames of one place (`SCATTER`);
otherwise the image did not change within noise. On an instrument where a kind of
change does nothing (Nion's simulator: dwell does not raise SNR, defocus does not blur), the
session stops trying that kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MIN_REL = 0.2
SCATTER = {"snr": 0.1, "sharpness": 0.005, "drift_px": 1.0}
KINDS = ("dwell", "focus", "fov")
_NOTE_KINDS = {"dwell": "dwell", "focus_sweep": "focus", "fov": "fov"}


def kinds_tried(adaptation: dict[str, Any]) -> set[str]:
    """The kinds of change a rescan's adaptation note records."""
    return {kind for key, kind in _NOTE_KINDS.items() if key in adaptation}


def kinds_planned(failures: Iterable[str], last_chance: bool) -> set[str]:
    """The kinds of change a rescan for these failures would make (see agent/nodes/rescan)."""
    failures = set(failures)
    kinds = set()
    if failures & {"noise", "drift"}:
        kinds.add("dwell")
    if "blur" in failures:
        kinds.add("focus")
    if last_chance or not failures:
        kinds.add("fov")
    return kinds


def had_effect(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """True when the rescan's frame (`after`) is measurably better than the frame it replaced
    (`before`) on what was wrong with it."""
    failures = set(before.get("failures") or [])
    if not failures:
        return True                      # a closer look at a good frame, not a repair
    if failures - set(after.get("failures") or []):
        return True
    measures = {"blur": ("sharpness", 1.0), "noise": ("snr", 1.0), "drift": ("drift_px", -1.0)}
    for failure in failures & measures.keys():
        key, sign = measures[failure]
        old, new = before.get(key), after.get(key)
        if old is None or new is None:
            continue
        gain = sign * (new - old)
        if gain > SCATTER[key] and gain > MIN_REL * abs(old):
            return True
    return False
