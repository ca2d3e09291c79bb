"""The survey plan of a session: the positions to image, fixed when the survey starts.

The plan lives in a file beside the session (`<out>.work/plan.json`, written once,
atomically), not in the checkpointed state: LangGraph serialises the whole state at every
graph step, and a plan of N positions there made each step cost O(N) (1.4 s per step at 10,000
positions) and the checkpoint database grow as N squared. The state keeps the plan's size and
sha256; a resumed session reads the file back and checks it against them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from instruments.utils.atomic_file import write_text


class PlanError(RuntimeError):
    """The survey plan file is missing or is not the plan the checkpoint names."""


def _canonical(positions: list[dict[str, Any]]) -> str:
    return json.dumps(positions, sort_keys=True, separators=(",", ":"))


class SurveyPlan:
    """One session's plan file, read at most once per process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._positions: list[dict[str, Any]] | None = None
        self._sha256 = ""

    def fix(self, positions: list[dict[str, Any]]) -> dict[str, Any]:
        """Store `positions` as the plan; the reference the state keeps: {"size", "sha256"}."""
        text = _canonical(positions)
        write_text(self.path, text)
        self._positions, self._sha256 = list(positions), hashlib.sha256(text.encode()).hexdigest()
        return {"size": len(positions), "sha256": self._sha256}

    def positions(self, reference: dict[str, Any]) -> list[dict[str, Any]]:
        """The plan the state's `reference` names (read from the file on first use)."""
        if self._positions is None or self._sha256 != reference["sha256"]:
            try:
                text = self.path.read_text(encoding="utf-8")
            except OSError as exc:
                raise PlanError(f"survey plan {self.path} cannot be read ({exc}); the "
                                "session cannot resume without it") from exc
            sha256 = hashlib.sha256(text.encode()).hexdigest()
            if sha256 != reference["sha256"]:
                raise PlanError(f"survey plan {self.path} is not the plan this session "
                                f"checkpointed (sha256 {sha256[:12]}, expected "
                                f"{reference['sha256'][:12]}); it was changed or replaced")
            self._positions, self._sha256 = json.loads(text), sha256
        return self._positions


def planned_positions(plan: SurveyPlan, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The survey's positions for this state ([] before the plan is fixed)."""
    return plan.positions(state["plan"]) if state.get("plan") else []
