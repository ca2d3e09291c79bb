"""The acquisition graph: nodes wired by the `next` each one names, compiled with a
checkpointer (SQLite for sessions) so a killed session resumes where it stopped."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, StateGraph

from agent.checkpoint_serde import RedactingSerializer
from agent.nodes import (
    acquire,
    adjudicate,
    approve,
    assess_quality,
    check_instrument,
    classify,
    connect,
    finish,
    plan,
    record,
    rescan,
    route,
)
from agent.runtime import Runtime
from agent.state import AgentState

NODES = {"connect": connect, "check_instrument": check_instrument, "plan": plan,
         "acquire": acquire, "assess_quality": assess_quality, "classify": classify,
         "route": route, "rescan": rescan, "adjudicate": adjudicate, "approve": approve,
         "record": record, "finish": finish}

# where each node may go next (the value of state["next"] it sets)
EDGES = {
    "connect": ("check_instrument", "finish"),
    "check_instrument": ("plan", "finish"),
    "plan": ("acquire", "finish"),
    "acquire": ("assess_quality", "plan", "finish"),
    "assess_quality": ("classify",),
    "classify": ("route",),
    "route": ("record", "rescan", "adjudicate", "approve"),
    "rescan": ("acquire", "finish"),
    "adjudicate": ("record", "approve"),
    "approve": ("record", "rescan"),
    "record": ("plan",),
}


def _next(state: AgentState) -> str:
    return state["next"]


def build_graph(rt: Runtime) -> StateGraph:
    graph = StateGraph(AgentState)
    for name, module in NODES.items():
        graph.add_node(name, module.make(rt))
    graph.set_entry_point("connect")
    for name, targets in EDGES.items():
        graph.add_conditional_edges(name, _next, {t: t for t in targets})
    graph.add_edge("finish", END)
    return graph


def open_checkpointer(path: str | Path) -> SqliteSaver:
    """A SqliteSaver on `path` (created if missing), usable from the driver's thread.

    WAL journal with synchronous=NORMAL: a committed step survives the process being killed
    (SIGKILL), only an OS crash or power loss may lose the last steps; it spares an fsync per
    step. Everything it stores passes the redaction filter (agent/checkpoint_serde.py)."""
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return SqliteSaver(conn, serde=RedactingSerializer())


def compile_graph(rt: Runtime, checkpointer):
    return build_graph(rt).compile(checkpointer=checkpointer)
