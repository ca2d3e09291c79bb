"""Whether a rescan changed anything, and which kinds of change are not worth trying again.

A rescan changes the imaging settings by kind: `dwell` (noise, drift), `focus` (blur: a
focus sweep) and `fov` (the last chance zooms in). It had an effect when a failure it was
meant to fix is gone, or a failing measure moved the right way by more than `MIN_REL` of its
value and by more than its estimator's scatter between frames of one place; otherwise the
image did not change within noise. SNR is compared as the variance ratio it estimates
(`snr` squared), whose scatter is known from the frame's size (`snr_ratio_scatter`): the gain
must exceed `Z` standard errors of a difference of two estimates. On an instrument where a
kind of change does nothing (Nion's simulator: dwell does not raise SNR, defocus does not
blur), the session stops trying that kind.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from agent.quality import snr_ratio_scatter

MIN_REL = 0.2
Z = 3.0
SCATTER = {"sharpness": 0.005, "drift_px": 1.0}
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


def _snr_rose(old: float, new: float, shape: tuple[int, ...]) -> bool:
    """True when the SNR rose by more than MIN_REL and beyond the estimate's scatter."""
    ratio_gain = new * new - old * old
    beyond_noise = ratio_gain > Z * math.sqrt(2.0) * snr_ratio_scatter(shape) * (1 + old * old)
    return beyond_noise and new - old > MIN_REL * old


def had_effect(before: dict[str, Any], after: dict[str, Any],
               shape: tuple[int, ...]) -> bool:
    """True when the rescan's frame (`after`, of this `shape`) is measurably better than the
    frame it replaced (`before`) on what was wrong with it."""
    failures = set(before.get("failures") or [])
    if not failures:
        return True                      # a closer look at a good frame, not a repair
    if failures - set(after.get("failures") or []):
        return True
    old, new = before.get("snr"), after.get("snr")
    if "noise" in failures and old is not None and new is not None \
            and _snr_rose(old, new, shape):
        return True
    measures = {"blur": ("sharpness", 1.0), "drift": ("drift_px", -1.0)}
    for failure in failures & measures.keys():
        key, sign = measures[failure]
        old, new = before.get(key), after.get(key)
        if old is None or new is None:
            continue
        gain = sign * (new - old)
        if gain > SCATTER[key] and gain > MIN_REL * abs(old):
            return True
    return False
