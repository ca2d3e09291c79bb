"""Fault injection for twins, parsed from a `--faults` spec string.

Spec: comma-separated items, each `KIND[@CALL][:VALUE]`:
  nan@N        frame of acquisition N (1-based) has NaN pixels
  inf@N        frame N has +inf pixels
  shape@N      frame N comes back with the wrong shape
  stuck        the stage ignores moves (reports the old position)
  slow:S       every acquisition takes S seconds longer
  stall@N:S    server call N stalls S seconds before replying (transport)
  drop@N       server closes the connection on call N (transport)
Example: `nan@3,stall@5:30,drop@8,slow:0.05`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

_KINDS = {"nan", "inf", "shape", "stuck", "slow", "stall", "drop"}


class FaultSpecError(ValueError):
    """A `--faults` string that does not parse."""


@dataclass
class FaultSpec:
    nan_at: set[int] = field(default_factory=set)
    inf_at: set[int] = field(default_factory=set)
    shape_at: set[int] = field(default_factory=set)
    stuck_stage: bool = False
    slow_seconds: float = 0.0
    stall_at: dict[int, float] = field(default_factory=dict)
    drop_at: set[int] = field(default_factory=set)

    @classmethod
    def parse(cls, spec: str | None) -> FaultSpec:
        faults = cls()
        for raw in (spec or "").split(","):
            item = raw.strip()
            if not item:
                continue
            head, _, value = item.partition(":")
            kind, _, at = head.partition("@")
            if kind not in _KINDS:
                raise FaultSpecError(f"unknown fault kind {kind!r} in {spec!r}; "
                                     f"known: {sorted(_KINDS)}")
            try:
                call = int(at) if at else None
                number = float(value) if value else None
            except ValueError as exc:
                raise FaultSpecError(f"bad number in fault {item!r}") from exc
            if kind in {"nan", "inf", "shape", "stall", "drop"} and call is None:
                raise FaultSpecError(f"fault {item!r} needs @CALL")
            if kind == "nan":
                faults.nan_at.add(call)
            elif kind == "inf":
                faults.inf_at.add(call)
            elif kind == "shape":
                faults.shape_at.add(call)
            elif kind == "stuck":
                faults.stuck_stage = True
            elif kind == "slow":
                faults.slow_seconds = number or 0.0
            elif kind == "stall":
                faults.stall_at[call] = number if number is not None else 60.0
            elif kind == "drop":
                faults.drop_at.add(call)
        return faults


class TransportFaults:
    """Counts server calls (1-based, across all connections) and says which to drop or
    stall, following `FaultSpec.drop_at` / `FaultSpec.stall_at`."""

    def __init__(self, spec: FaultSpec | None) -> None:
        self.spec = spec or FaultSpec()
        self.calls = 0
        self._lock = threading.Lock()

    def next_call(self) -> tuple[str | None, float]:
        """Register one call; return ("drop", 0), ("stall", seconds) or (None, 0)."""
        with self._lock:
            self.calls += 1
            call = self.calls
        if call in self.spec.drop_at:
            return "drop", 0.0
        if call in self.spec.stall_at:
            return "stall", float(self.spec.stall_at[call])
        return None, 0.0
