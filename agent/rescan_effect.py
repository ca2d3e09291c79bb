"""Whether a rescan changed anything, and which kinds of change are not worth trying again.

A rescan changes the imaging settings by kind: `dwell` (noise, drift), `focus` (blur: a
focus sweep) and `fov` (the last chance zooms in). It had an effect when a failure it was
meant to fix is gone, or a failing measure moved toward its threshold by more than
`MIN_STEP` of that threshold (measures of one place scatter by less than that from frame to
frame); otherwise the image did not change within noise. On an instrument where a kind of
change does nothing (Nion's simulator: dwell does not raise SNR, defocus does not blur), the
session stops trying that kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.quality import QualityThresholds

MIN_STEP = 0.2
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


def had_effect(before: dict[str, Any], after: dict[str, Any],
               thresholds: QualityThresholds) -> bool:
    """True when the rescan's frame (`after`) is measurably better than the frame it replaced
    (`before`) on what was wrong with it."""
    failures = set(before.get("failures") or [])
    if not failures:
        return True                      # a closer look at a good frame, not a repair
    if failures - set(after.get("failures") or []):
        return True
    steps = {"blur": ("sharpness", thresholds.min_sharpness, 1.0),
             "noise": ("snr", thresholds.min_snr, 1.0),
             "drift": ("drift_px", thresholds.max_drift_px, -1.0)}
    for failure in failures & steps.keys():
        key, threshold, sign = steps[failure]
        old, new = before.get(key), after.get(key)
        if old is not None and new is not None and sign * (new - old) > MIN_STEP * threshold:
            return True
    return False
