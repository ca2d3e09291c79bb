"""The acquisition graph: nodes joined by conditional edges that are pure functions of the
state (`agent.policy`: after a decision they follow its ruling), compiled with a
checkpointer (SQLite for sessions) so a killed session resumes where it stopped."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from langgraph.graph import END, START, StateGraph

from agent import approval_request, policy
from agent.autofocus import after_autofocus, after_classify
from agent.checkpoint_serde import RedactingSerializer
from agent.checkpoint_store import BoundedSqliteSaver
from agent.context import SessionContext
from agent.nodes import (
    acquire,
    adjudicate,
    approve,
    assess_quality,
    autofocus,
    check_instrument,
    classify,
    connect,
    finish,
    plan,
    record,
    relook,
    rescan,
    zoom_out,
)
from agent.state import AgentState
from instruments.session_file import decision_record

NODES = {"connect": connect, "check_instrument": check_instrument, "plan": plan,
         "acquire": acquire, "assess_quality": assess_quality, "classify": classify,
         "rescan": rescan, "autofocus": autofocus, "adjudicate": adjudicate,
         "approve": approve, "record": record, "relook": relook, "zoom_out": zoom_out,
         "finish": finish}

# Checkpoints written before the record moved to instruments/session_file (session format 2)
# name its module by the old path: that name stays importable as the moved module.
LEGACY_RECORD_MODULE = "instruments.decision_record"
sys.modules.setdefault(LEGACY_RECORD_MODULE, decision_record)

# the only types besides plain values the checkpoint holds (read back, never others)
CHECKPOINT_TYPES = [(module, name)
                    for module in (decision_record.__name__, LEGACY_RECORD_MODULE)
                    for name in ("DecisionRecord", "Route", "Decision")] + [
    (approval_request.__name__, name)
    for name in ("LabelRequest", "MoveRequest", "HumanDecision")]


def build_graph(ctx: SessionContext) -> StateGraph:
    graph = StateGraph(AgentState)
    for name, module in NODES.items():
        graph.add_node(name, ctx.acquirer.snapshotting(module.make(ctx)))
    graph.add_edge(START, "connect")
    graph.add_conditional_edges("connect", policy.after_setup("check_instrument"),
                                ["check_instrument", "finish"])
    graph.add_conditional_edges("check_instrument", policy.after_setup("plan"),
                                ["plan", "finish"])
    graph.add_conditional_edges("plan", policy.after_plan, ["acquire", "finish"])
    graph.add_conditional_edges("acquire", policy.after_acquire,
                                ["assess_quality", "plan", "finish"])
    graph.add_edge("assess_quality", "classify")
    after_classified = (policy.follow_ruling if ctx.autofocus is None
                        else after_classify(ctx.autofocus))
    graph.add_conditional_edges("classify", after_classified,
                                ["record", "rescan", "adjudicate", "approve", "autofocus",
                                 "relook", "zoom_out"])
    graph.add_conditional_edges("autofocus", after_autofocus,
                                ["acquire", "record", "rescan", "adjudicate", "approve",
                                 "relook", "zoom_out", "finish"])
    graph.add_conditional_edges("relook", policy.after_look,
                                ["record", "rescan", "adjudicate", "approve", "zoom_out",
                                 "finish"])
    graph.add_conditional_edges("zoom_out", policy.after_look,
                                ["record", "rescan", "adjudicate", "approve", "finish"])
    graph.add_conditional_edges("rescan", policy.after_rescan, ["acquire", "finish"])
    graph.add_conditional_edges("adjudicate", policy.follow_ruling, ["record", "approve"])
    graph.add_conditional_edges("approve", policy.follow_ruling, ["record", "rescan"])
    graph.add_edge("record", "plan")
    graph.add_edge("finish", END)
    return graph


def open_checkpointer(path: str | Path) -> BoundedSqliteSaver:
    """A SqliteSaver on `path` (created if missing), usable from the driver's thread, that
    keeps the latest checkpoint only (agent/checkpoint_store.py).

    WAL journal with synchronous=NORMAL: a committed step survives the process being killed
    (SIGKILL), only an OS crash or power loss may lose the last steps; it spares an fsync per
    step. Everything it stores passes the redaction filter (agent/checkpoint_serde.py);
    deserialisation is limited to plain values and the decision record."""
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return BoundedSqliteSaver(
        conn, serde=RedactingSerializer(allowed_msgpack_modules=CHECKPOINT_TYPES))


def compile_graph(ctx: SessionContext, checkpointer):
    return build_graph(ctx).compile(checkpointer=checkpointer)
