"""The replay row: a frame's stored decision beside the one the replay made, both the
session file's one flat row (instruments/session_file/decision_row.py). Single-file replay
(its diff) and archive replay (its Parquet `frames` dataset) print and store this row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from instruments.session_file.decision_row import DecisionRow

REFUSED = "refused"      # the new route of a frame the replay could not classify


def change(row: Mapping[str, Any]) -> str | None:
    """What the replay changed in a replay row: "label" (the final label differs), "route"
    (the same label reached another way), or None (nothing, or the frame was refused). Read
    from the labels and routes, so results stored before this distinction count alike."""
    if row["new_route"] == REFUSED:
        return None
    if row["stored_label"] != row["new_label"]:
        return "label"
    return "route" if row["stored_route"] != row["new_route"] else None


def replay_row(stored: DecisionRow, new: DecisionRow | None) -> dict[str, Any]:
    """Stored vs new decision of one frame; top-k is the new classifier's. `new` None: the
    replay refused the frame (NaN/Inf pixels, or turned down by the instrument layer): route
    REFUSED, never changed. `changed`: the final label differs; `route_changed`: the same
    label reached by another route."""
    top_k = new.top_k if new else ()
    row = {"frame_id": stored.frame_id,
           "stored_label": stored.label, "stored_route": stored.route,
           "stored_confidence": stored.confidence,
           "new_label": new.label if new else None, "new_route": new.route if new else REFUSED,
           "new_confidence": new.confidence if new else None,
           "top_k_labels": [label for label, _ in top_k],
           "top_k_probs": [p for _, p in top_k],
           "truth": stored.truth}
    kind = change(row)
    return {**row, "changed": kind == "label", "route_changed": kind == "route"}


def changes_title(counts: Mapping[str, Any]) -> str:
    """`2 of 79 labels changed, 12 routes only` for a diff or an archive summary."""
    return (f"{counts['changed']} of {counts['frames']} labels changed, "
            f"{counts.get('route_changed') or 0} route-only changes")
