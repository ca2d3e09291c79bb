"""Every human act a session file holds, as the report's audit trail: approvals of stage
moves, rescans a human asked for (reject and rescan), and the final approve, relabel or
skip of a frame; each with operator, time, note and what it changed."""

from __future__ import annotations

from dataclasses import dataclass

from instruments.devices.frame import ImagingSettings
from instruments.session_file.decision_record import Decision, DecisionRecord, RescanRecord
from workflows.report.format import MISSING, value, when

# the reason the rescan node stores for a rescan a human asked for (agent/nodes/rescan.py)
OPERATOR_ASKED = "operator asked"
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class Act:
    """One human act on one frame, as the report shows it."""

    frame: int
    act: str
    operator: str
    time: str
    note: str
    changed: str


def settings_change(before: ImagingSettings | None, after: ImagingSettings | None) -> str:
    """What a rescan changed in the settings, as `dwell 2 µs → 8 µs`."""
    if before is None or after is None:
        return "settings not recorded"
    old, new = before.as_dict(), after.as_dict()
    parts = [f"{key.replace('_', ' ')} {value(key, old[key])} → {value(key, new[key])}"
             for key in old if old[key] != new.get(key)]
    return "; ".join(parts) or "the same settings again"


def rescan_act(frame: int, attempt: RescanRecord) -> Act | None:
    """A rescan a human asked for (its act stored with the attempt; in files before record
    version 4, only the reason says so); None for one the agent chose."""
    changed = "rescanned: " + settings_change(attempt.settings, attempt.new_settings)
    asked = attempt.human
    if asked is not None:
        picked = f" ({asked.rescan_change.value} asked)" if asked.rescan_change else ""
        return Act(frame, "reject and rescan", asked.operator, when(asked.time), asked.note,
                   changed + picked)
    if attempt.reason != OPERATOR_ASKED:
        return None
    return Act(frame, "reject and rescan", NOT_RECORDED, MISSING, "", changed)


def _final_act(frame: int, record: DecisionRecord) -> Act | None:
    human = record.human
    if human is None:
        return None
    if human.decision == Decision.RELABEL or (human.decision == Decision.APPROVE
                                               and human.changed):
        changed = f"label {human.proposal or MISSING} → {human.label or MISSING}"
    elif human.decision == Decision.SKIP:
        changed = "frame kept without a label"
    else:
        changed = f"label {human.label or human.proposal or MISSING} confirmed"
    names = {Decision.APPROVE: "approve", Decision.RELABEL: "relabel",
             Decision.SKIP: "skip", Decision.RESCAN: "reject and rescan"}
    return Act(frame, names[human.decision], human.operator, when(human.time), human.note,
               changed)


def acts(frame: int, record: DecisionRecord) -> list[Act]:
    """The human acts on one frame, in the order they happened."""
    found: list[Act | None] = []
    approval = record.position.approval if record.position else None
    if approval is not None:
        moved = approval.decision == Decision.APPROVE
        found.append(Act(frame, "approve move" if moved else f"{approval.decision.value} move",
                         approval.operator, when(approval.time), approval.note,
                         "stage moved outside the free zone" if moved
                         else "position not visited"))
    found.extend(rescan_act(frame, attempt) for attempt in record.rescans)
    found.append(_final_act(frame, record))
    return [act for act in found if act is not None]
