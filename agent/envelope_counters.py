"""The safety envelope's counters as checkpointed state.

The guard below the agent (`GuardedMicroscope`) counts stage moves, frames scanned and the dose
each area has received; those counts live in its process. Every node's update carries a
snapshot of them (`envelope` in the state), so the checkpoint holds them after each step, and a
resumed session restores them into its new guard before its first step: a kill and `--resume`
renews no budget.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from agent.acquirer import Acquirer
from agent.state import AgentState
from instruments.devices.safety import GuardedMicroscope

Node = Callable[[AgentState], dict[str, Any]]


def snapshotting(node: Node, acquirer: Acquirer) -> Node:
    """`node`, its update extended with the guard's counters as they stand after it (read
    through the acquirer, the session's one way to the microscope)."""

    @functools.wraps(node)
    def run(state: AgentState) -> dict[str, Any]:
        update = node(state)
        return {**(update or {}), "envelope": acquirer.counters()}

    return run


def restore(microscope: GuardedMicroscope, values: dict[str, Any]) -> None:
    """Continue the guard's counters from a checkpointed state (a fresh one: nothing)."""
    microscope.restore(values.get("envelope"))
