"""The run configuration of a replay: a stored session's frames through the current model and
the session's own policy, unattended (no rescans: stored frames cannot be imaged again; every
unsure frame may be adjudicated). One builder for single-file and archive replay, so both
decide alike."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.config import RunConfig


def replay_run_config(source: str | Path, stored: dict[str, Any], frames: int,
                      model: str | None, state_dir: str | Path, out: str | Path,
                      session_id: str) -> RunConfig:
    """The RunConfig that replays `frames` stored frames of `source`; `stored` is the session's
    recorded run configuration (provenance `run_config`, {} where none was recorded)."""
    base = RunConfig(session_id=session_id, out=str(out), state_dir=str(state_dir),
                     frames=frames)
    config = replace(base, instrument=f"replay://{Path(source).resolve()}", model=model,
                     approve="none", max_rescans=0, adjudicator="offline",
                     bank=stored.get("bank"), demo_k=int(stored.get("demo_k", base.demo_k)),
                     confidence=float(stored.get("confidence", base.confidence)),
                     max_set_size=int(stored.get("max_set_size", base.max_set_size)),
                     reject_unknown=bool(stored.get("reject_unknown", base.reject_unknown)),
                     imaging=stored.get("imaging", base.imaging), budgets={})
    config.budgets = {**config.budgets, "adjudications": frames, "rescans": 0}
    return config
