"""What a TEM-protocol server of ours lets a client change on the instrument (stdlib only: the
bridges run it inside an instrument PC's own Python).

A control may be set only if it is on the allow-list (`--allow-control NAME[=MIN:MAX]`,
repeatable; given at least once, the list is exactly what was named) and, where the entry has
a range, only to a value inside it. Stage positions (`stage_position_m.x`/`.y`) are not on the
list: they are allowed within the server's stage limit, whichever call asks. Everything else
(high tension, beam current, convergence angle, apertures, lenses: whatever changes the dose)
is refused with `SafetyRefused` before it reaches the instrument.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping

from instruments.devices.errors import SafetyRefused

Range = tuple[float, float] | None
STAGE_CONTROLS = ("stage_position_m.x", "stage_position_m.y")
STIGMATOR_RANGE_M = (-1e-6, 1e-6)


def default_allowed(focus_range: tuple[float, float]) -> dict[str, Range]:
    """Focus (C10, within `focus_range`) and the two-fold stigmators (C12.x, C12.y, within
    +/- 1 um): nothing that changes the dose."""
    return {"C10": tuple(focus_range), "C12.x": STIGMATOR_RANGE_M,
            "C12.y": STIGMATOR_RANGE_M}


def parse_allow(specs: list[str]) -> dict[str, Range]:
    """`NAME` or `NAME=MIN:MAX` entries as {name: range or None}; ValueError on a bad one."""
    allowed: dict[str, Range] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not name:
            raise ValueError(f"--allow-control {spec!r}: expected NAME or NAME=MIN:MAX")
        if not sep:
            allowed[name] = None
            continue
        low, colon, high = text.partition(":")
        try:
            bounds = (float(low), float(high))
        except ValueError:
            bounds = (math.nan, math.nan)
        if not colon or not all(math.isfinite(b) for b in bounds) or bounds[0] > bounds[1]:
            raise ValueError(f"--allow-control {spec!r}: expected NAME=MIN:MAX with "
                             "finite MIN <= MAX")
        allowed[name] = bounds
    return allowed


class ControlPolicy:
    """The allow-list and stage limit one server enforces on every control a client sets."""

    def __init__(self, allowed: Mapping[str, Range], stage_limit_m: float) -> None:
        self.allowed = dict(allowed)
        self.stage_limit_m = float(stage_limit_m)

    def check(self, name: str, value: float) -> float:
        """`value` as a float if `name` may be set to it, else SafetyRefused (nothing set)."""
        value = float(value)
        if not math.isfinite(value):
            raise SafetyRefused(f"control {name}: value {value!r} is not finite")
        if name in STAGE_CONTROLS:
            self.check_stage(name.rsplit(".", 1)[1], value)
            return value
        if name not in self.allowed:
            raise SafetyRefused(f"control {name!r} is not on this server's allow-list "
                                f"({sorted(self.allowed)}; see --allow-control)")
        bounds = self.allowed[name]
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise SafetyRefused(f"control {name}={value:.6g} outside its allowed range "
                                f"[{bounds[0]:g}, {bounds[1]:g}]")
        return value

    def check_stage(self, axis: str, value: float) -> None:
        limit = self.stage_limit_m
        if not (math.isfinite(value) and -limit <= value <= limit):
            raise SafetyRefused(f"stage {axis}={value:.6g} m outside the instrument's range "
                                f"[{-limit:g}, {limit:g}] m")

    def as_dict(self) -> dict[str, object]:
        """For `get_capabilities`: what a client may change, and the stage limit."""
        return {"allowed": {k: None if v is None else list(v) for k, v in self.allowed.items()},
                "stage_limit_m": self.stage_limit_m}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--allow-control` (repeatable) on a server's command line."""
    parser.add_argument("--allow-control", action="append", default=None, metavar="NAME[=MIN:MAX]",
                        help="a control clients may set (repeatable; given once, it replaces "
                             "the default of focus C10 and stigmators C12.x/C12.y); stage "
                             "positions follow --stage-limit; every other control, high "
                             "tension and beam current included, is refused")


def policy_from_args(specs: list[str] | None, focus_range: tuple[float, float],
                     stage_limit_m: float) -> ControlPolicy:
    """The policy of `--allow-control` values (None: the default list)."""
    allowed = default_allowed(focus_range) if specs is None else parse_allow(specs)
    return ControlPolicy(allowed, stage_limit_m)
